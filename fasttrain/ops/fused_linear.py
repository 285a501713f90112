"""AdamW on a Linear weight with the weight gradient computed inside the update pass.

`adamw_linear_step_(weight, exp_avg, exp_avg_sq, input, grad_output, ...)` is
`adamw_step_(weight, grad_output.T @ input, exp_avg, exp_avg_sq, ...)` without the gradient ever
existing as a tensor: the C++ pass computes it chunk by chunk (16 KiB, in L1) and updates the weight
and states from there. That saves the (out, in) gradient's allocation (for large layers, fresh pages:
the page faults alone cost more than the update), its write and its read back. Used by
fasttrain.optim.AdamW(step_in_backward=True).fuse_linear_backward(model).

The gradient costs `rows` FMAs per element, so the op takes at most 64 rows (tokens) of input; above
that a GEMM into a stored gradient is the faster way, and the optimizer does that instead.
"""

from __future__ import annotations

import torch

from fasttrain._ext import _C, num_threads
from fasttrain.ops import _eager, reference
from fasttrain.ops._registry import OpSpec, register
from fasttrain.ops.optim import _check_buffers, _check_hparams

__all__ = ["adamw_linear_step_", "MAX_ROWS"]

_OP = "fasttrain.ops.adamw_linear_step_"
MAX_ROWS = 64  # kLinearMaxRows in csrc/optim/optim_linear.h
_F32 = (torch.float32,)


def _linear_cpu(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                max_exp_avg_sq: torch.Tensor | None, input: torch.Tensor, grad_output: torch.Tensor, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, step: float, maximize: bool,
                amsgrad: bool, grad_scale: float) -> None:
    out_f, in_f = param.shape
    _C.optim.adamw_linear_f32_(
        param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), max_exp_avg_sq.data_ptr() if amsgrad else 0,
        input.data_ptr(), grad_output.data_ptr(), input.shape[0], out_f, in_f, lr, beta1, beta2, eps, weight_decay,
        step, maximize, amsgrad, grad_scale, num_threads(),
    )


_linear_op = torch.library.custom_op(
    "fasttrain::adamw_linear_", mutates_args=("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), device_types="cpu",
)(_linear_cpu)


@_linear_op.register_fake
def _(param, exp_avg, exp_avg_sq, max_exp_avg_sq, input, grad_output, lr, beta1, beta2, eps, weight_decay, step,
      maximize, amsgrad, grad_scale):
    return None


@torch.no_grad()
def adamw_linear_step_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    input: torch.Tensor,
    grad_output: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None = None,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    step: float,
    maximize: bool = False,
    amsgrad: bool = False,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step of a Linear weight, in place, from the layer's input and output gradient.

    param: (out_features, in_features) fp32, contiguous, CPU; exp_avg, exp_avg_sq (, max_exp_avg_sq iff
    amsgrad): fp32, param's shape. input: (rows, in_features) fp32; grad_output: (rows, out_features)
    fp32; 1 <= rows <= 64 (MAX_ROWS). The gradient is grad_output.T @ input, each element summed over
    rows in order with fused multiply-adds (the same on every ISA); then exactly `adamw_step_`'s
    arithmetic. step: the count after this update; grad_scale multiplies the gradient first.
    """
    lr, beta1, beta2, eps, weight_decay, step = (float(x) for x in (lr, beta1, beta2, eps, weight_decay, step))
    _check_hparams(_OP, lr, beta1, beta2, eps, weight_decay, step)
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError(f"{_OP}: amsgrad=True needs `max_exp_avg_sq` (a zero-initialised buffer like exp_avg_sq)")
    mx = max_exp_avg_sq if amsgrad else None
    _check_buffers(_OP, {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": mx},
                   dict.fromkeys(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), _F32))
    if param.dim() != 2:
        raise ValueError(f"{_OP}: `param` must be a 2-D (out_features, in_features) weight, got shape {tuple(param.shape)}")
    out_f, in_f = param.shape
    for name, t, cols in (("input", input, in_f), ("grad_output", grad_output, out_f)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{_OP}: `{name}` has dtype {t.dtype}; supported: float32")
        if t.dim() != 2 or t.shape[1] != cols:
            raise ValueError(f"{_OP}: `{name}` must be (rows, {cols}) for a weight of shape {tuple(param.shape)}, "
                             f"got {tuple(t.shape)}; flatten leading dimensions first")
        if not t.is_contiguous():
            raise ValueError(f"{_OP}: `{name}` is not contiguous (stride {t.stride()}); pass .contiguous()")
        if t.device != param.device:
            raise ValueError(f"{_OP}: `{name}` is on {t.device} but `param` is on {param.device}")
    if input.shape[0] != grad_output.shape[0]:
        raise ValueError(f"{_OP}: `input` has {input.shape[0]} rows but `grad_output` has {grad_output.shape[0]}")
    rows = input.shape[0]
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"{_OP}: {rows} rows of input; the fused gradient takes 1 to {MAX_ROWS} (above that, "
                         "compute the gradient with a matmul and call adamw_step_)")
    if param.device.type not in ("cpu", "meta"):
        raise ValueError(f"{_OP}: CPU tensors only, got {param.device}")
    _eager.call(_linear_op, _linear_cpu, (param, exp_avg, exp_avg_sq, mx),
                param, exp_avg, exp_avg_sq, mx, input, grad_output, lr, beta1, beta2, eps, weight_decay, step,
                bool(maximize), bool(amsgrad), float(grad_scale))


def _samples():
    g = torch.Generator().manual_seed(0)
    for rows, out_f, in_f, amsgrad, maximize in ((1, 1, 7, False, False), (7, 33, 129, True, False),
                                                  (64, 5, 4099, False, True)):
        p = torch.randn(out_f, in_f, generator=g)
        m, v = torch.randn(out_f, in_f, generator=g) * 0.1, torch.rand(out_f, in_f, generator=g) * 0.01
        mx = torch.rand(out_f, in_f, generator=g) * 0.01 if amsgrad else None
        x, dy = torch.randn(rows, in_f, generator=g), torch.randn(rows, out_f, generator=g) * 0.1
        yield (p, m, v, mx, x, dy, 1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0, maximize, amsgrad, 0.5), {}


register(OpSpec(qualname="fasttrain::adamw_linear_", public=adamw_linear_step_,
                reference=reference.adamw_linear_reference, test="tests/ops/test_fused_linear.py",
                benchmark="benchmarks/bench_adamw.py", samples=_samples))
