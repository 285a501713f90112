"""Triton flat AdamW (the CUDA path of fasttrain.ops.adamw_step_ / fasttrain::adamw_).

One launch updates a whole flat buffer: each program takes BLOCK contiguous elements of param,
grad, exp_avg, exp_avg_sq (and max_exp_avg_sq / fp32 master) and does the same fp32 arithmetic as
the C++ kernels (csrc/optim/), in torch.optim.AdamW's order. Params fp32 / fp16 / bf16, states
fp32 / bf16, optional fp32 masters (the param is then written as the rounded master). Scalars are
runtime arguments, so a changing lr never recompiles; adamw_device_scalars_ reads the step-dependent
ones (and a GradScaler skip flag) from a device tensor instead, so fasttrain.optim.AdamW's CUDA step
never syncs with the host. Stochastic rounding (bf16 params without masters) uses the C++ kernels'
noise and rounding rule.
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
def _sr_hash(seed, i):
    """csrc/optim/optim_elem.h sr_hash: element index -> 32 random bits ("lowbias32"), in int64 lanes
    masked to 32 bits after every step (the low 32 bits of a wrapped int64 product are exact)."""
    x = ((i & 0xFFFFFFFF) * 0x9E3779B9 + seed) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def _bf16_bits_to_f32(bits):
    """int16 lanes holding bf16 bit patterns -> fp32 (exact)."""
    return (bits.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_to_bf16_bits_sr(p, r):
    """fp32 -> bf16 bit pattern (int16 lanes), rounding up with probability equal to the dropped fraction:
    add the low 16 random bits r to the fp32 bits and truncate (csrc/optim/optim_elem.h f32_to_bf16_sr).
    Inf and NaN are not perturbed; a NaN stays a quiet NaN (csrc/common.h f32_to_bf16)."""
    u = p.to(tl.uint32, bitcast=True).to(tl.int64)
    up = (u + (r & 0xFFFF)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    special = (u & 0x7F800000) == 0x7F800000
    bits = tl.where(nan, (u >> 16) | 0x40, tl.where(special, u >> 16, up))
    return bits.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, mx_ptr, master_ptr, n, decay, omb1, beta2, omb2, ibc2, eps, neg_step,
                  grad_mul, sc_ptr, seed, MAXIMIZE: tl.constexpr, AMSGRAD: tl.constexpr, MASTER: tl.constexpr,
                  LOW_W: tl.constexpr, DEVICE_SCALARS: tl.constexpr, SR: tl.constexpr, BLOCK: tl.constexpr):
    # SR (stochastic rounding, bf16 params without masters): p_ptr and g_ptr hold the bf16 param and grad as
    # int16 bit patterns, so the same code runs in the interpreter (which has no bf16) and on the GPU.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if DEVICE_SCALARS:
        # The step-dependent scalars live on the device (see adamw_device_scalars_): reading them here
        # instead of on the host is what keeps a CUDA step free of device-to-host syncs. A set skip flag
        # (GradScaler found inf/NaN) masks every load and store off: the step costs no memory traffic.
        decay = tl.load(sc_ptr + 0)
        neg_step = tl.load(sc_ptr + 1)
        ibc2 = tl.load(sc_ptr + 2)
        grad_mul = tl.load(sc_ptr + 3)
        n = tl.where(tl.load(sc_ptr + 4) == 0.0, n, 0)
    mask = offs < n
    if MASTER:
        p = tl.load(master_ptr + offs, mask=mask, other=0.0)
    elif SR:
        p = _bf16_bits_to_f32(tl.load(p_ptr + offs, mask=mask, other=0))
    else:
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SR:
        g = _bf16_bits_to_f32(tl.load(g_ptr + offs, mask=mask, other=0)) * grad_mul
    else:
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
    if SR:
        tl.store(p_ptr + offs, _f32_to_bf16_bits_sr(p, _sr_hash(seed, offs)), mask=mask)
    else:
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


def adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
           max_exp_avg_sq: torch.Tensor | None, master: torch.Tensor | None, *, lr: float, beta1: float, beta2: float,
           eps: float, weight_decay: float, step: float, maximize: bool, amsgrad: bool, grad_scale: float = 1.0,
           stochastic_rounding: bool = False, seed: int = 0) -> None:
    """One AdamW step in place on flat contiguous buffers (validated by fasttrain.ops.optim).

    param, grad: (N,) fp32/fp16/bf16, same dtype; exp_avg, exp_avg_sq, max_exp_avg_sq: (N,) fp32 or bf16;
    master: (N,) fp32 or None. step: the count after this update. Host scalars follow the C++ binding.
    stochastic_rounding (bf16 param, no master): the C++ kernels' rounding and noise (same seed, same bits
    for the same fp32 value).
    """
    n = param.numel()
    if n == 0:
        return
    bc1 = 1.0 - math.pow(beta1, step)
    bc2_sqrt = math.sqrt(1.0 - math.pow(beta2, step))
    omb1 = 1.0 - beta1
    mx = max_exp_avg_sq if amsgrad else exp_avg_sq  # a valid pointer the kernel never touches when not AMSGRAD
    ms = master if master is not None else exp_avg
    sr = bool(stochastic_rounding)
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](
        *_sr_views(param, grad, sr), exp_avg, exp_avg_sq, mx, ms, n, 1.0 - lr * weight_decay, omb1, beta2, 1.0 - beta2,
        1.0 / bc2_sqrt, eps, -(lr / bc1), grad_scale, exp_avg, int(seed) & 0xFFFFFFFF, MAXIMIZE=bool(maximize),
        AMSGRAD=bool(amsgrad), MASTER=master is not None, LOW_W=omb1 < 0.5, DEVICE_SCALARS=False, SR=sr, BLOCK=BLOCK,
    )


def _sr_views(param: torch.Tensor, grad: torch.Tensor, sr: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic rounding: the kernel reads and writes the bf16 param and grad as int16 bit patterns."""
    if not sr:
        return param, grad
    if param.dtype != torch.bfloat16 or grad.dtype != torch.bfloat16:
        raise TypeError(f"stochastic rounding needs bf16 param and grad, got {param.dtype} / {grad.dtype}")
    return param.view(torch.int16), grad.view(torch.int16)


