"""Precision policy: which dtype each part of training uses, in one explicit object.

    params          dtype the model's parameters are stored in
    compute         dtype of matmuls/activations (autocast when it differs from params)
    master_weights  fp32 copies of low-precision params kept inside the optimizer
    optimizer_state dtype of the optimizer's moments (fp32, bf16 or "int8")
    loss_scaling    dynamic loss scaling (GradScaler) for fp16 compute
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch

__all__ = ["Precision", "PRESETS", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    params: torch.dtype = torch.float32
    compute: torch.dtype = torch.float32
    master_weights: bool = False
    optimizer_state: torch.dtype | str = torch.float32
    loss_scaling: bool = False

    @property
    def autocast(self) -> bool:
        return self.compute != self.params

    def table(self) -> str:
        """The effective dtype table printed at the start of fit()."""
        def name(d):
            return str(d).removeprefix("torch.")

        rows = [
            ("parameters", name(self.params)),
            ("compute", name(self.compute) + (" (autocast)" if self.autocast else "")),
            ("master weights", "fp32 (in optimizer)" if self.master_weights else "none"),
            ("optimizer state", name(self.optimizer_state)),
            ("loss scaling", "dynamic (GradScaler)" if self.loss_scaling else "off"),
        ]
        return "\n".join(f"  {k:<16} {v}" for k, v in rows)

    def check(self) -> None:
        """Raises on impossible combinations, warns on ones that do nothing or are fragile."""
        low = (torch.bfloat16, torch.float16)
        if self.params not in (torch.float32, *low) or self.compute not in (torch.float32, *low):
            raise ValueError(f"Precision: params/compute must be float32, bfloat16 or float16, got {self}")
        if self.params in low and self.compute == torch.float32:
            raise ValueError("Precision: compute=float32 with low-precision params is not supported; use compute=params")
        if self.master_weights and self.params == torch.float32:
            warnings.warn("Precision: master_weights=True with fp32 params does nothing", UserWarning, stacklevel=3)
        if self.params in low and not self.master_weights:
            warnings.warn(
                f"Precision: {self.params} params without master weights lose small updates; "
                "set master_weights=True (or use the optimizer's stochastic rounding)",
                UserWarning,
                stacklevel=3,
            )
        if self.compute == torch.float16 and not self.loss_scaling:
            warnings.warn("Precision: fp16 compute without loss scaling underflows gradients", UserWarning, stacklevel=3)
        if self.loss_scaling and self.compute != torch.float16:
            warnings.warn("Precision: loss scaling is only needed for fp16 compute", UserWarning, stacklevel=3)


PRESETS: dict[str, Precision] = {
    "fp32": Precision(),
    "bf16-mixed": Precision(compute=torch.bfloat16),
    "bf16-true": Precision(params=torch.bfloat16, compute=torch.bfloat16, master_weights=True),
    "fp16-mixed": Precision(compute=torch.float16, loss_scaling=True),
}


def resolve_precision(precision: str | Precision) -> Precision:
    if isinstance(precision, Precision):
        precision.check()
        return precision
    if precision not in PRESETS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRESETS)} or a fasttrain.Precision")
    p = replace(PRESETS[precision])
    p.check()
    return p
