"""The checkpoint payload codec: a pickle of the state with every dense tensor taken out of band.

torch.save pickles each storage through Python-level writes (0.86 ms for the 1 MB state of the digits
Trainer, 25 tensors, measured here); saving every epoch of a 40 ms epoch, that is 2% of training time
on the training thread. Here the pickler reduces tensors to small `_rebuild(...)` calls through its
dispatch_table (no Python call per non-tensor object) and their bytes are appended in one join.

Layout: u64 little-endian skeleton length | skeleton (pickle protocol 5; tensors as
`fasttrain.train._serial._rebuild(dtype, shape, offset, nbytes, is_param, requires_grad)`) | zero padding
to 64 | tensor bytes, each starting at a 64-byte aligned offset.
Loaded tensors are copied out of the payload into their own storage, on CPU unless `map_location` says
otherwise.
Tensors that are not plain dense ones (sparse, quantized, subclasses other than Parameter) are pickled by
torch's own reducers instead, so every state torch.save can store is still stored.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import threading
from typing import Any

import torch

__all__ = ["dumps", "loads", "empty_buffer"]

_ALIGN = 64
_ZEROS = bytes(_ALIGN)
_DTYPE_NAMES = {d: str(d).removeprefix("torch.") for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                           torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)}


# Per-thread context of the `loads` in progress: the payload buffer that `_rebuild` slices.
_load_ctx = threading.local()


def _rebuild(dtype: str, shape: tuple, offset: int, nbytes: int, is_param: bool, requires_grad: bool):
    """Unpickling callable for a tensor stored out of band (its name is part of the format)."""
    ctx = _load_ctx.current
    dt = getattr(torch, dtype)
    start = ctx.base + offset
    # A copy with its own storage: a view into the payload would report the whole payload as its
    # storage (torch.save of it would write it all) and some consumers (torch.set_rng_state) read
    # storages from offset 0.
    t = ctx.data[start : start + nbytes].view(dt).view(shape).clone()
    if ctx.device is not None:
        t = t.to(ctx.device)
    if is_param:
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_(True) if requires_grad else t


class _Collector:
    """Reduces plain dense tensors to `_rebuild(...)` and collects their bytes. Registered in the
    pickler's dispatch_table (looked up in C by exact type), so the hundreds of ints, tuples and
    arrays of the RNG states never call into Python, as a `persistent_id` hook would for each."""

    def __init__(self):
        self.tensors: list[torch.Tensor] = []
        self.offset = 0

    def reduce(self, obj: torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            return obj.__reduce_ex__(5)  # sparse/quantized: torch's own reducer
        t = obj.detach()
        if t.is_conj() or t.is_neg():  # checked first: each resolve_* call costs ~1 us on the common path
            t = t.resolve_conj().resolve_neg()
        if not t.is_cpu:
            t = t.cpu()  # a synchronizing copy: checkpoints are log points
        if not t.is_contiguous():
            t = t.contiguous()
        nbytes = t.nbytes
        args = (_DTYPE_NAMES.get(t.dtype) or str(t.dtype).removeprefix("torch."), tuple(t.shape), self.offset, nbytes,
                type(obj) is torch.nn.Parameter, obj.requires_grad)
        self.tensors.append(t)
        self.offset += -(-nbytes // _ALIGN) * _ALIGN
        return _rebuild, args


def dumps(state: Any) -> bytes:
    """The payload as one bytes object: a snapshot, safe to write later (the tensors may change)."""
    return b"".join(dumps_parts(state))


def dumps_parts(state: Any, addresses: bool = False) -> list[Any]:
    """The payload as a list of buffers, the tensors' bytes not copied: write them out before the
    state's tensors change again (1 MB less copying per checkpoint than `dumps`).
    addresses=True: each tensor's bytes as a `(data_ptr, nbytes, tensor)` tuple instead of a buffer
    (what fasttrain._C's file writers take; one call per tensor instead of four)."""
    f = io.BytesIO()
    col = _Collector()
    p = pickle.Pickler(f, protocol=5)
    p.dispatch_table = {**copyreg.dispatch_table, torch.Tensor: col.reduce, torch.nn.Parameter: col.reduce}
    p.dump(state)
    skel = f.getvalue()
    head = 8 + len(skel)
    parts: list[Any] = [len(skel).to_bytes(8, "little"), skel, _ZEROS[: -head % _ALIGN]]
    for t in col.tensors:
        n = t.nbytes
        if n:
            parts.append((t.data_ptr(), n, t) if addresses else t.view(-1).view(torch.uint8).numpy().data)
        if n % _ALIGN:
            parts.append(_ZEROS[: _ALIGN - n % _ALIGN])
    return parts


class _Ctx:
    __slots__ = ("data", "base", "device")

    def __init__(self, data, base, device):
        self.data, self.base, self.device = data, base, device


def empty_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 buffer to read a payload into: torch's CPU allocator aligns it to 64 bytes, so every
    tensor in it is aligned as its offsets promise."""
    return torch.empty(nbytes, dtype=torch.uint8)


def loads(payload: torch.Tensor | bytes, map_location: str | torch.device | None = None) -> Any:
    """payload: a uint8 tensor from `empty_buffer`, or bytes.
    map_location: None or "cpu" keeps tensors on CPU."""
    if not isinstance(payload, torch.Tensor):
        buf = empty_buffer(len(payload))
        buf.numpy()[:] = memoryview(payload)
        payload = buf
    raw = payload.numpy()
    n = int.from_bytes(raw[:8].tobytes(), "little")
    if n + 8 > len(raw):
        raise ValueError("checkpoint payload is shorter than its skeleton length")
    base = 8 + n + (-(8 + n) % _ALIGN)
    device = None if map_location in (None, "cpu", torch.device("cpu")) else torch.device(map_location)
    prev = getattr(_load_ctx, "current", None)
    _load_ctx.current = _Ctx(payload, base, device)
    try:
        return pickle.loads(raw[8 : 8 + n].data)
    finally:
        _load_ctx.current = prev