__all__ += ["adamw_device_scalars_"]


def adamw_device_scalars_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                          max_exp_avg_sq: torch.Tensor | None, master: torch.Tensor | None, scalars: torch.Tensor, *,
                          beta1: float, beta2: float, eps: float, maximize: bool, amsgrad: bool,
                          stochastic_rounding: bool = False, seed: int = 0) -> None:
    """adamw_ with the step-dependent scalars read from the device: one launch, no host sync.

    scalars: (5,) fp32 on param's device = [1 - lr * weight_decay, -lr / (1 - beta1^step),
    1 / sqrt(1 - beta2^step), grad multiplier (1 / loss scale * clip coefficient), skip (nonzero:
    leave every buffer untouched)], as built by fasttrain.optim.AdamW on the device. Buffers as in adamw_.
    """
    n = param.numel()
    if n == 0:
        return
    omb1 = 1.0 - beta1
    mx = max_exp_avg_sq if amsgrad else exp_avg_sq
    ms = master if master is not None else exp_avg
    sr = bool(stochastic_rounding)
    _adamw_kernel[(triton.cdiv(n, BLOCK),)](
        *_sr_views(param, grad, sr), exp_avg, exp_avg_sq, mx, ms, n, 1.0, omb1, beta2, 1.0 - beta2, 1.0, eps, 0.0, 1.0,
        scalars, int(seed) & 0xFFFFFFFF, MAXIMIZE=bool(maximize), AMSGRAD=bool(amsgrad), MASTER=master is not None,
        LOW_W=omb1 < 0.5, DEVICE_SCALARS=True, SR=sr, BLOCK=BLOCK,
    )


# ---------------------------------------------------------------------------------------------
# Blockwise 8-bit states (fasttrain::adamw_int8_): one program per 256-element block, so the block's
# new absmax is a tl.max inside the program and the update stays one pass. The code maps and the exact
# rounding rule are those of csrc/optim/optim_int8.h. sqrt and the scale divisions are the IEEE
# (round-to-nearest) forms, as on the CPU; on a GPU the compiler may still fuse a multiply-add into an
# FMA, so a code can land one level apart at a rounding boundary there (the interpreter, which the
# tests run, does no such fusion and matches the C++ codes bit for bit).

__all__ += ["adamw_int8_"]

INT8_BLOCK = 256


@triton.jit
def _sqrt_code(x):
    """round(sqrt(x)) with ties up, exactly: floor(sqrt_rn(x) + 1/2) is q or q + 1, and the exact fp32
    threshold (q - 1/2)^2 = q * (q - 1) + 1/4 decides."""
    q = tl.floor(tl.sqrt_rn(x) + 0.5)
    return tl.where((x < q * (q - 1.0) + 0.25) & (q > 0.0), q - 1.0, q)  # (q = 0: -1/2 squared is no threshold)


