"""fasttrain.optim.SGD and fasttrain.optim.Lion: one fused pass per param group (fp32 params).

SGD follows torch.optim.SGD (momentum, dampening, nesterov, weight_decay, maximize) operation by
operation; Lion follows fasttrain.ops.reference.lion_reference (Chen et al. 2023). Storage and the
swapped-grad contract are those of fasttrain/optim/_flat.py. CPU groups run the C++ kernels
(fasttrain.ops.sgd_step_ / lion_step_), CUDA groups one Triton launch over the flat buffers
(fasttrain.kernels.optim.sgd_ / lion_; no host sync: neither update has a step-dependent scalar).
Low-precision params are not supported by these two yet (TypeError); use AdamW for bf16/fp16 params.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fasttrain.ops.optim import lion_step_, sgd_step_
from fasttrain.optim._flat import _FlatGroup, _FlatOptimizer, _scalar

__all__ = ["SGD", "Lion"]


def _triton_op(name: str):
    """fasttrain.kernels.optim.<name> (imported on first use: Triton is an optional dependency)."""
    from fasttrain.kernels import optim as tk

    return getattr(tk, name)


def _fp32_only(name: str, group: dict[str, Any]) -> None:
    if group["params"] and group["params"][0].dtype != torch.float32:
        raise TypeError(f"fasttrain.optim.{name}: {group['params'][0].dtype} params are not supported yet (fp32 only); "
                        "use fasttrain.optim.AdamW(master_weights=True) for low-precision params")


class SGD(_FlatOptimizer):
    """SGD with momentum, same arguments and results as torch.optim.SGD(foreach=False).

    params: fp32 CPU or CUDA parameters that require grad (one device per group), or param-group dicts. `foreach` and `fused` are
    accepted and ignored (always fused); `differentiable=True` is not supported.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if _scalar(lr) < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        if differentiable:
            raise ValueError("fasttrain.optim.SGD: differentiable=True is not supported; use torch.optim.SGD")
        del foreach, fused
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=None, differentiable=False, fused=None)
        super().__init__(params, defaults)

    _cuda_ok = True
    _triton_in_update = True

    def _check_group(self, group: dict[str, Any]) -> None:
        _fp32_only("SGD", group)
        if _scalar(group["lr"]) < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_names(self, group: dict[str, Any]) -> list[str]:
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def _update(self, group: dict[str, Any], fg: _FlatGroup, idx: list[int] | None, steps: list[float]) -> None:
        kw = dict(lr=_scalar(group["lr"]), momentum=group["momentum"], dampening=group["dampening"],
                  weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"])
        if kw["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {kw['lr']}")
        if kw["momentum"] != 0:
            fg.state_buffer("momentum_buffer", torch.float32)
        step = _triton_op("sgd_") if fg.triton else sgd_step_
        if idx is None:
            step(fg.param_buf, fg.grad_buf, fg.state_bufs.get("momentum_buffer"), first=steps[0] == 1, **kw)
            return
        for i, s in zip(idx, steps):
            buf = fg.state_views["momentum_buffer"][i] if kw["momentum"] != 0 else None
            step(fg.param_views[i], fg.params[i].grad, buf, first=s == 1, **kw)


class Lion(_FlatOptimizer):
    """Lion (EvoLved Sign Momentum, Chen et al. 2023). Defaults follow the paper's recommendation:
    lr 1e-4 (3-10x smaller than AdamW's), betas (0.9, 0.99), decoupled weight decay.

    params: fp32 CPU or CUDA parameters that require grad (one device per group), or param-group dicts.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= _scalar(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))

    _cuda_ok = True
    _triton_in_update = True

    def _check_group(self, group: dict[str, Any]) -> None:
        _fp32_only("Lion", group)

    def _state_names(self, group: dict[str, Any]) -> list[str]:
        return ["exp_avg"]

    def _update(self, group: dict[str, Any], fg: _FlatGroup, idx: list[int] | None, steps: list[float]) -> None:
        b1, b2 = group["betas"]
        kw = dict(lr=_scalar(group["lr"]), beta1=b1, beta2=b2, weight_decay=group["weight_decay"],
                  maximize=group["maximize"])
        step = _triton_op("lion_") if fg.triton else lion_step_
        if idx is None:
            step(fg.param_buf, fg.grad_buf, fg.state_bufs["exp_avg"], **kw)
            return
        for i in idx:
            step(fg.param_views[i], fg.params[i].grad, fg.state_views["exp_avg"][i], **kw)
