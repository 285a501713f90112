"""Triton quantized linear kernels (the CUDA path of fasttrain.ops.int8_* / int4_weight_linear).

Same packed layouts as the C++ kernels (csrc/quant/quant.h), so one set of packed weights serves both
devices. Each program computes a (BM, BN) output tile (sizes by batch: _tiles), walking K in BK steps:
  int8 weight-only: dequantize the int8 tile to fp32 in registers, tl.dot in fp32, scale per channel at the end;
  int8 dynamic:     activations quantized per token (torch ops on the device, no host sync), int8 tl.dot
                    with int32 accumulation, both scales applied at the end;
  int4 weight-only: activations quantized per token to 16 bits (as on CPU), gather each value's nibble from the
                    blocked layout, subtract 8, multiply by its group's scale, tl.dot in fp32.
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
def _w8_kernel(x_ptr, w_ptr, s_ptr, r_ptr, b_ptr, y_ptr, M, N, Kp, HAS_BIAS: tl.constexpr, INT_DOT: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # Every product is exact, as in the C++ kernels: int8 x int8 -> int32; fp16/bf16 x times int8
    # weights (|q| <= 127, exact in both) on the tensor cores with fp32 accumulation; fp32 x in full
    # fp32 ("ieee"): Triton's default on NVIDIA is TF32, ~1e-3 relative error, which torch's own
    # fp32 F.linear does not have (rule: no worse than torch in the same dtype).
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    if INT_DOT:
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, Kp, BK):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * Kp + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < Kp), other=0)
        # VNNI-blocked int8 layout (Np / 16, Kp / 4, 16, 4): W[n, k] at ((n // 16) Kp / 4 + k // 4) 64 + (n % 16) 4 + k % 4
        w_off = ((rn[None, :] // 16) * (Kp // 4) + kk[:, None] // 4) * 64 + (rn[None, :] % 16) * 4 + kk[:, None] % 4
        w = tl.load(w_ptr + w_off, mask=(rn[None, :] < N) & (kk[:, None] < Kp), other=0)  # (BK, BN)
        if INT_DOT:
            acc += tl.dot(x, w)
        elif x.dtype == tl.float32:
            acc += tl.dot(x, w.to(tl.float32), input_precision="ieee")
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
    pm, pn = tl.program_id(0), tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, Kp, BK):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * Kp + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < Kp),
                    other=0.0).to(tl.float32)
        # blocked int4 (Np / 16, Kp / 8, 16, 4): W[n, k] in byte ((n // 16) Kp / 8 + k // 8) 64 + (n % 16) 4 + k % 4,
        # low nibble for k % 8 < 4, high nibble otherwise
        byte = ((rn[None, :] // 16) * (Kp // 8) + kk[:, None] // 8) * 64 + (rn[None, :] % 16) * 4 + kk[:, None] % 4
        shift = ((kk % 8) // 4) * 4
        b = tl.load(w_ptr + byte, mask=(rn[None, :] < N) & (kk[:, None] < Kp), other=8)
        q = ((b.to(tl.int32) >> shift[:, None]) & 15) - 8
        # blocked scales (Np / 16, G, 16): scale of W[n, group g] at ((n // 16) G + g) 16 + n % 16
        s_off = ((rn[None, :] // 16) * G + (kk // GROUP)[:, None]) * 16 + rn[None, :] % 16
        s = tl.load(s_ptr + s_off, mask=(rn[None, :] < N) & (kk[:, None] < Kp), other=0.0)
        # x holds 16-bit activation levels times their scale: "ieee", not TF32 (11 bits), keeps them.
        acc += tl.dot(x, q.to(tl.float32) * s.to(tl.float32), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def _pad(x: torch.Tensor, Kp: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, Kp - x.shape[1])).contiguous()


def _grid(M: int, N: int, t: dict):
    return (triton.cdiv(M, t["BM"]), triton.cdiv(N, t["BN"]))


def int8_weight_linear(x, w_q, w_scale, bias=None):
    """x: (M, K) fp32/fp16/bf16; w_q: (Np / 16, Kp / 4, 16, 4) int8 (VNNI-blocked, fasttrain.ops.quantize_int8_weight);
    w_scale: (N,) fp32; bias: (N,) fp32 or None -> (M, N) x.dtype."""
    M, N, Kp = x.shape[0], w_scale.shape[0], 4 * w_q.shape[1]
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    t = _tiles(M)
    _w8_kernel[_grid(M, N, t)](_pad(x, Kp), w_q, w_scale, w_scale, bias if bias is not None else w_scale, y, M, N, Kp,
                               HAS_BIAS=bias is not None, INT_DOT=False, **t)
    return y.to(x.dtype)


def int8_dynamic_linear(x, w_q, w_scale, bias=None):
    """Per-token int8 activations (same arithmetic as fasttrain.ops.reference.quantize_per_token_reference),
    int8 x int8 -> int32 dot. Shapes as int8_weight_linear; returns x.dtype."""
    M, N, Kp = x.shape[0], w_scale.shape[0], 4 * w_q.shape[1]
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    # torch.full_like(...) / amax, not 127.0 / amax: a Python number over a tensor is computed as
    # reciprocal(amax) * 127, one rounding more than the kernels' correctly rounded fp32 division.
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.round(xf * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    t = _tiles(M)
    _w8_kernel[_grid(M, N, t)](_pad(q, Kp), w_q, w_scale, amax / 127.0, bias if bias is not None else w_scale, y, M,
                               N, Kp, HAS_BIAS=bias is not None, INT_DOT=True, **t)
    return y.to(x.dtype)


def int4_weight_linear(x, w_packed, w_scale, group_size, bias=None, out_features=None):
    """x: (M, K); w_packed: (Np / 16, Kp / 8, 16, 4) uint8; w_scale: (Np / 16, Kp / group_size, 16) fp32/bf16;
    out_features: N (default: the bias length) -> (M, N) x.dtype."""
    N = out_features if out_features is not None else bias.shape[0]
    M, Kp = x.shape[0], 8 * w_packed.shape[1]
    y = torch.empty((M, N), dtype=torch.float32, device=x.device)
    # Activations quantized per token to 16 bits, as the C++ kernels (fasttrain.ops.reference.
    # quantize_per_token_int16_reference: qmax 32639), then used dequantized.
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    inv = torch.where(amax > 0, torch.full_like(amax, 32639.0) / amax, torch.zeros_like(amax))
    xr = torch.round(xf * inv[:, None]).clamp_(-32639, 32639) * (amax / 32639.0)[:, None]
    t = _tiles(M)
    _w4_kernel[_grid(M, N, t)](_pad(xr, Kp), w_packed, w_scale, bias if bias is not None else w_scale, y, M, N, Kp,
                               Kp // group_size, GROUP=group_size, HAS_BIAS=bias is not None, **t)
    return y.to(x.dtype)
