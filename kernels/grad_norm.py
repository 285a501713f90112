"""Triton multi-tensor global norm and clipping (the CUDA path of fasttrain.ops.clip_grad_norm_).

Design (cf. apex's multi_tensor_apply, written here for Triton): the tensors are cut into chunks of
CHUNK elements; a small table of (address, length) per chunk lets one launch per dtype cover every
tensor. Pass 1 writes one fp32 partial per chunk, pass 2 reduces the partials in a fixed order and
computes torch's clip coefficient on the device, pass 3 rescales only if that coefficient is < 1
(or NaN). Nothing is read back to the host, so clipping never syncs the stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["total_norm", "clip_grad_norm_"]

CHUNK = 16384  # elements per chunk: enough work per program to hide latency, small tables
BLOCK = 1024  # elements per loop iteration inside a program

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _partials_kernel(addr_ptr, len_ptr, out_ptr, out_offset, DTYPE: tl.constexpr, INF_NORM: tl.constexpr,
                     CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = tl.load(addr_ptr + pid).to(tl.pointer_type(DTYPE))
    n = tl.load(len_ptr + pid)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(base + offs, mask=offs < n, other=0.0).to(tl.float32)
        if INF_NORM:
            acc = tl.maximum(acc, tl.abs(x), propagate_nan=tl.PropagateNan.ALL)
        else:
            acc += x * x
    if INF_NORM:
        r = tl.max(acc, axis=0)
        # tl.max may drop NaNs; keep torch's NaN propagation explicitly.
        r = tl.where(tl.sum((acc != acc).to(tl.int32), axis=0) > 0, float("nan"), r)
    else:
        r = tl.sum(acc, axis=0)
    tl.store(out_ptr + out_offset + pid, r)


@triton.jit
def _finish_kernel(part_ptr, n_parts, norm_ptr, coef_ptr, max_norm, INF_NORM: tl.constexpr, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    nan = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(0, n_parts, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        p = tl.load(part_ptr + offs, mask=offs < n_parts, other=0.0)
        if INF_NORM:
            nan += (p != p).to(tl.int32)
            acc = tl.maximum(acc, p)
        else:
            acc += p
    if INF_NORM:
        norm = tl.where(tl.sum(nan, axis=0) > 0, float("nan"), tl.max(acc, axis=0))
    else:
        norm = tl.sqrt(tl.sum(acc, axis=0))
    coef = max_norm / (norm + 1e-6)
    coef = tl.where(coef >= 1.0, 1.0, coef)  # clamp(max=1) that keeps NaN, as torch.clamp does
    tl.store(norm_ptr, norm)
    tl.store(coef_ptr, coef)


@triton.jit
def _scale_kernel(addr_ptr, len_ptr, coef_ptr, DTYPE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    coef = tl.load(coef_ptr)
    # Skip the read+write entirely when no clipping is needed (coef == 1); NaN coef still scales.
    if (coef < 1.0) | (coef != coef):
        base = tl.load(addr_ptr + pid).to(tl.pointer_type(DTYPE))
        n = tl.load(len_ptr + pid)
        for start in range(0, CHUNK, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            x = tl.load(base + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(base + offs, (x * coef).to(DTYPE), mask=m)


def _chunk_tables(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.dtype, torch.Tensor, torch.Tensor]]:
    """Per dtype: int64 chunk start addresses and chunk lengths, on the tensors' device."""
    device = tensors[0].device
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        if t.numel():
            groups.setdefault(t.dtype, []).append(t)
    tables = []
    for dtype, ts in groups.items():
        numels = torch.tensor([t.numel() for t in ts], dtype=torch.int64)
        addrs = torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64)
        n_chunks = (numels + CHUNK - 1) // CHUNK
        owner = torch.repeat_interleave(torch.arange(len(ts)), n_chunks)
        first = torch.cumsum(n_chunks, 0) - n_chunks
        k = torch.arange(int(n_chunks.sum())) - first[owner]  # chunk index within its tensor
        itemsize = ts[0].element_size()
        chunk_addr = addrs[owner] + k * CHUNK * itemsize
        chunk_len = torch.clamp(numels[owner] - k * CHUNK, max=CHUNK)
        tables.append((dtype, chunk_addr.to(device, non_blocking=True), chunk_len.to(device, non_blocking=True)))
    return tables


def _norm_and_coef(tensors, norm_type: float, max_norm: float, tables):
    device = tensors[0].device
    inf_norm = math.isinf(norm_type)
    n_parts = sum(int(a.numel()) for _, a, _ in tables)
    parts = torch.empty(max(n_parts, 1), dtype=torch.float32, device=device)
    if n_parts == 0:
        parts.zero_()
    offset = 0
    for dtype, addr, length in tables:
        n = int(addr.numel())
        _partials_kernel[(n,)](addr, length, parts, offset, DTYPE=_TL_DTYPES[dtype], INF_NORM=inf_norm,
                               CHUNK=CHUNK, BLOCK=BLOCK)
        offset += n
    out = torch.empty(2, dtype=torch.float32, device=device)
    _finish_kernel[(1,)](parts, max(n_parts, 1), out[0:], out[1:], float(max_norm), INF_NORM=inf_norm, BLOCK=BLOCK)
    return out[0], out[1:]


def total_norm(tensors: Sequence[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """Global 2- or inf-norm of `tensors` (contiguous fp32/fp16/bf16, one device). Returns 0-dim fp32.

    Inputs are validated by fasttrain.ops; call this directly only with checked tensors.
    """
    norm, _ = _norm_and_coef(tensors, norm_type, math.inf, _chunk_tables(tensors))
    return norm


def clip_grad_norm_(tensors: Sequence[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scales `tensors` in place by torch's clip coefficient, computed on the device. Returns the norm."""
    tables = _chunk_tables(tensors)
    norm, coef = _norm_and_coef(tensors, norm_type, max_norm, tables)
    for dtype, addr, length in tables:
        _scale_kernel[(int(addr.numel()),)](addr, length, coef, DTYPE=_TL_DTYPES[dtype], CHUNK=CHUNK, BLOCK=BLOCK)
    return norm
