"""Quantized linear layers: int8 x int8 (dynamic per-token activations), int8 weight-only and int4
groupwise weight-only, plus the packers that produce their weight layouts.

    x: (..., K) fp32 or bf16  ->  y: (..., N) in x's dtype

Weights are quantized symmetrically: int8 per output channel (scale = max|w_row| / 127), int4 per
group of `group_size` inputs (scale = max|w_group| / 7, values in [-8, 7]). Packed layouts
(csrc/quant/quant.h) pad K with zeros: int8 to Kp = round_up(K, 64), int4 to Kp = round_up(K,
group_size); `group_size` must be a multiple of 64. int8 weights are VNNI-blocked at quantize time:
w_q (Np / 16, Kp / 4, 16, 4), Np = round_up(N, 16), element [b, k4, j, kk] = W[16 b + j, 4 k4 + kk], so one
64-byte load is the vpdpbusd operand for 4 inputs x 16 outputs (INT8_LAYOUT_VERSION 2; version 1 was the
row-major (N, Kp) tensor, converted by repack_int8_weight). Every CPU path and the Triton kernels read this
one layout. So a K that is not a multiple of the group size
is padded, never rejected; the activations keep their width K.

int4 weights are packed in the same blocked order: w_packed (Np / 16, Kp / 8, 16, 4) uint8, byte [b, p, j, kk]
holding u = q + 8 of W[16 b + j, 8 p + kk] (low nibble) and W[16 b + j, 8 p + 4 + kk] (high nibble), so one
64-byte load + mask / shift gives two vpdpbusd operands. The int4 scales are blocked the same way,
w_scale (Np / 16, G, 16), element [b, g, j] the scale of W[16 b + j, group g] (padding channels: 1), so the
batch-1 kernel reads each block's scales as one sequential stream beside its weights. INT4_LAYOUT_VERSION 3;
version 2 stored w_scale group-major (G, N) (one cache line per group, N apart: the scale stream held int4 at
batch 1 to ~1.5x int8), version 1 also had (N, Kp / 2) weights with 32-value nibble blocks and (N, G) scales;
repack_int4_weight / repack_int4_scale convert both. N cannot be read from padded shapes, so the int4 op
takes `out_features` (or the bias length).

int4_weight_linear quantizes the activations per token to 16 bits (q = round_half_even(x * 32639 / max|x_row|),
fasttrain.ops.reference.quantize_per_token_int16_reference) on every path: the group sums q_x . q_w are then
exact integers, which the VNNI kernel computes as two vpdpbusd per operand (q_x = 256 h + l, both signed
bytes). The rounding error (2^-16 of the row's max) is ~70 dB below int4's own and below the bf16 rounding
of activations (2^-9 of each value) the kernels used before.

CPU tensors run the C++ kernels (fasttrain._C.quant: AVX-512 VNNI / AVX2 / scalar, GEMV for batch 1 and
register-tiled GEMM for larger batches, OpenMP over output channels); CUDA tensors run the Triton
kernels in fasttrain.kernels.quant.
"""

from __future__ import annotations

import torch

from fasttrain._ext import _C, num_threads
from fasttrain.ops import reference
from fasttrain.ops._registry import OpSpec, register

__all__ = [
    "quantize_int8_weight",
    "quantize_int4_weight",
    "repack_int8_weight",
    "repack_int4_weight",
    "repack_int4_scale",
    "int8_dynamic_linear",
    "int8_weight_linear",
    "int4_weight_linear",
]

