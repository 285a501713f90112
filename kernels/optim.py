"""Triton flat AdamW (the CUDA path of fasttrain.ops.adamw_step_ / fasttrain::adamw_).

One launch updates a whole flat buffer: each program takes BLOCK contiguous elements of param,
grad, exp_avg, exp_avg_sq (and max_exp_avg_sq / fp32 master) and does the same fp32 arithmetic as
the C++ kernels (csrc/optim/), in torch.optim.AdamW's order. Params fp32 / fp16 / bf16, states
fp32 / bf16, optional fp32 masters (the param is then written as the rounded master). Scalars are
runtime arguments, so a changing lr never recompiles. Stochastic rounding is CPU-only so far.
Under TRITON_INTERPRET=1 it runs on CPU tensors (fp32/fp16: the interpreter has no bf16).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["adamw_"]

BLOCK = 1024


@triton.jit
def _adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, mx_ptr, master_ptr, n, decay, omb1, beta2, omb2, ibc2, eps, neg_step,
                  grad_mul, MAXIMIZE: tl.constexpr, AMSGRAD: tl.constexpr, MASTER: tl.constexpr, LOW_W: tl.constexpr,
                  BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if MASTER:
        p = tl.load(master_ptr + offs, mask=mask, other=0.0)
    else:
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * grad_mul
    if MAXIMIZE:
        g = -g
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = p * decay
    d = g - m
    if LOW_W:  # torch.lerp's two branches (weight < 0.5 or not)
        m = m + omb1 * d
    else:
        m = g + (omb1 - 1.0) * d
    v = v * beta2 + (omb2 * g) * g
    vd = v
    if AMSGRAD:
        mx = tl.load(mx_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        vd = tl.where(v != v, v, tl.maximum(mx, v))
        tl.store(mx_ptr + offs, vd.to(mx_ptr.dtype.element_ty), mask=mask)
    denom = tl.sqrt(vd) * ibc2 + eps
    p = p + (neg_step * m) / denom
    if MASTER:
        tl.store(master_ptr + offs, p, mask=mask)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


def adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
           max_exp_avg_sq: torch.Tensor | None, master: torch.Tensor | None, *, lr: float, beta1: float, beta2: float,
           eps: float, weight_decay: float, step: float, maximize: bool, amsgrad: bool, grad_scale: float = 1.0) -> None:
    """One AdamW step in place on flat contiguous buffers (validated by fasttrain.ops.optim).

    param, grad: (N,) fp32/fp16/bf16, same dtype; exp_avg, exp_avg_sq, max_exp_avg_sq: (N,) fp32 or bf16;
    master: (N,) fp32 or None. step: the count after this update. Host scalars follow the C++ binding.
    """
    n = param.numel()
    if n == 0:
        return
    bc1 = 1.0 - math.pow(beta1, step)
    bc2_sqrt = math.sqrt(1.0 - math.pow(beta2, step))
    omb1 = 1.0 - beta1
    mx = max_exp_avg_sq if amsgrad else exp_avg_sq  # a valid pointer the kernel never touches when not AMSGRAD
    ms = master if master is not None else exp_avg
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](
        param, grad, exp_avg, exp_avg_sq, mx, ms, n, 1.0 - lr * weight_decay, omb1, beta2, 1.0 - beta2,
        1.0 / bc2_sqrt, eps, -(lr / bc1), grad_scale, MAXIMIZE=bool(maximize), AMSGRAD=bool(amsgrad),
        MASTER=master is not None, LOW_W=omb1 < 0.5, BLOCK=BLOCK,
    )