@triton.jit
def _adamw_int8_kernel(p_ptr, g_ptr, qm_ptr, qv_ptr, sm_ptr, sv_ptr, n, decay, omb1, beta2, omb2, ibc2, eps,
                       neg_step, grad_mul, sc_ptr, MAXIMIZE: tl.constexpr, LOW_W: tl.constexpr,
                       DEVICE_SCALARS: tl.constexpr, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if DEVICE_SCALARS:  # as in _adamw_kernel: the step scalars and the GradScaler skip flag from the device
        decay = tl.load(sc_ptr + 0)
        neg_step = tl.load(sc_ptr + 1)
        ibc2 = tl.load(sc_ptr + 2)
        grad_mul = tl.load(sc_ptr + 3)
        n = tl.where(tl.load(sc_ptr + 4) == 0.0, n, 0)  # a skipped step writes nothing, the scales included
    mask = offs < n
    live = blk.to(tl.int64) * BLOCK < n  # the block holds elements (false only in a skipped step)
    qm = tl.load(qm_ptr + offs, mask=mask, other=0).to(tl.float32)
    qv = tl.load(qv_ptr + offs, mask=mask, other=0).to(tl.float32)
    dm = tl.div_rn(tl.load(sm_ptr + blk), 16129.0)
    dv = tl.div_rn(tl.load(sv_ptr + blk), 65025.0)
    m = (qm * tl.abs(qm)) * dm
    s = (qv * qv) * dv
    v = s * s
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0) * grad_mul
    if MAXIMIZE:
        g = -g
    p = p * decay
    d = g - m
    if LOW_W:  # torch.lerp's two branches, each one FMA as in the C++ kernels
        m = tl.fma(omb1, d, m)
    else:
        m = tl.fma(omb1 - 1.0, d, g)
    v = v * beta2 + (omb2 * g) * g
    sn = tl.sqrt_rn(v)
    p = p + (neg_step * m) / (sn * ibc2 + eps)
    tl.store(p_ptr + offs, p, mask=mask)
    # new scales: absmax, NaN if any NaN (masked lanes are zeros)
    am = tl.max(tl.where(mask, tl.abs(m), 0.0), axis=0)
    sm = tl.max(tl.where(mask, sn, 0.0), axis=0)
    t = m + sn  # NaN iff m or sqrt(v) is: then both scales are NaN
    nan = tl.max(tl.where(t != t, 1, 0), axis=0) > 0
    am = tl.where(nan, float("nan"), am)
    sm = tl.where(nan, float("nan"), sm)
    tl.store(sm_ptr + blk, am, mask=live)
    tl.store(sv_ptr + blk, sm, mask=live)
    mok = (am > 0.0) & (am < float("inf"))
    vok = (sm > 0.0) & (sm < float("inf"))
    cm = tl.where(mok, tl.div_rn(16129.0, tl.where(mok, am, 1.0)), 0.0)
    cv = tl.where(vok, tl.div_rn(65025.0, tl.where(vok, sm, 1.0)), 0.0)
    q = tl.minimum(_sqrt_code(tl.abs(m) * cm), 127.0)
    q = tl.where(mok, tl.where(m < 0, -q, q), 0.0)
    u = tl.minimum(_sqrt_code(sn * cv), 255.0)
    u = tl.where(vok, tl.where((sn > 0) & (u == 0), 1.0, u), 0.0)
    tl.store(qm_ptr + offs, q.to(tl.int8), mask=mask)
    tl.store(qv_ptr + offs, u.to(tl.uint8), mask=mask)


def adamw_int8_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                exp_avg_scale: torch.Tensor, exp_avg_sq_scale: torch.Tensor, *, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float, step: float, maximize: bool, grad_scale: float = 1.0) -> None:
    """One AdamW step with blockwise 8-bit states in place (validated by fasttrain.ops.optim.adamw_int8_step_).

    param, grad: (N,) fp32; exp_avg: (N,) int8; exp_avg_sq: (N,) uint8; scales: (ceil(N / 256),) fp32.
    """
    n = param.numel()
    if n == 0:
        return
    bc1 = 1.0 - math.pow(beta1, step)
    bc2_sqrt = math.sqrt(1.0 - math.pow(beta2, step))
    omb1 = 1.0 - beta1
    _adamw_int8_kernel[(triton.cdiv(n, INT8_BLOCK),)](
        param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, n, 1.0 - lr * weight_decay, omb1, beta2,
        1.0 - beta2, 1.0 / bc2_sqrt, eps, -(lr / bc1), grad_scale, exp_avg_scale, MAXIMIZE=bool(maximize),
        LOW_W=omb1 < 0.5, DEVICE_SCALARS=False, BLOCK=INT8_BLOCK,
    )