ALIGN_K = 64  # K padding of every packed layout (one 512-bit vector of int8)
BLOCK_N = 16  # output columns per VNNI block of the int8 layout (one 512-bit vector of int32 sums)
INT8_LAYOUT_VERSION = 2  # 1: row-major (N, Kp); 2: VNNI-blocked (Np / 16, Kp / 4, 16, 4)
INT4_LAYOUT_VERSION = 3  # 1: (N, Kp / 2) nibbles, (N, G) scales; 2: blocked weights, (G, N) scales; 3: blocked scales
MAX_GROUP_SIZE = 4096  # int4: exact int32 group sums of 16-bit activations x nibbles (csrc/quant/quant_avx512vnni.cpp)
MAX_K_INT8_DYNAMIC = 65536  # 255 * 127 * Kp must fit the int32 accumulators of the VNNI kernel
_X_DTYPES = (torch.float32, torch.bfloat16)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _check_group_size(op: str, group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{op}: group_size must be an int (a multiple of 64, e.g. 128), got {group_size!r}")
    if group_size < ALIGN_K or group_size % ALIGN_K or group_size > MAX_GROUP_SIZE:
        raise ValueError(f"{op}: group_size must be a positive multiple of 64 (64, 128, 256, ...) up to "
                         f"{MAX_GROUP_SIZE}, got {group_size}")
    return group_size


def _check(op: str, name: str, t, *, dtypes, ndim: int, device=None, shape=None) -> None:
    """One tensor argument: type, layout, dtype, rank, contiguity, device and (optionally) exact shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{op}: `{name}` has layout {t.layout}; pass a dense tensor (.to_dense())")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: `{name}` has dtype {t.dtype}; expected {allowed}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: `{name}` must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: `{name}` has shape {tuple(t.shape)}, expected {tuple(shape)} (pack weights with "
                         "fasttrain.ops.quantize_int8_weight / quantize_int4_weight)")
    if not t.is_contiguous():
        raise ValueError(f"{op}: `{name}` is not contiguous (stride {t.stride()}); pass `{name}.contiguous()`")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: `{name}` is on {t.device} but x is on {device}; move all arguments to one device")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{op}: `{name}` is on {t.device}; only CPU and CUDA tensors are supported")


def _check_x(op: str, x) -> None:
    _check(op, "x", x, dtypes=_X_DTYPES, ndim=2)
    if x.shape[1] < 1:
        raise ValueError(f"{op}: x must have at least one input feature, got shape {tuple(x.shape)}")


def _check_bias(op: str, bias, N: int, device) -> None:
    if bias is not None:
        _check(op, "bias", bias, dtypes=(torch.float32,), ndim=1, device=device, shape=(N,))


def _check_int8(op: str, x, w_q, w_scale, bias, w_sum=None) -> None:
    _check_x(op, x)
    K = x.shape[1]
    _check(op, "w_scale", w_scale, dtypes=(torch.float32,), ndim=1, device=x.device)
    N = w_scale.shape[0]
    if isinstance(w_q, torch.Tensor) and w_q.dim() == 2:
        raise ValueError(f"{op}: w_q has the row-major (N, Kp) int8 layout (layout version 1); "
                         "the kernels take the VNNI-blocked (Np / 16, Kp / 4, 16, 4) layout: convert it with "
                         "fasttrain.ops.quant.repack_int8_weight(w_q) or re-quantize with quantize_int8_weight")
    Kp = _round_up(K, ALIGN_K)
    _check(op, "w_q", w_q, dtypes=(torch.int8,), ndim=4, device=x.device)
    if 4 * w_q.shape[1] != Kp:
        raise ValueError(f"{op}: w_q holds {4 * w_q.shape[1]} padded inputs but x has K={K} features; w_q must hold "
                         f"round_up(K, 64) = {Kp} (pack it with fasttrain.ops.quantize_int8_weight)")
    _check(op, "w_q", w_q, dtypes=(torch.int8,), ndim=4, shape=(-(-N // BLOCK_N), Kp // 4, BLOCK_N, 4))
    if w_sum is not None:
        _check(op, "w_sum", w_sum, dtypes=(torch.int32,), ndim=1, device=x.device, shape=(N,))
        if K > MAX_K_INT8_DYNAMIC:
            raise ValueError(f"{op}: K={K} exceeds {MAX_K_INT8_DYNAMIC} (int32 accumulator range); use int8_weight_linear")
    _check_bias(op, bias, N, x.device)


def _int4_out_features(op: str, w_scale, bias, out_features) -> int:
    """N of an int4 call: `out_features`, else the bias length (the blocked scales only hold round_up(N, 16))."""
    if out_features is None:
        if isinstance(bias, torch.Tensor) and bias.dim() == 1:
            return bias.shape[0]
        raise ValueError(f"{op}: pass out_features=N (the number of output channels): the blocked int4 w_scale "
                         "(Np / 16, G, 16) only holds N rounded up to 16")
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"{op}: out_features must be a positive int (the number of output channels), got {out_features!r}")
    return out_features


def _check_int4(op: str, x, w_packed, w_scale, group_size, bias, N: int) -> None:
    _check_x(op, x)
    _check_group_size(op, group_size)
    K = x.shape[1]
    if isinstance(w_packed, torch.Tensor) and w_packed.dim() == 2:
        raise ValueError(f"{op}: w_packed has the (N, Kp / 2) int4 layout (layout version 1); the kernels take the "
                         "blocked (Np / 16, Kp / 8, 16, 4) layout: convert it with "
                         "fasttrain.ops.quant.repack_int4_weight(w_packed) or re-quantize with quantize_int4_weight")
    if isinstance(w_scale, torch.Tensor) and w_scale.dim() == 2:
        raise ValueError(f"{op}: w_scale has the 2-D int4 scale layout (layout version 1 or 2); the kernels take the "
                         "blocked (Np / 16, G, 16) layout: convert it with fasttrain.ops.quant.repack_int4_scale("
                         "w_scale, out_features, version=2) or re-quantize with quantize_int4_weight")
    _check(op, "w_scale", w_scale, dtypes=(torch.float32, torch.bfloat16), ndim=3, device=x.device)
    _check(op, "w_packed", w_packed, dtypes=(torch.uint8,), ndim=4, device=x.device)
    Kp = _round_up(K, group_size)
    if 8 * w_packed.shape[1] != Kp:
        raise ValueError(f"{op}: w_packed holds {8 * w_packed.shape[1]} padded inputs but K={K}, group_size="
                         f"{group_size} needs round_up(K, group_size) = {Kp} (pack it with fasttrain.ops.quantize_int4_weight)")
    nb = -(-N // BLOCK_N)
    if w_packed.shape[0] != nb:
        raise ValueError(f"{op}: w_packed holds {BLOCK_N * w_packed.shape[0]} padded output channels but out_features="
                         f"{N} needs round_up(N, 16) = {BLOCK_N * nb} (pass the layer's out_features)")
    _check(op, "w_packed", w_packed, dtypes=(torch.uint8,), ndim=4, shape=(nb, Kp // 8, BLOCK_N, 4))
    _check(op, "w_scale", w_scale, dtypes=(torch.float32, torch.bfloat16), ndim=3,
           shape=(nb, Kp // group_size, BLOCK_N))
    _check_bias(op, bias, N, x.device)


def _out(x: torch.Tensor, N: int) -> torch.Tensor:
    return torch.empty((x.shape[0], N), dtype=torch.float32, device=x.device)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


# ---------------------------------------------------------------------------------------------
# torch.library ops: 2-D x, packed weights as produced by the packers below.


# CPU kernel calls on checked arguments: the bodies of the CPU ops, and the eager fast path of the
# fasttrain.quant modules (which check their buffers once, not on every call; see QuantizedLinear.forward).


def _int8_dynamic_cpu(x, w_q, w_scale, w_sum, bias):
    (M, K), N, Kp = x.shape, w_scale.shape[0], 4 * w_q.shape[1]
    y = _out(x, N)
    _C.quant.int8_dynamic_linear(x.data_ptr(), x.dtype == torch.bfloat16, M, K, w_q.data_ptr(), w_scale.data_ptr(),
                                 w_sum.data_ptr(), _ptr(bias), y.data_ptr(), N, Kp, num_threads())
    return y.to(x.dtype)


def _int8_weight_cpu(x, w_q, w_scale, bias):
    (M, K), N, Kp = x.shape, w_scale.shape[0], 4 * w_q.shape[1]
    y = _out(x, N)
    _C.quant.int8_weight_linear(x.data_ptr(), x.dtype == torch.bfloat16, M, K, w_q.data_ptr(), w_scale.data_ptr(),
                                _ptr(bias), y.data_ptr(), N, Kp, num_threads())
    return y.to(x.dtype)


def _int4_weight_cpu(x, w_packed, w_scale, group_size, bias, N):
    M, K = x.shape
    y = _out(x, N)
    _C.quant.int4_weight_linear(x.data_ptr(), x.dtype == torch.bfloat16, M, K, w_packed.data_ptr(),
                                w_scale.data_ptr(), w_scale.dtype == torch.bfloat16, group_size, _ptr(bias),
                                y.data_ptr(), N, 8 * w_packed.shape[1], num_threads())
    return y.to(x.dtype)


@torch.library.custom_op("fasttrain::int8_dynamic_linear", mutates_args=(), device_types="cpu")
def _int8_dynamic_op(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, w_sum: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    _check_int8("fasttrain.ops.int8_dynamic_linear", x, w_q, w_scale, bias, w_sum)
    return _int8_dynamic_cpu(x, w_q, w_scale, w_sum, bias)


@_int8_dynamic_op.register_fake
def _(x, w_q, w_scale, w_sum, bias):
    _check_int8("fasttrain.ops.int8_dynamic_linear", x, w_q, w_scale, bias, w_sum)
    return x.new_empty((x.shape[0], w_scale.shape[0]))


@_int8_dynamic_op.register_kernel("cuda")
def _(x, w_q, w_scale, w_sum, bias):
    _check_int8("fasttrain.ops.int8_dynamic_linear", x, w_q, w_scale, bias, w_sum)
    from fasttrain.kernels import quant as tq

    return tq.int8_dynamic_linear(x, w_q, w_scale, bias)


@torch.library.custom_op("fasttrain::int8_weight_linear", mutates_args=(), device_types="cpu")
def _int8_weight_op(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    _check_int8("fasttrain.ops.int8_weight_linear", x, w_q, w_scale, bias)
    return _int8_weight_cpu(x, w_q, w_scale, bias)


@_int8_weight_op.register_fake
def _(x, w_q, w_scale, bias):
    _check_int8("fasttrain.ops.int8_weight_linear", x, w_q, w_scale, bias)
    return x.new_empty((x.shape[0], w_scale.shape[0]))


@_int8_weight_op.register_kernel("cuda")
def _(x, w_q, w_scale, bias):
    _check_int8("fasttrain.ops.int8_weight_linear", x, w_q, w_scale, bias)
    from fasttrain.kernels import quant as tq

    return tq.int8_weight_linear(x, w_q, w_scale, bias)


@torch.library.custom_op("fasttrain::int4_weight_linear", mutates_args=(), device_types="cpu")
def _int4_weight_op(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int,
                    bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    _check_int4("fasttrain.ops.int4_weight_linear", x, w_packed, w_scale, group_size, bias, out_features)
    return _int4_weight_cpu(x, w_packed, w_scale, group_size, bias, out_features)


@_int4_weight_op.register_fake
def _(x, w_packed, w_scale, group_size, bias, out_features):
    _check_int4("fasttrain.ops.int4_weight_linear", x, w_packed, w_scale, group_size, bias, out_features)
    return x.new_empty((x.shape[0], out_features))


@_int4_weight_op.register_kernel("cuda")
def _(x, w_packed, w_scale, group_size, bias, out_features):
    _check_int4("fasttrain.ops.int4_weight_linear", x, w_packed, w_scale, group_size, bias, out_features)
    from fasttrain.kernels import quant as tq

    return tq.int4_weight_linear(x, w_packed, w_scale, group_size, bias, out_features)


# ---------------------------------------------------------------------------------------------
# Public API.


def _as_2d(op: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: `x` must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension (..., K), got a scalar")
    if not x.is_contiguous():
        raise ValueError(f"{op}: `x` is not contiguous (stride {x.stride()}); pass `x.contiguous()`")
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def quantize_int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight (N, K) float -> (w_q (Np / 16, Kp / 4, 16, 4) int8 VNNI-blocked,
    w_scale (N,) fp32, w_sum (N,) int32), Kp = round_up(K, 64), Np = round_up(N, 16), zero padded. An all-zero
    row gets scale 1 (its q is 0)."""
    op = "fasttrain.ops.quantize_int8_weight"
    _check(op, "weight", weight, dtypes=(torch.float32, torch.bfloat16, torch.float16), ndim=2)
    w = weight.detach().float()
    N, K = w.shape
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return _block_int8(q), scale.contiguous(), q.sum(dim=1, dtype=torch.int32)


def _block_int8(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 -> zero-padded VNNI-blocked (Np / 16, Kp / 4, 16, 4)."""
    N, K = q.shape
    Np, Kp = _round_up(N, BLOCK_N), _round_up(K, ALIGN_K)
    padded = torch.nn.functional.pad(q, (0, Kp - K, 0, Np - N))
    return padded.reshape(Np // BLOCK_N, BLOCK_N, Kp // 4, 4).permute(0, 2, 1, 3).contiguous()


def _block_int4(u: torch.Tensor) -> torch.Tensor:
    """(N, Kp) nibbles u = q + 8 (int16, Kp a multiple of 64) -> blocked (Np / 16, Kp / 8, 16, 4) uint8."""
    N, Kp = u.shape
    Np = _round_up(N, BLOCK_N)
    u = torch.nn.functional.pad(u, (0, 0, 0, Np - N), value=8)  # padded channels hold q = 0
    u = u.reshape(Np // BLOCK_N, BLOCK_N, Kp // 8, 2, 4).permute(0, 2, 3, 1, 4)  # (b, p, half, j, kk)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).to(torch.uint8).contiguous()


@torch.no_grad()
def repack_int4_weight(w_packed: torch.Tensor) -> torch.Tensor:
    """Layout version 1 -> 2/3: (N, Kp / 2) int4 (byte j of each 16-byte block: value j low, value j + 16 high)
    -> blocked (Np / 16, Kp / 8, 16, 4) (the weights are the same in versions 2 and 3; convert the scales with
    repack_int4_scale). A 4-D tensor is returned as is."""
    op = "fasttrain.ops.quant.repack_int4_weight"
    if isinstance(w_packed, torch.Tensor) and w_packed.dim() == 4:
        _check(op, "w_packed", w_packed, dtypes=(torch.uint8,), ndim=4)
        return w_packed
    _check(op, "w_packed", w_packed, dtypes=(torch.uint8,), ndim=2)
    N, half = w_packed.shape
    if half % (ALIGN_K // 2):
        raise ValueError(f"{op}: a version-1 w_packed has a multiple of 32 bytes per row, got shape {tuple(w_packed.shape)}")
    b = w_packed.reshape(N, half // 16, 16).to(torch.int16)
    u = torch.stack([b & 15, b >> 4], dim=2).reshape(N, 2 * half)
    return _block_int4(u)


def _block_int4_scale(scale: torch.Tensor) -> torch.Tensor:
    """(N, G) scales -> blocked (Np / 16, G, 16), padding channels 1."""
    N, G = scale.shape
    Np = _round_up(N, BLOCK_N)
    scale = torch.nn.functional.pad(scale, (0, 0, 0, Np - N), value=1.0)
    return scale.reshape(Np // BLOCK_N, BLOCK_N, G).transpose(1, 2).contiguous()


@torch.no_grad()
def repack_int4_scale(w_scale: torch.Tensor, out_features: int, version: int = 2) -> torch.Tensor:
    """Older int4 scales -> layout version 3, blocked (Np / 16, G, 16): version 2 stored them (G, N), version 1
    (N, G); `out_features` is N. A 3-D tensor is returned as is."""
    op = "fasttrain.ops.quant.repack_int4_scale"
    if isinstance(w_scale, torch.Tensor) and w_scale.dim() == 3:
        _check(op, "w_scale", w_scale, dtypes=(torch.float32, torch.bfloat16), ndim=3)
        return w_scale
    _check(op, "w_scale", w_scale, dtypes=(torch.float32, torch.bfloat16), ndim=2)
    if version not in (1, 2):
        raise ValueError(f"{op}: version must be 1 ((N, G) scales) or 2 ((G, N) scales), got {version!r}")
    scale = w_scale.T if version == 2 else w_scale
    if scale.shape[0] != out_features:
        raise ValueError(f"{op}: a version-{version} w_scale of shape {tuple(w_scale.shape)} does not hold "
                         f"out_features={out_features} channels")
    return _block_int4_scale(scale)


@torch.no_grad()
def repack_int8_weight(w_q: torch.Tensor) -> torch.Tensor:
    """Layout version 1 -> 2: row-major (N, Kp) int8 weights (fasttrain before the VNNI-blocked layout) ->
    (Np / 16, Kp / 4, 16, 4). w_scale and w_sum are unchanged. A 4-D (already blocked) tensor is returned as is."""
    op = "fasttrain.ops.quant.repack_int8_weight"
    if isinstance(w_q, torch.Tensor) and w_q.dim() == 4:
        _check(op, "w_q", w_q, dtypes=(torch.int8,), ndim=4)
        return w_q
    _check(op, "w_q", w_q, dtypes=(torch.int8,), ndim=2)
    if w_q.shape[1] % ALIGN_K:
        raise ValueError(f"{op}: a version-1 w_q has a multiple of 64 columns, got shape {tuple(w_q.shape)}")
    return _block_int8(w_q)


@torch.no_grad()
def quantize_int4_weight(
    weight: torch.Tensor, group_size: int = 128, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric groupwise int4: weight (N, K) float -> (w_packed (Np / 16, Kp / 8, 16, 4) uint8, w_scale
    (Np / 16, Kp / group_size, 16) `scale_dtype`), Kp = round_up(K, group_size), Np = round_up(N, 16), zero padded; scale = max|w_group| / 7, q in [-8, 7], rounded
    against the stored (possibly bf16) scale. Layout: see fasttrain.ops.reference.dequantize_int4_reference."""
    op = "fasttrain.ops.quantize_int4_weight"
    _check(op, "weight", weight, dtypes=(torch.float32, torch.bfloat16, torch.float16), ndim=2)
    _check_group_size(op, group_size)
    if scale_dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{op}: scale_dtype must be torch.float32 or torch.bfloat16, got {scale_dtype}")
    w = weight.detach().float()
    N, K = w.shape
    Kp = _round_up(K, group_size)
    w = torch.nn.functional.pad(w, (0, Kp - K)).reshape(N, Kp // group_size, group_size)
    amax = w.abs().amax(dim=2)
    scale = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax)).to(scale_dtype)
    q = torch.round(w / scale.float()[:, :, None]).clamp_(-8, 7).to(torch.int16) + 8
    return _block_int4(q.reshape(N, Kp)), _block_int4_scale(scale)


def int8_dynamic_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, w_sum: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with int8 weights and per-token dynamic int8 activations, int32 accumulation.

    x: (..., K) fp32/bf16 contiguous; w_q, w_scale, w_sum from quantize_int8_weight (N outputs);
    bias: (N,) fp32 or None. Returns (..., N) in x's dtype. K <= 65536.
    """
    x2 = _as_2d("fasttrain.ops.int8_dynamic_linear", x)
    return _int8_dynamic_op(x2, w_q, w_scale, w_sum, bias).reshape(*x.shape[:-1], w_scale.shape[0])


def int8_weight_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear layer with int8 per-channel weights and fp32 arithmetic (weight-only quantization).

    x: (..., K) fp32/bf16 contiguous; w_q, w_scale from quantize_int8_weight; bias: (N,) fp32 or None.
    Returns (..., N) in x's dtype.
    """
    x2 = _as_2d("fasttrain.ops.int8_weight_linear", x)
    return _int8_weight_op(x2, w_q, w_scale, bias).reshape(*x.shape[:-1], w_scale.shape[0])


def int4_weight_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int = 128,
                       bias: torch.Tensor | None = None, out_features: int | None = None) -> torch.Tensor:
    """Linear layer with groupwise int4 weights (fp32 or bf16 scales): per-token 16-bit activations, exact
    integer group sums, fp32 scaling.

    x: (..., K) fp32/bf16 contiguous; w_packed, w_scale from quantize_int4_weight(weight, group_size);
    bias: (N,) fp32 or None; out_features: N (required without a bias: the blocked scales hold round_up(N, 16)).
    Returns (..., N) in x's dtype.
    """
    op = "fasttrain.ops.int4_weight_linear"
    x2 = _as_2d(op, x)
    _check_group_size(op, group_size)  # before the dispatcher's own type error
    N = _int4_out_features(op, w_scale, bias, out_features)
    return _int4_weight_op(x2, w_packed, w_scale, group_size, bias, N).reshape(*x.shape[:-1], N)


