"""Triton quantized linear kernels (the CUDA path of fasttrain.ops.int8_* / int4_weight_linear).

Same packed layouts as the C++ kernels (csrc/quant/quant.h), so one set of packed weights serves both
devices. Each program computes a (BM, BN) output tile (sizes by batch: _tiles), walking K in BK steps,
and loads each weight tile in the layout's own order (affine addresses, vectorized loads; the transpose to
(k, n) happens in registers):
  int8 weight-only: int8 weights times x in x's dtype (fp16/bf16 on the tensor cores, fp32 as tf32x3), fp32
                    accumulation, the per-channel scale applied at the end;
  int8 dynamic:     activations quantized per token by one fused launch (_rows_kernel), int8 x int8 dot with
                    int32 accumulation, both scales applied at the end;
  int4 weight-only: activations quantized per token to 16 bits (as on CPU, same fused launch), the low and
                    high nibbles of each byte dotted with their halves of x, the group scale applied per tile.
Inputs are validated by fasttrain.ops.quant; call these directly only with checked tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["int8_weight_linear", "int8_dynamic_linear", "int4_weight_linear"]


def _tiles(M: int) -> dict:
    """Tile shape by batch size (no autotuning: it would time every config on first use of every shape).
    Batch <= 16 streams the weights (a GEMV): narrow 32-column tiles give 128+ programs for 4096 outputs,
    deep 256-wide K steps and 4 stages keep enough loads in flight per SM. Larger batches reuse each
    weight tile across more rows. tl.dot needs >= 16 per dimension; K is masked, so BK need not divide Kp."""
    if M <= 16:
        return {"BM": 16, "BN": 32, "BK": 256, "num_warps": 4, "num_stages": 4}
    if M <= 64:
        return {"BM": 64, "BN": 64, "BK": 64, "num_warps": 4, "num_stages": 3}
    return {"BM": 128, "BN": 128, "BK": 64, "num_warps": 8, "num_stages": 3}


@triton.jit
def _w8_tile(w_ptr, pn, k0, Kp, NBLK, NB: tl.constexpr, BK: tl.constexpr):
    """The (BK, NB * 16) tile W[k0 : k0 + BK, pn * NB * 16 : ...] of the VNNI-blocked int8 layout
    (Np / 16, Kp / 4, 16, 4). Loaded in the layout's own order, so the addresses are affine in every
    index (64 contiguous bytes per (column block, k quad)) and the loads vectorize; the permute to
    (k, n) then happens in registers / shared memory. Out-of-range blocks and quads read 0."""
    nb = pn * NB + tl.arange(0, NB)
    quad = k0 // 4 + tl.arange(0, BK // 4)
    off = ((nb[:, None, None, None] * (Kp // 4) + quad[None, :, None, None]) * 64
           + tl.arange(0, 16)[None, None, :, None] * 4 + tl.arange(0, 4)[None, None, None, :])
    ok = (nb[:, None, None, None] < NBLK) & (quad[None, :, None, None] < Kp // 4)
    w = tl.load(w_ptr + off, mask=ok, other=0)  # (NB, BK / 4, 16, 4): [block, quad, n % 16, k % 4]
    return tl.reshape(tl.permute(w, (1, 3, 0, 2)), (BK, NB * 16))  # [quad, k % 4, block, n % 16]


@triton.jit
def _w8_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, M, N, Kp, XK, HAS_BIAS: tl.constexpr, INT_DOT: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # Products are exact, as in the C++ kernels: int8 x int8 -> int32 on the tensor cores; fp16/bf16 x
    # times int8 weights (|q| <= 127 is exact in both) with fp32 accumulation; fp32 x as "tf32x3" (x split
    # into two TF32 parts, 22 bits; the weights are exact in TF32). Triton's default for fp32 on NVIDIA is
    # plain TF32 (~1e-3 relative error), which torch's fp32 F.linear does not have.
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    nblk = (N + 15) // 16
    if INT_DOT:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, Kp, BK):
        kk = k0 + rk
        # x rows hold XK values (the unpadded input, or the padded operand of the dynamic path): columns past
        # them read 0, and the weights there are zero padding anyway, so x is never copied to pad it
        x = tl.load(x_ptr + rm[:, None] * XK + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < XK), other=0)
        w = _w8_tile(w_ptr, pn, k0, Kp, nblk, BN // 16, BK)
        if INT_DOT:
            acc += tl.dot(x, w)
        elif x.dtype == tl.float32:
            acc += tl.dot(x, w.to(tl.float32), input_precision="tf32x3")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if INT_DOT:  # dynamic activations: per-token scale times per-channel scale, as the C++ kernels
        scale = tl.load(r_ptr + rm, mask=rm < M, other=0.0)[:, None] * scale
    out = acc.to(tl.float32) * scale
    if HAS_BIAS:
        out += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _w4_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, Kp, G, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # Blocked int4 (Np / 16, Kp / 8, 16, 4): byte [block, octet, j, l] holds W[16 block + j, 8 octet + l] in its
    # low nibble and W[..., 8 octet + 4 + l] in its high nibble. One affine, vectorized load of BK / 2 bytes per
    # column; the low nibbles are the k's with k % 8 < 4 ("a"), the high ones the rest ("b"), each multiplied
    # by the matching half of x. BK divides GROUP (the wrapper sees to it), so a tile has one scale per
    # column: the integer weights (exact in TF32) are dotted first and scaled once per tile, like the C++
    # kernels' exact integer group sums. x holds 16-bit activation levels: "tf32x3" keeps them (TF32: 11 bits).
    pm, pn = tl.program_id(0), tl.program_id(1)
    NB: tl.constexpr = BN // 16
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    nb = pn * NB + tl.arange(0, NB)
    nblk = (N + 15) // 16
    # x columns of the low / high nibbles: k = k0 + 8 o + l and k0 + 8 o + 4 + l, as (BM, BK / 8, 4) -> (BM, BK / 2)
    o = tl.arange(0, BK // 8)[None, :, None]
    lane = tl.arange(0, 4)[None, None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, Kp, BK):
        octet = k0 // 8 + tl.arange(0, BK // 8)
        off = ((nb[:, None, None, None] * (Kp // 8) + octet[None, :, None, None]) * 64
               + tl.arange(0, 16)[None, None, :, None] * 4 + tl.arange(0, 4)[None, None, None, :])
        ok = (nb[:, None, None, None] < nblk) & (octet[None, :, None, None] < Kp // 8)
        byte = tl.load(w_ptr + off, mask=ok, other=0x88).to(tl.int32)  # (NB, BK / 8, 16, 4); 8 is q = 0
        qa = tl.reshape(tl.permute((byte & 15) - 8, (1, 3, 0, 2)), (BK // 2, BN)).to(tl.float32)
        qb = tl.reshape(tl.permute((byte >> 4) - 8, (1, 3, 0, 2)), (BK // 2, BN)).to(tl.float32)
        ka = k0 + o * 8 + lane
        xmask = (rm[:, None, None] < M) & (ka < Kp)
        xa = tl.reshape(tl.load(x_ptr + rm[:, None, None] * Kp + ka, mask=xmask, other=0.0), (BM, BK // 2))
        xb = tl.reshape(tl.load(x_ptr + rm[:, None, None] * Kp + ka + 4, mask=xmask, other=0.0), (BM, BK // 2))
        part = tl.dot(xa, qa, input_precision="tf32x3") + tl.dot(xb, qb, input_precision="tf32x3")
        # blocked scales (Np / 16, G, 16): group g of column block b at (b G + g) 16
        s_off = (nb[:, None] * G + k0 // GROUP) * 16 + tl.arange(0, 16)[None, :]
        s = tl.reshape(tl.load(s_ptr + s_off, mask=nb[:, None] < nblk, other=0.0), (BN,)).to(tl.float32)
        acc += part * s[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _rows_kernel(x_ptr, out_ptr, r_ptr, K, Kp, QMAX: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr):
    """Per-token quantization of one row of x (M, K) into the kernels' zero-padded (M, Kp) operand, in one
    launch instead of a dozen torch ops: amax = max|x|, inv = QMAX / amax (0 for an all-zero row),
    level = round_half_even(x * inv) clamped to +-QMAX; r[row] = amax / QMAX. LEVELS: write the levels as
    int8 (the int8-dynamic operand), else level * r in fp32 (the int4 path's 16-bit activations). The
    divisions are correctly rounded (tl.div_rn; "/" is approximate on NVIDIA) and the kernel is compiled
    without FMA contraction, so every value equals fasttrain.ops.reference.quantize_per_token*_reference."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * K + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    amax_row = tl.max(amax, axis=0)
    q_max = tl.full((), QMAX, tl.float32)
    inv = tl.where(amax_row > 0, tl.div_rn(q_max, tl.where(amax_row > 0, amax_row, 1.0)), 0.0)
    r = tl.div_rn(amax_row, q_max)
    tl.store(r_ptr + row, r)
    for k0 in range(0, Kp, BLOCK):
        k = k0 + offs
        x = tl.load(x_ptr + row * K + k, mask=k < K, other=0.0).to(tl.float32)
        v = x * inv
        level = (v + 12582912.0) - 12582912.0  # 1.5 * 2^23: rounds |v| < 2^22 half to even in fp32
        level = tl.minimum(tl.maximum(level, -QMAX), QMAX)
        if LEVELS:
            tl.store(out_ptr + row * Kp + k, level.to(tl.int8), mask=k < Kp)
        else:
            tl.store(out_ptr + row * Kp + k, level * r, mask=k < Kp)


def _quantize_rows(x: torch.Tensor, Kp: int, qmax: int, levels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (operand (M, Kp) int8 levels or fp32 level * scale, scale (M,) fp32), one launch."""
    M, K = x.shape
    out = torch.empty((M, Kp), dtype=torch.int8 if levels else torch.float32, device=x.device)
    r = torch.empty(M, dtype=torch.float32, device=x.device)
    if M:
        _rows_kernel[(M,)](x, out, r, K, Kp, QMAX=qmax, LEVELS=levels, BLOCK=1024, enable_fp_fusion=False)
    return out, r


def _grid(M: int, N: int, t: dict):
    return (triton.cdiv(M, t["BM"]), triton.cdiv(N, t["BN"]))


def int8_weight_linear(x, w_q, w_scale, bias=None):
    """x: (M, K) fp32/fp16/bf16, contiguous; w_q: (Np / 16, Kp / 4, 16, 4) int8 (VNNI-blocked, fasttrain.ops.quantize_int8_weight);
    w_scale: (N,) fp32; bias: (N,) fp32 or None -> (M, N) x.dtype."""
    M, N, Kp = x.shape[0], w_scale.shape[0], 4 * w_q.shape[1]
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    t = _tiles(M)
    _w8_kernel[_grid(M, N, t)](x, w_q, w_scale, w_scale, bias if bias is not None else w_scale, y, M, N, Kp, x.shape[1],
                               HAS_BIAS=bias is not None, INT_DOT=False, **t)
    return y.to(x.dtype)


def int8_dynamic_linear(x, w_q, w_scale, bias=None):
    """Per-token int8 activations (same arithmetic as fasttrain.ops.reference.quantize_per_token_reference),
    int8 x int8 -> int32 dot. Shapes as int8_weight_linear; returns x.dtype."""
    M, N, Kp = x.shape[0], w_scale.shape[0], 4 * w_q.shape[1]
    q, r = _quantize_rows(x, Kp, 127, levels=True)
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    t = _tiles(M)
    _w8_kernel[_grid(M, N, t)](q, w_q, w_scale, r, bias if bias is not None else w_scale, y, M, N, Kp, Kp,
                               HAS_BIAS=bias is not None, INT_DOT=True, **t)
    return y.to(x.dtype)


def int4_weight_linear(x, w_packed, w_scale, group_size, bias=None, out_features=None):
    """x: (M, K); w_packed: (Np / 16, Kp / 8, 16, 4) uint8; w_scale: (Np / 16, Kp / group_size, 16) fp32/bf16;
    out_features: N (default: the bias length) -> (M, N) x.dtype."""
    N = out_features if out_features is not None else bias.shape[0]
    M, Kp = x.shape[0], 8 * w_packed.shape[1]
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    # Activations quantized per token to 16 bits, as the C++ kernels (fasttrain.ops.reference.
    # quantize_per_token_int16_reference: qmax 32639), then used dequantized.
    xr, _ = _quantize_rows(x, Kp, 32639, levels=False)
    t = _tiles(M)
    while group_size % t["BK"]:  # a tile must not straddle two groups (group_size is a multiple of 64)
        t["BK"] //= 2
    _w4_kernel[_grid(M, N, t)](xr, w_packed, w_scale, bias if bias is not None else w_scale, y, M, N, Kp,
                               Kp // group_size, GROUP=group_size, HAS_BIAS=bias is not None, **t)
    return y.to(x.dtype)