__all__ += ["adamw_int8_device_scalars_"]


def adamw_int8_device_scalars_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                               exp_avg_scale: torch.Tensor, exp_avg_sq_scale: torch.Tensor, scalars: torch.Tensor, *,
                               beta1: float, beta2: float, eps: float, maximize: bool) -> None:
    """adamw_int8_ with the step-dependent scalars read from the device (the 5-element `scalars` of
    adamw_device_scalars_): one launch, no host sync; a set skip flag leaves every buffer untouched."""
    n = param.numel()
    if n == 0:
        return
    omb1 = 1.0 - beta1
    _adamw_int8_kernel[(triton.cdiv(n, INT8_BLOCK),)](
        param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, n, 1.0, omb1, beta2, 1.0 - beta2, 1.0, eps,
        0.0, 1.0, scalars, MAXIMIZE=bool(maximize), LOW_W=omb1 < 0.5, DEVICE_SCALARS=True, BLOCK=INT8_BLOCK,
    )


# ---------------------------------------------------------------------------------------------
# SGD and Lion (fasttrain.optim.SGD / Lion on CUDA): one launch over a flat fp32 buffer, the same
# operations and FMAs as the C++ kernels (csrc/optim/optim_elem.h: sgd_elem, lion_elem), which follow
# torch's CPU ops (Tensor.add(alpha) is one FMA there). Neither has a step-dependent scalar, so the
# host passes plain floats (no sync).

__all__ += ["sgd_", "lion_"]


@triton.jit
def _sgd_kernel(p_ptr, g_ptr, b_ptr, n, lr, momentum, omd, wd, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
                NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr, WD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    if MAXIMIZE:
        g = -g
    if WD:
        g = tl.fma(p, wd, g)
    if MOMENTUM:
        if FIRST:  # torch's first step: the buffer becomes the gradient
            buf = g
        else:
            buf = tl.fma(g, omd, tl.load(b_ptr + offs, mask=mask, other=0.0) * momentum)
        tl.store(b_ptr + offs, buf, mask=mask)
        if NESTEROV:
            g = tl.fma(buf, momentum, g)
        else:
            g = buf
    tl.store(p_ptr + offs, tl.fma(g, -lr, p), mask=mask)


@triton.jit
def _lion_kernel(p_ptr, g_ptr, m_ptr, n, lr, decay, beta1, omb1, beta2, omb2, MAXIMIZE: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    if MAXIMIZE:
        g = -g
    c = tl.fma(g, omb1, m * beta1)
    s = (c > 0).to(tl.float32) - (c < 0).to(tl.float32)  # as the C++ kernels (torch.sign on CPU): sign(NaN) = 0
    tl.store(p_ptr + offs, tl.fma(s, -lr, p * decay), mask=mask)
    tl.store(m_ptr + offs, tl.fma(g, omb2, m * beta2), mask=mask)


def sgd_(param: torch.Tensor, grad: torch.Tensor, momentum_buffer: torch.Tensor | None, *, lr: float, momentum: float,
         dampening: float, weight_decay: float, nesterov: bool, maximize: bool, first: bool) -> None:
    """One SGD step in place on flat contiguous fp32 buffers (param, grad, momentum_buffer: (N,); the
    buffer is required iff momentum != 0; first: it holds no history yet). Arguments as sgd_reference."""
    n = param.numel()
    if n == 0:
        return
    buf = momentum_buffer if momentum != 0 else param  # a valid pointer the kernel never touches
    _sgd_kernel[(triton.cdiv(n, BLOCK),)](
        param, grad, buf, n, lr, momentum, 1.0 - dampening, weight_decay, MOMENTUM=momentum != 0, FIRST=bool(first),
        NESTEROV=bool(nesterov), MAXIMIZE=bool(maximize), WD=weight_decay != 0, BLOCK=BLOCK,
    )


def lion_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, *, lr: float, beta1: float, beta2: float,
          weight_decay: float, maximize: bool) -> None:
    """One Lion step in place on flat contiguous fp32 buffers (N,). Arguments as lion_reference."""
    n = param.numel()
    if n == 0:
        return
    _lion_kernel[(triton.cdiv(n, BLOCK),)](
        param, grad, exp_avg, n, lr, 1.0 - lr * weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
        MAXIMIZE=bool(maximize), BLOCK=BLOCK,
    )