def _samples_int8(dynamic: bool):
    g = torch.Generator().manual_seed(0)
    for M, K, N, dtype, with_bias in [(1, 7, 1, torch.float32, True), (7, 130, 5, torch.bfloat16, False)]:
        w_q, w_scale, w_sum = quantize_int8_weight(torch.randn(N, K, generator=g))
        x = torch.randn(M, K, generator=g).to(dtype)
        bias = torch.randn(N, generator=g) if with_bias else None
        yield ((x, w_q, w_scale, w_sum, bias) if dynamic else (x, w_q, w_scale, bias)), {}


def _samples_int4():
    g = torch.Generator().manual_seed(0)
    for M, K, N, sdt, with_bias in [(1, 7, 1, torch.float32, True), (7, 130, 5, torch.bfloat16, False)]:
        w_packed, w_scale = quantize_int4_weight(torch.randn(N, K, generator=g), 64, sdt)
        bias = torch.randn(N, generator=g) if with_bias else None
        yield (torch.randn(M, K, generator=g), w_packed, w_scale, 64, bias, N), {}


for _name, _public, _ref, _samples in [
    ("int8_dynamic_linear", int8_dynamic_linear, reference.int8_dynamic_linear_reference, lambda: _samples_int8(True)),
    ("int8_weight_linear", int8_weight_linear, reference.int8_weight_linear_reference, lambda: _samples_int8(False)),
    ("int4_weight_linear", int4_weight_linear, reference.int4_weight_linear_reference, _samples_int4),
]:
    register(OpSpec(qualname=f"fasttrain::{_name}", public=_public, reference=_ref, test="tests/ops/test_quant.py",
                    benchmark="benchmarks/bench_quant.py", samples=_samples))
