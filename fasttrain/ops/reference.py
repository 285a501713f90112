"""Pure-torch references for every fasttrain op.

Tests and benchmarks import these same functions (never a private copy), so the definition of
"correct" lives in one place. They favour clarity and accuracy over speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "total_norm_reference",
    "clip_grad_norm_reference",
    "sample_indices_reference",
    "augment_params_reference",
    "gather_normalize_reference",
    # quant
    "quantize_per_token_reference",
    "int8_dynamic_linear_reference",
    "int8_weight_linear_reference",
    "dequantize_int4_reference",
    "int4_scale_reference",
    "int4_weight_linear_reference",
]


@torch.no_grad()
def total_norm_reference(
    tensors: Sequence[torch.Tensor], norm_type: float = 2.0, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Global `norm_type`-norm of all elements of `tensors`, computed in `dtype` (fp32 by default).

    tensors: list of any-shape float tensors on one device. Returns a 0-dim `dtype` tensor.
    Pass dtype=torch.float64 for a ground truth to measure fp32 kernels against.
    """
    # Empty tensors contribute nothing (torch's inf-norm would raise on them: |x| >= 0 gives 0 as identity).
    tensors = [t for t in tensors if t.numel()]
    if len(tensors) == 0:
        return torch.zeros((), dtype=dtype)
    norms = [torch.linalg.vector_norm(t.to(dtype), norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def clip_grad_norm_reference(
    tensors: Sequence[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ semantics on a list of tensors, with the norm and the scaling
    computed in `dtype` (fp32 default) and each result rounded once to the tensor's own dtype.

    Mutates `tensors` in place; returns the total norm (0-dim `dtype`).
    """
    total = total_norm_reference(tensors, norm_type, dtype=dtype)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients is non-finite, so it cannot be clipped. "
            "To scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for t in tensors:
        t.copy_(t.to(dtype) * coef)
    return total


# ---------------------------------------------------------------------------------------------
# data (issue 4): the loader's sample order, augmentation draws and fused gather + normalize.
# Plain Python integers mirror csrc/data/data.h bit for bit (splitmix64 finalizer, 6-round Feistel).

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _hash3(a: int, b: int, c: int) -> int:
    return _mix64(_mix64(_mix64(a & _M64) ^ (b & _M64)) ^ (c & _M64))


def sample_indices_reference(
    n: int, seed: int, epoch: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, start: int = 0, count: int | None = None
) -> list[int]:
    """Sample indices of rank-local positions [start, start + count) of epoch `epoch`.

    Position j of rank r is global position j * world_size + r of a keyed bijection of [0, n)
    (Feistel network over the next even power of two, cycle-walking back into range).
    """
    if count is None:
        count = (n - rank + world_size - 1) // world_size - start
    bits = 2
    while bits < 64 and (1 << bits) < n:
        bits += 1
    bits += bits & 1
    half, mask = bits // 2, (1 << (bits // 2)) - 1
    key = _hash3(seed, epoch, 0x5EED)

    def enc(x: int) -> int:
        left, right = x >> half, x & mask
        for rnd in range(6):
            left, right = right, left ^ (_hash3(key, rnd, right) & mask)
        return (left << half) | right

    out = []
    for j in range(start, start + count):
        p = j * world_size + rank
        if shuffle:
            p = enc(p)
            while p >= n:
                p = enc(p)
        out.append(p)
    return out


def augment_params_reference(
    seed: int, epoch: int, index: int, salt: int, *, H: int, W: int, crop: tuple[int, int] | None, padding: int, flip: bool
) -> tuple[int, int, bool]:
    """(crop top, crop left, flipped) of sample `index`: drawn from hash3(hash3(seed, epoch, 0xA06), index, salt).
    Offsets are in padded coordinates (0 <= top <= H + 2 * padding - crop_h)."""
    r = _hash3(_hash3(seed, epoch, 0xA06), index, salt)
    oy = ox = 0
    if crop is not None:
        oy = (r & 0x1FFFFF) % (H + 2 * padding - crop[0] + 1)
        ox = ((r >> 21) & 0x1FFFFF) % (W + 2 * padding - crop[1] + 1)
    return oy, ox, bool(flip and (r >> 63) & 1)


@torch.no_grad()
def gather_normalize_reference(
    src: torch.Tensor,
    indices: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    crop: tuple[int, int] | None = None,
    padding: int = 0,
    flip: bool = False,
    channels_first: bool = False,
    seed: int = 0,
    epoch: int = 0,
    salt: int = 0,
) -> torch.Tensor:
    """src: (N, H, W, C) uint8; indices: (B,) int64; mean, std: (C,) fp32.

    Returns (B, h, w, C) (or (B, C, h, w) if channels_first) in `dtype`: rows `indices` of src,
    zero-padded by `padding`, cropped to `crop` = (h, w) at the per-sample offsets of
    augment_params_reference, mirrored left-right where drawn, then `(x.float() - mean) / std`.
    """
    N, H, W, C = src.shape
    out = []
    for i in indices.tolist():
        x = src[i]
        if crop is not None or flip:
            oy, ox, fl = augment_params_reference(seed, epoch, i, salt, H=H, W=W, crop=crop, padding=padding, flip=flip)
            if crop is not None:
                x = torch.nn.functional.pad(x.permute(2, 0, 1), (padding, padding, padding, padding)).permute(1, 2, 0)
                x = x[oy : oy + crop[0], ox : ox + crop[1]]
            if fl:
                x = x.flip(1)
        y = ((x.float() - mean) / std).to(dtype)
        out.append(y.permute(2, 0, 1) if channels_first else y)
    if not out:
        h, w = crop if crop is not None else (H, W)
        return torch.empty((0, C, h, w) if channels_first else (0, h, w, C), dtype=dtype)
    return torch.stack(out).contiguous()
# Fused optimizers (fasttrain.ops.optim, fasttrain.optim)

__all__ += ["adamw_reference", "adamw_multi_reference"]


@torch.no_grad()
def adamw_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
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
    master: torch.Tensor | None = None,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step in place, written as torch.optim.AdamW(foreach=False) writes it.

    param, exp_avg, exp_avg_sq (, max_exp_avg_sq): any shape, updated in place; grad: same shape.
    step: the step count after this update (1 on the first call). Run on fp64 copies for a ground truth.
    Mixed precision (the fused op's contract): when the buffers do not all share one dtype, or an
    fp32 `master` is given, the step runs on fp32 copies (the master instead of param if given) and
    each result is rounded to its buffer's dtype once (round-to-nearest-even). grad_scale multiplies
    the gradient first (unscaling / clipping folded into the step; grad itself is left unchanged).
    """
    if grad_scale != 1.0:
        grad = grad.float() * grad_scale if grad.dtype != torch.float64 else grad * grad_scale
    bufs = [t for t in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq) if t is not None]
    if master is not None or len({t.dtype for t in bufs}) > 1:
        work = [t.float() if t is not None else None for t in (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)]
        if master is not None:
            work[0] = master
        adamw_reference(*work, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                        maximize=maximize, amsgrad=amsgrad)
        for dst, src in zip((param, exp_avg, exp_avg_sq, max_exp_avg_sq), (work[0], *work[2:])):
            if dst is not None:
                dst.copy_(src)
        return
    if maximize:
        grad = -grad
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    if amsgrad:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    else:
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


@torch.no_grad()
def adamw_multi_reference(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, lr: float, beta1: float = 0.9,
                          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-2, step: float,
                          maximize: bool = False, amsgrad: bool = False, grad_scale: float = 1.0) -> None:
    """adamw_reference on each tensor of the lists in turn (fasttrain.ops.adamw_multi_step_'s contract)."""
    for i in range(len(params)):
        adamw_reference(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None,
                        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                        maximize=maximize, amsgrad=amsgrad, grad_scale=grad_scale)


__all__ += ["adamw_linear_reference"]


@torch.no_grad()
def adamw_linear_reference(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, input: torch.Tensor,
                           grad_output: torch.Tensor, max_exp_avg_sq: torch.Tensor | None = None, **kw) -> None:
    """`adamw_linear_step_`: the Linear weight gradient grad_output.T @ input (rows, in) x (rows, out),
    then `adamw_reference` with it. Pass fp64 copies for a ground truth."""
    adamw_reference(param, grad_output.t() @ input, exp_avg, exp_avg_sq, max_exp_avg_sq, **kw)


__all__ += ["sgd_reference", "lion_reference"]


@torch.no_grad()
def sgd_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first: bool = False,
) -> None:
    """One SGD step in place, as torch.optim.SGD(foreach=False) writes it.

    param, grad (, momentum_buffer): same shape and dtype. momentum_buffer is required iff
    momentum != 0; first=True means it holds no history yet (torch's None buffer): it becomes grad.
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if first:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)


@torch.no_grad()
def lion_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.99,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> None:
    """One Lion step in place (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
    Algorithm 2, with decoupled weight decay):

        p <- p * (1 - lr * wd) - lr * sign(beta1 * m + (1 - beta1) * g);   m <- beta2 * m + (1 - beta2) * g

    param, grad, exp_avg: same shape and dtype.
    """
    if maximize:
        grad = -grad
    param.mul_(1 - lr * weight_decay)
    update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
    param.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


# ---------------------------------------------------------------------------------------------
# Blockwise 8-bit AdamW states (fasttrain.ops.adamw_int8_step_, AdamW(state_dtype="int8")). The code
# maps are defined in csrc/optim/optim_int8.h; these functions are that definition in torch.

__all__ += ["adamw_int8_reference", "quantize_int8_states_reference", "dequantize_int8_states_reference"]

INT8_BLOCK = 256  # elements per scale
_QM2, _QV2 = 127.0 * 127.0, 255.0 * 255.0


def _sqrt_code(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """round(sqrt(x)) with ties up, i.e. #{k >= 1 : x >= (k - 1/2)^2}, clamped to [0, qmax]. In fp64 the
    sqrt of an fp32 x is far enough from every threshold that floor(sqrt(x) + 1/2) is exact."""
    return torch.floor(torch.sqrt(x.double()) + 0.5).clamp_(0, qmax).float()


def _sqrt_f32(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 sqrt (as the kernels' VSQRTPS / std::sqrt): torch's vectorized fp32 sqrt
    is not (it can be an ulp off); the fp64 sqrt rounded to fp32 is, since 53 >= 2 * 24 + 2 bits."""
    return torch.sqrt(x.double()).float()


def _by_block(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    nb = -(-n // INT8_BLOCK)
    out = torch.zeros(nb * INT8_BLOCK, dtype=x.dtype, device=x.device)
    out[:n] = x.reshape(-1)
    return out.view(nb, INT8_BLOCK)


@torch.no_grad()
def quantize_int8_states_reference(
    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 AdamW states -> (exp_avg codes int8, exp_avg_sq codes uint8, exp_avg_scale, exp_avg_sq_scale).

    exp_avg, exp_avg_sq: any shape, same numel N; codes come back in that shape, scales are
    (ceil(N / 256),) fp32. Per block of 256 elements (the last may be short):
      am = max|m|,          q_m = sign(m) * round(sqrt(|m| * (127^2 / am)))              in [-127, 127]
      s = sqrt(v), as = max s,  q_v = round(sqrt(s * (255^2 / as))), at least 1 where s > 0  in [0, 255]
    with round = ties up, exactly (`_sqrt_code`), every product in fp32. Both scales of a block are NaN
    if m + s is NaN anywhere in it; a block whose scale is not finite gets zero codes (it dequantizes
    to NaN).
    """
    n, shape = exp_avg.numel(), exp_avg.shape
    m = _by_block(exp_avg.float())
    s = _by_block(_sqrt_f32(exp_avg_sq.float()))
    nan = torch.isnan(m + s).any(1)
    am = torch.where(nan, float("nan"), m.abs().amax(1))
    as_ = torch.where(nan, float("nan"), s.amax(1))
    mok, vok = torch.isfinite(am) & (am > 0), torch.isfinite(as_) & (as_ > 0)
    cm = torch.where(mok, torch.full_like(am, _QM2) / am, 0.0)
    cv = torch.where(vok, torch.full_like(as_, _QV2) / as_, 0.0)
    qm = torch.where(mok[:, None], _sqrt_code(m.abs() * cm[:, None], 127), 0.0)
    qm = torch.where(m < 0, -qm, qm)
    qv = _sqrt_code(s * cv[:, None], 255)
    qv = torch.where(vok[:, None], torch.where((s > 0) & (qv == 0), 1.0, qv), 0.0)
    codes_m = qm.reshape(-1)[:n].to(torch.int8).reshape(shape)
    codes_v = qv.reshape(-1)[:n].to(torch.uint8).reshape(shape)
    return codes_m, codes_v, am, as_


@torch.no_grad()
def dequantize_int8_states_reference(
    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, exp_avg_scale: torch.Tensor, exp_avg_sq_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes + per-block scales -> fp32 (exp_avg, exp_avg_sq) in the codes' shape:
    m = (q * |q|) * (am / 127^2),  s = (q * q) * (as / 255^2),  v = s * s   (fp32, in this order)."""
    idx = torch.arange(exp_avg.numel(), device=exp_avg.device) // INT8_BLOCK
    # Divided elementwise by a full tensor: torch turns division by a scalar into a multiplication by
    # its reciprocal, which rounds differently from the kernels' (and IEEE) division.
    am, as_ = exp_avg_scale.float(), exp_avg_sq_scale.float()
    q = exp_avg.reshape(-1).float()
    m = (q * q.abs()) * (am / torch.full_like(am, _QM2))[idx]
    u = exp_avg_sq.reshape(-1).float()
    s = (u * u) * (as_ / torch.full_like(as_, _QV2))[idx]
    return m.reshape(exp_avg.shape), (s * s).reshape(exp_avg.shape)


@torch.no_grad()
def adamw_int8_reference(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    exp_avg_scale: torch.Tensor,
    exp_avg_sq_scale: torch.Tensor,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    step: float,
    maximize: bool = False,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step with blockwise 8-bit states, in place: dequantize (m, v), the fp32 step of
    `adamw_reference`, requantize with new per-block scales. The param update uses the new fp32 m and v
    (before requantizing), as bitsandbytes does.

    param, grad: fp32, any shape, same numel N; exp_avg (int8) and exp_avg_sq (uint8) codes of numel N;
    exp_avg_scale, exp_avg_sq_scale: (ceil(N / 256),) fp32. All but grad are updated in place.
    """
    m, v = dequantize_int8_states_reference(exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale)
    m, v = m.reshape(-1), v.reshape(-1)
    g = grad.reshape(-1).float() * grad_scale
    if maximize:
        g = -g
    p = param.view(-1)
    # adamw_reference's arithmetic, except that v's update is written as the C++ kernels order it,
    # v * beta2 + ((1 - beta2) * g) * g in separate ops (torch's addcmul_ may fuse its multiply-add
    # into an FMA): the new states then match the kernels bit for bit, and so do the codes.
    p.mul_(1 - lr * weight_decay)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_(g.mul(1 - beta2).mul_(g))
    denom = (_sqrt_f32(v) / (1 - beta2**step) ** 0.5).add_(eps)
    p.addcdiv_(m, denom, value=-(lr / (1 - beta1**step)))
    qm, qv, am, as_ = quantize_int8_states_reference(m, v)
    exp_avg.copy_(qm.view(exp_avg.shape))
    exp_avg_sq.copy_(qv.view(exp_avg_sq.shape))
    exp_avg_scale.copy_(am)
    exp_avg_sq_scale.copy_(as_)


# quant: quantized linear layers (fasttrain.ops.quant). Each reference dequantizes the packed weights
# and runs a plain matmul, in fp32 by default (pass dtype=torch.float64 for a ground truth).


def quantize_per_token_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic int8 quantization of each row of x: (M, K) float -> (q (M, K) int8, scale (M,) fp32).

    scale = max|x_row| / 127, q = round_half_even(x * (127 / max|x_row|)) in [-127, 127]; an all-zero row
    gets scale 0 and q = 0. The kernels compute exactly this (same fp32 operations).
    """
    x = x.float()
    amax = x.abs().amax(dim=-1)
    # torch.full_like(...) / amax, not 127.0 / amax: a Python number over a tensor is computed as
    # reciprocal(amax) * 127, one rounding more than the kernels' correctly rounded fp32 division.
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(x * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127.0


def unblock_int8_reference(w_q: torch.Tensor, N: int) -> torch.Tensor:
    """VNNI-blocked int8 weights (Np / 16, Kp / 4, 16, 4) -> row-major (N, Kp): element [b, k4, j, kk] is
    W[16 b + j, 4 k4 + kk] (csrc/quant/quant.h). A 2-D (N, Kp) tensor (layout version 1) passes through."""
    if w_q.dim() == 2:
        return w_q[:N]
    nb, k4, _, _ = w_q.shape
    return w_q.permute(0, 2, 1, 3).reshape(nb * 16, k4 * 4)[:N]


@torch.no_grad()
def int8_dynamic_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, w_sum: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (q_x @ w_q^T) * s_x s_w + bias with per-token int8 activations and an exact integer dot.

    x: (M, K) fp32/bf16; w_q: (Np / 16, Kp / 4, 16, 4) int8 (see unblock_int8_reference); w_scale: (N,) fp32;
    w_sum: (N,) int32 (unused: only the VNNI kernel needs it); bias: (N,) fp32 or None. Returns (M, N) in x's dtype.
    """
    del w_sum
    K = x.shape[-1]
    q, sx = quantize_per_token_reference(x)
    acc = q.double() @ unblock_int8_reference(w_q, w_scale.shape[0])[:, :K].double().T  # exact: every partial sum is an integer below 2^53
    y = acc.float() * (sx[:, None] * w_scale[None, :])
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


@torch.no_grad()
def int8_weight_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
    *, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y = x @ (w_q * w_scale)^T + bias, computed in `dtype`. x: (M, K); w_q: blocked int8 (see
    unblock_int8_reference); w_scale: (N,) fp32."""
    K = x.shape[-1]
    w = unblock_int8_reference(w_q, w_scale.shape[0])[:, :K].to(dtype) * w_scale.to(dtype)[:, None]
    y = x.to(dtype) @ w.T
    if bias is not None:
        y = y + bias.to(dtype)
    return y


INT16_QMAX = 32639  # per-token int16 activations of int4_weight_linear: 127 * 256 + 127 (see quantize_per_token_int16)


def quantize_per_token_int16_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token 16-bit quantization of the int4 kernels' activations: (M, K) -> (q (M, K) int32 in
    [-32639, 32639], scale (M,) fp32). scale = max|x_row| / 32639, q = round_half_even(x * (32639 / max|x_row|));
    an all-zero row gets scale 0. 32639 = 127 * 256 + 127, so q splits exactly into two signed bytes
    q = 256 h + l (h, l in [-127, 127] and [-128, 127]), the s8 operands of vpdpbusd."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    inv = torch.where(amax > 0, torch.full_like(amax, INT16_QMAX) / amax, torch.zeros_like(amax))  # (see above)
    q = torch.round(x * inv[:, None]).clamp_(-INT16_QMAX, INT16_QMAX).to(torch.int32)
    return q, amax / INT16_QMAX


def unpack_int4_reference(w_packed: torch.Tensor, N: int) -> torch.Tensor:
    """Blocked int4 (Np / 16, Kp / 8, 16, 4) uint8 -> (N, Kp) int16 values q in [-8, 7].

    Packing (csrc/quant/quant.h): byte [b, p, j, kk] holds u = q + 8 of W[16 b + j, 8 p + kk] in its low
    nibble and of W[16 b + j, 8 p + 4 + kk] in its high nibble.
    """
    nb, k8, _, _ = w_packed.shape
    b = w_packed.to(torch.int16)
    q = torch.stack([b & 15, b >> 4], dim=2)  # (nb, k8, 2, 16, 4): [.., 0, ..] is k 8p..8p+3, [.., 1, ..] 8p+4..
    return q.permute(0, 3, 1, 2, 4).reshape(nb * 16, k8 * 8)[:N] - 8


def int4_scale_reference(w_scale: torch.Tensor, N: int) -> torch.Tensor:
    """Blocked int4 scales (Np / 16, G, 16) -> (N, G): element [b, g, j] is the scale of W[16 b + j, group g]."""
    nb, G, _ = w_scale.shape
    return w_scale.transpose(1, 2).reshape(nb * 16, G)[:N]


def dequantize_int4_reference(w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int, N: int) -> torch.Tensor:
    """Blocked int4 (Np / 16, Kp / 8, 16, 4) uint8 + blocked (Np / 16, Kp / group_size, 16) scales -> (N, Kp) fp32."""
    q = unpack_int4_reference(w_packed, N)
    s = int4_scale_reference(w_scale, N).float().repeat_interleave(group_size, dim=1)
    return q.float() * s


@torch.no_grad()
def int4_weight_linear_reference(
    x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int,
    bias: torch.Tensor | None = None, out_features: int | None = None, *, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y[m, n] = s_x[m] sum_g s[n, g] (sum_{k in g} q_x[m, k] q_w[n, k]) + bias[n], the integer group sums
    exact, the rest in `dtype`. x: (M, K); w_packed: (Np / 16, Kp / 8, 16, 4) uint8; w_scale: (Np / 16, G, 16)
    fp32/bf16; N = out_features, or the bias length. The activations are quantized per token to 16 bits first
    (quantize_per_token_int16_reference), as the kernels do (see fasttrain.ops.quant)."""
    M, K = x.shape
    N = out_features if out_features is not None else bias.shape[0]
    G = w_scale.shape[1]
    qx, sx = quantize_per_token_int16_reference(x)
    qw = unpack_int4_reference(w_packed, N)[:, :K]
    # exact: |sum| < 2^31 and fp64 holds every partial sum
    t = torch.einsum("mgk,ngk->mng", torch.nn.functional.pad(qx, (0, G * group_size - K)).double().reshape(M, G, -1),
                     torch.nn.functional.pad(qw, (0, G * group_size - K)).double().reshape(N, G, -1))
    y = (t.to(dtype) * int4_scale_reference(w_scale, N).to(dtype)[None]).sum(dim=2) * sx.to(dtype)[:, None]
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = True,
                        scale: float | None = None) -> torch.Tensor:
    """softmax(scale q k^T [+ causal mask]) v in fp32 (fp64 stays fp64), cast back to q's dtype.
    q, k, v: (B, H, T, D). Differentiable (the backward reference is its autograd)."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = (t.to(work) for t in (q, k, v))
    s = (qf @ kf.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return (torch.softmax(s, dim=-1) @ vf).to(q.dtype)


def attention_backward_reference(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 is_causal: bool = True, scale: float | None = None):
    """(grad_q, grad_k, grad_v) of attention_reference, computed in fp32 and cast to the inputs' dtype."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        qf, kf, vf = (t.detach().to(work).requires_grad_() for t in (q, k, v))
        out = attention_reference(qf, kf, vf, is_causal, scale)
        grads = torch.autograd.grad(out, (qf, kf, vf), grad_out.to(work))
    return tuple(g.to(q.dtype) for g in grads)
