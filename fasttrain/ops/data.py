"""Data-loading kernels: the loader's sample order and its fused per-batch gather + decode pass.

`gather_normalize` is the public, torch.library-registered op: rows of a uint8 image array gathered
in a given order, optionally zero-padded, randomly cropped and mirrored (counter-based draws keyed by
(seed, epoch, sample index)), converted to fp32/bf16 with per-channel `(x - mean) / std`, all in one
pass over the bytes. `fasttrain.data.Loader` drives the same C++ pass through the lower-level
helpers below (`make_plan`, `fill_batch`, `sample_indices`, `gather_windows`), which work on numpy
views of record files as well as tensors; all checks happen here, before any address reaches _C.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fasttrain._ext import _C, num_threads
from fasttrain.ops import reference
from fasttrain.ops._checks import DTYPE_CODES
from fasttrain.ops._registry import OpSpec, register

__all__ = ["gather_normalize"]

_OP = "fasttrain.ops.gather_normalize"
# Integer codes of csrc/data/data.h (IntCode / WideCode).
INT_CODES = {np.dtype(t): c for c, t in enumerate(["u1", "i1", "<i2", "<u2", "<i4", "<u4", "<i8"])}
WIDE_CODES = {torch.int64: 0, torch.int32: 1, torch.float32: 2}
IMAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_U63 = 1 << 63


def check_seed(op: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < _U63:
        raise TypeError(f"{op}: {name} must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def check_mean_std(op: str, mean, std, channels: int) -> tuple[list[float], list[float]]:
    out = []
    for name, v in (("mean", mean), ("std", std)):
        vals = torch.as_tensor(v, dtype=torch.float64).flatten().tolist()
        if len(vals) == 1:
            vals = vals * channels
        if len(vals) != channels:
            raise ValueError(f"{op}: {name} has {len(vals)} values but the images have {channels} channels; pass one per channel")
        if not all(np.isfinite(vals)):
            raise ValueError(f"{op}: {name} must be finite, got {vals}")
        out.append([float(np.float32(x)) for x in vals])
    if min(out[1]) <= 0:
        raise ValueError(f"{op}: std must be > 0 in every channel, got {out[1]}")
    return out[0], out[1]


def _crop_hw(op: str, crop, H: int, W: int, padding: int) -> tuple[int, int] | None:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"{op}: padding must be an integer >= 0, got {padding!r}")
    if crop is None:
        if padding:
            raise ValueError(f"{op}: padding={padding} without crop has no effect; pass crop=(h, w) as well")
        return None
    h, w = (crop, crop) if isinstance(crop, int) else tuple(crop)
    if not (0 < h <= H + 2 * padding and 0 < w <= W + 2 * padding):
        raise ValueError(f"{op}: crop {(h, w)} must be positive and fit the padded image {(H + 2 * padding, W + 2 * padding)}")
    return int(h), int(w)


def make_plan(
    op: str,
    field: str,
    src: np.ndarray,
    *,
    kind: str,
    out_dtype: torch.dtype | None = None,
    mean=None,
    std=None,
    crop=None,
    padding: int = 0,
    flip: bool = False,
    channels_first: bool = False,
    salt: int = 0,
):
    """A C++ FieldPlan for rows of `src` (N, *row_shape): kind "copy", "widen" or "image".

    Every row must be contiguous (rows may be interleaved with other fields, as in record files).
    Returns (plan, output row shape, output torch dtype). `src` must outlive the plan.
    """
    if not isinstance(src, np.ndarray) or src.ndim < 1:
        raise TypeError(f"{op}: field {field!r} must be an array with a leading sample dimension")
    row = src[0] if len(src) else np.empty(src.shape[1:], src.dtype)
    if not row.flags.c_contiguous or (len(src) > 1 and src.strides[0] <= 0):
        raise ValueError(f"{op}: rows of field {field!r} are not contiguous; pass np.ascontiguousarray(x) / x.contiguous()")
    p = _C.data.FieldPlan()
    p.base = src.__array_interface__["data"][0] if src.size else 0
    p.row_stride = src.strides[0] if src.ndim and len(src) > 1 else row.nbytes
    p.row_bytes = row.nbytes
    p.salt = salt
    if kind == "copy":
        p.kind, p.out_row_bytes = 0, row.nbytes
        return p, tuple(src.shape[1:]), torch.from_numpy(np.empty(0, src.dtype)).dtype
    if kind == "widen":
        if src.dtype not in INT_CODES:
            raise TypeError(f"{op}: field {field!r} has dtype {src.dtype}; Widen takes integer fields (u8/i8/i16/u16/i32/u32/i64)")
        if out_dtype not in WIDE_CODES:
            raise TypeError(f"{op}: Widen dtype must be torch.int64, torch.int32 or torch.float32, got {out_dtype}")
        p.kind, p.src_code, p.dst_code, p.count = 1, INT_CODES[src.dtype], WIDE_CODES[out_dtype], row.size
        p.out_row_bytes = row.size * torch.empty((), dtype=out_dtype).element_size()
        return p, tuple(src.shape[1:]), out_dtype
    if src.dtype != np.uint8 or src.ndim not in (3, 4):
        raise TypeError(f"{op}: field {field!r} must be uint8 images (N, H, W, C) or (N, H, W), got {src.dtype} {src.shape}")
    if out_dtype not in IMAGE_DTYPES:
        raise TypeError(f"{op}: output dtype must be torch.float32, torch.bfloat16 or torch.float16, got {out_dtype}")
    H, W = src.shape[1], src.shape[2]
    C = src.shape[3] if src.ndim == 4 else 1
    m, s = check_mean_std(op, mean, std, C)
    hw = _crop_hw(op, crop, H, W, padding)
    h, w = hw if hw is not None else (H, W)
    p.kind, p.H, p.W, p.C, p.out_h, p.out_w, p.pad = 2, H, W, C, h, w, padding
    p.random_crop, p.flip, p.chw = hw is not None, bool(flip), bool(channels_first)
    p.out_dtype, p.mean, p.std = DTYPE_CODES[out_dtype], m, s
    p.out_row_bytes = h * w * C * torch.empty((), dtype=out_dtype).element_size()
    shape = (C, h, w) if channels_first else ((h, w, C) if src.ndim == 4 else (h, w))
    return p, shape, out_dtype


def check_indices(op: str, idx: np.ndarray, n: int) -> None:
    if idx.dtype != np.int64 or idx.ndim != 1 or not idx.flags.c_contiguous:
        raise TypeError(f"{op}: indices must be a contiguous 1-D int64 array")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"{op}: indices must be in [0, {n}), got min {int(idx.min())}, max {int(idx.max())}")


def fill_batch(op: str, plans: Sequence, outs: Sequence[torch.Tensor], idx: np.ndarray, n_rows: int, seed: int, epoch: int, threads: int | None = None) -> None:
    """Runs the fused pass: outs[f][i] <- plans[f] applied to row idx[i]. outs: contiguous CPU tensors of >= len(idx) rows."""
    check_indices(op, idx, n_rows)
    for f, (p, o) in enumerate(zip(plans, outs)):
        if o.device.type != "cpu" or not o.is_contiguous() or o.numel() * o.element_size() < len(idx) * p.out_row_bytes:
            raise ValueError(f"{op}: output {f} must be a contiguous CPU tensor with room for {len(idx)} rows")
    fill_batch_trusted(list(plans), [o.data_ptr() for o in outs], idx, seed, epoch, threads or num_threads())


def fill_batch_trusted(plans: list, out_ptrs: list[int], idx: np.ndarray, seed: int, epoch: int, threads: int) -> None:
    """fill_batch for callers whose buffers and indices are valid by construction (fasttrain.data.Loader:
    its own output buffers, indices from `sample_indices`): skips the per-batch checks (~10 us of a
    small batch's ~30 us). out_ptrs: the outputs' data_ptr()s."""
    _C.data.fill_batch(plans, out_ptrs, idx.ctypes.data, len(idx), seed, epoch, threads)


def sample_indices(n: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int, start: int, count: int) -> np.ndarray:
    """Sample indices of rank-local positions [start, start + count): see fasttrain.ops.reference.sample_indices_reference."""
    out = np.empty(count, dtype=np.int64)
    _C.data.sample_indices(n, seed, epoch, shuffle, rank, world_size, start, count, out.ctypes.data)
    return out


def gather_windows(tokens: np.ndarray, starts: np.ndarray, block: int, x: torch.Tensor, y: torch.Tensor, threads: int | None = None) -> None:
    """x[i] = tokens[starts[i]:starts[i] + block], y[i] = the same shifted by one, as int64. x, y: (>= B, block) int64."""
    op = "fasttrain.data.TokenLoader"
    if tokens.dtype not in INT_CODES or tokens.ndim != 1 or not tokens.flags.c_contiguous:
        raise TypeError(f"{op}: tokens must be a contiguous 1-D integer array, got {tokens.dtype} {tokens.shape}")
    check_indices(op, starts, max(len(tokens) - block, 0))
    for name, t in (("x", x), ("y", y)):
        if t.dtype != torch.int64 or not t.is_contiguous() or t.numel() < len(starts) * block:
            raise ValueError(f"{op}: {name} must be a contiguous int64 tensor with room for {len(starts)} x {block}")
    _C.data.gather_windows(tokens.ctypes.data, INT_CODES[tokens.dtype], starts.ctypes.data, len(starts), block, x.data_ptr(), y.data_ptr(), threads or num_threads())


# ---------------------------------------------------------------------------------------------
# torch.library op


def _check_op_inputs(src, indices, mean, std):
    for name, t in (("src", src), ("indices", indices), ("mean", mean), ("std", std)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{_OP}: `{name}` is on {t.device}; the data kernels run on CPU (move the result to the GPU afterwards)")
    if src.dtype != torch.uint8 or src.dim() != 4:
        raise TypeError(f"{_OP}: `src` must be a uint8 (N, H, W, C) tensor, got {src.dtype} {tuple(src.shape)}")
    if not src.is_contiguous():
        raise ValueError(f"{_OP}: `src` is not contiguous; pass src.contiguous()")
    if indices.dtype != torch.int64 or indices.dim() != 1:
        raise TypeError(f"{_OP}: `indices` must be a 1-D int64 tensor, got {indices.dtype} {tuple(indices.shape)}")
    for name, t in (("mean", mean), ("std", std)):
        if t.dtype != torch.float32 or t.shape != (src.shape[3],):
            raise ValueError(f"{_OP}: `{name}` must be an fp32 tensor of shape ({src.shape[3]},) (one per channel), got {t.dtype} {tuple(t.shape)}")


def _out_shape(src, indices, crop_h, crop_w, channels_first):
    N, H, W, C = src.shape
    h, w = (crop_h, crop_w) if crop_h > 0 else (H, W)
    return (indices.shape[0], C, h, w) if channels_first else (indices.shape[0], h, w, C)


@torch.library.custom_op("fasttrain::gather_normalize", mutates_args=(), device_types="cpu")
def _gather_normalize_op(
    src: torch.Tensor, indices: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype,
    crop_h: int, crop_w: int, padding: int, flip: bool, channels_first: bool, seed: int, epoch: int,
) -> torch.Tensor:
    _check_op_inputs(src, indices, mean, std)
    crop = (crop_h, crop_w) if crop_h > 0 else None
    plan, _, _ = make_plan(_OP, "src", src.numpy(), kind="image", out_dtype=dtype, mean=mean.tolist(), std=std.tolist(),
                           crop=crop, padding=padding, flip=flip, channels_first=channels_first)
    out = torch.empty(_out_shape(src, indices, crop_h, crop_w, channels_first), dtype=dtype)
    idx = indices.contiguous().numpy()
    fill_batch(_OP, [plan], [out], idx, src.shape[0], seed, epoch)
    return out


@_gather_normalize_op.register_fake
def _(src, indices, mean, std, dtype, crop_h, crop_w, padding, flip, channels_first, seed, epoch):
    _check_op_inputs(src, indices, mean, std)
    return src.new_empty(_out_shape(src, indices, crop_h, crop_w, channels_first), dtype=dtype)


def gather_normalize(
    src: torch.Tensor,
    indices: torch.Tensor,
    mean: torch.Tensor | Sequence[float],
    std: torch.Tensor | Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    crop: int | tuple[int, int] | None = None,
    padding: int = 0,
    flip: bool = False,
    channels_first: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> torch.Tensor:
    """Fused gather + augment + normalize of uint8 images, one pass, OpenMP over samples.

    src: (N, H, W, C) uint8 (contiguous, CPU); indices: (B,) int64 in [0, N); mean, std: (C,) (or scalars).
    Returns (B, h, w, C) in `dtype` (fp32/bf16/fp16), or (B, C, h, w) with channels_first=True, equal
    bit for bit to `fasttrain.ops.reference.gather_normalize_reference`: zero-pad by `padding`, crop
    `crop` = (h, w) at offsets drawn per (seed, epoch, index), mirror left-right with probability 1/2
    if `flip`, then `((x.float() - mean) / std).to(dtype)`.
    """
    if not isinstance(src, torch.Tensor) or src.dim() != 4:
        raise TypeError(f"{_OP}: `src` must be a uint8 (N, H, W, C) tensor")
    C = src.shape[3]
    m, s = check_mean_std(_OP, mean, std, C)
    hw = _crop_hw(_OP, crop, src.shape[1], src.shape[2], padding)
    seed, epoch = check_seed(_OP, "seed", seed), check_seed(_OP, "epoch", epoch)
    _check_op_inputs(src, indices, torch.tensor(m), torch.tensor(s))
    if dtype not in IMAGE_DTYPES:
        raise TypeError(f"{_OP}: dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    check_indices(_OP, indices.contiguous().numpy(), src.shape[0])
    ch, cw = hw if hw is not None else (0, 0)
    return _gather_normalize_op(src, indices, torch.tensor(m), torch.tensor(s), dtype, ch, cw, padding, bool(flip), bool(channels_first), seed, epoch)


def _samples():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (9, 5, 7, 3), dtype=torch.uint8, generator=g)
    idx = torch.tensor([8, 0, 3, 3], dtype=torch.int64)
    mean, std = torch.tensor([120.0, 110.0, 100.0]), torch.tensor([60.0, 61.0, 62.0])
    yield (src, idx, mean, std, torch.float32, 0, 0, 0, False, False, 0, 0), {}
    yield (src, idx, mean, std, torch.bfloat16, 4, 6, 2, True, True, 7, 1), {}


register(
    OpSpec(
        qualname="fasttrain::gather_normalize",
        public=gather_normalize,
        reference=reference.gather_normalize_reference,
        test="tests/ops/test_data.py",
        benchmark="benchmarks/bench_gather_normalize.py",
        samples=_samples,
    )
)
