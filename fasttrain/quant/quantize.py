"""fasttrain.quant.quantize: replace nn.Linear layers in place and report what happened."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from fasttrain.ops import quant as qops
from fasttrain.quant.modules import Int4WeightLinear, Int8DynamicLinear, Int8WeightLinear, QuantizedLinear

__all__ = ["SCHEMES", "QuantReport", "quantize"]

SCHEMES = ("int8-dynamic", "int8-weight", "int4-weight")


@dataclass
class QuantReport:
    """What `quantize` did. quantized: (name, in, out, bytes before, bytes after); skipped: (name, type, reason)."""

    scheme: str
    group_size: int | None
    quantized: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return sum(q[3] for q in self.quantized)

    @property
    def bytes_after(self) -> int:
        return sum(q[4] for q in self.quantized)

    def __str__(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        lines = [f"fasttrain.quant.quantize: scheme={self.scheme}{g}: {len(self.quantized)} layer(s) quantized, "
                 f"{len(self.skipped)} not quantized; quantized weights {self.bytes_before / 1e6:.2f} MB -> "
                 f"{self.bytes_after / 1e6:.2f} MB"]
        if self.quantized:
            w = max(5, *(len(q[0]) for q in self.quantized))
            lines.append(f"  {'layer':<{w}}  {'in':>6} {'out':>6} {'MB before':>10} {'MB after':>9}")
            for name, i, o, b0, b1 in self.quantized:
                lines.append(f"  {name:<{w}}  {i:>6} {o:>6} {b0 / 1e6:>10.3f} {b1 / 1e6:>9.3f}")
        if self.skipped:
            lines.append("  not quantized:")
            lines += [f"    {name} ({kind}): {reason}" for name, kind, reason in self.skipped]
        return "\n".join(lines)


def _skip_reason(name: str, module: nn.Module, scheme: str, skip: tuple[str, ...]) -> str | None:
    if any(name == p or fnmatch.fnmatchcase(name, p) for p in skip):
        return "matched `skip`"
    if module.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"weight dtype {module.weight.dtype} is not fp32/bf16/fp16"
    if module.weight.device.type not in ("cpu", "cuda"):
        return f"weight on {module.weight.device}; only CPU and CUDA are supported"
    if scheme == "int8-dynamic" and module.in_features > qops.MAX_K_INT8_DYNAMIC:
        return f"in_features > {qops.MAX_K_INT8_DYNAMIC} (int32 accumulator range); use int8-weight"
    return None


@torch.no_grad()
def quantize(
    model: nn.Module,
    scheme: str = "int8-dynamic",
    group_size: int = 128,
    skip: Iterable[str] = (),
    *,
    scale_dtype: torch.dtype = torch.float32,
    verbose: bool = False,
) -> QuantReport:
    """Replaces every plain `nn.Linear` in `model` (in place) by a fasttrain quantized module.

    scheme: "int8-dynamic" | "int8-weight" | "int4-weight". group_size (int4 only): inputs per scale, a
    multiple of 64; in_features that are not a multiple are zero padded. skip: module names or fnmatch
    patterns (e.g. "lm_head", "blocks.*.mlp.fc2") to leave in full precision. scale_dtype (int4 only):
    torch.float32 or torch.bfloat16. verbose: print the report. Returns the QuantReport; modules that
    hold parameters but are not plain nn.Linear (Conv, Embedding, LayerNorm, Linear subclasses, ...)
    are listed in it as not quantized. Calling it on an already quantized model is a no-op for those layers.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"fasttrain.quant.quantize: unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"fasttrain.quant.quantize: `model` must be an nn.Module, got {type(model).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    skip = tuple(skip)
    if scheme == "int4-weight":
        qops._check_group_size("fasttrain.quant.quantize", group_size)
    report = QuantReport(scheme, group_size if scheme == "int4-weight" else None)

    replacements = []
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear) or not name:
            continue
        if type(module) is nn.Linear:
            reason = _skip_reason(name, module, scheme, skip)
            if reason is None:
                replacements.append((name, module))
                continue
            report.skipped.append((name, type(module).__name__, reason))
        elif any(True for _ in module.parameters(recurse=False)):
            kind = type(module).__name__
            why = ("nn.Linear subclass (its owner may read .weight directly)" if isinstance(module, nn.Linear)
                   else "unsupported layer type")
            report.skipped.append((name, kind, why))
    if type(model) is nn.Linear:
        raise TypeError("fasttrain.quant.quantize: `model` is a bare nn.Linear and cannot be replaced in place; "
                        "wrap it (nn.Sequential(linear)) or use fasttrain.quant.Int8DynamicLinear.from_linear")

    for name, linear in replacements:
        if scheme == "int4-weight":
            q = Int4WeightLinear.from_linear(linear, group_size, scale_dtype)
        else:
            q = (Int8DynamicLinear if scheme == "int8-dynamic" else Int8WeightLinear).from_linear(linear)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, q)
        report.quantized.append((name, linear.in_features, linear.out_features,
                                 linear.weight.numel() * linear.weight.element_size(), q.weight_bytes()))
    if verbose:
        print(report)
    return report
