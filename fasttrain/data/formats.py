"""Record and token files: fixed-shape named fields, memory-mapped for reading.

Layout (little-endian):

    offset 0     prefix, 64 bytes: magic b"FTRECORD", version u32, schema length u32, count u64,
                 chunk_records u64, data offset u64, checksum-table offset u64, record bytes u64,
                 crc32 of (prefix[:56] + schema) u32
    offset 64    schema: JSON {"kind": "records"|"tokens", "fields": [{name, dtype, shape, offset}], ...}
    data offset  count records of `record bytes` each (fields interleaved per record), 64-byte aligned
    table offset crc32 per (chunk of chunk_records records, field): u32[n_chunks][n_fields]

A record file opens as numpy memmaps, one strided view per field, so the loader's C++ gather reads
the page cache directly. Files are written to a temporary name, fsynced and renamed, so a crash
leaves either the old file or the new one. A checksum per (chunk, field) lets a corrupt byte be
reported with its field and offset.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = ["RecordFile", "RecordFormatError", "write_records", "write_tokens", "read_tokens"]

MAGIC = b"FTRECORD"
VERSION = 1
_PREFIX = struct.Struct("<8sIIQQQQQI")  # 60 bytes, padded to 64
_PREFIX_BYTES = 64
_ALIGN = 64


class RecordFormatError(ValueError):
    """A record/token file is truncated, corrupt or not a fasttrain file (the message names where)."""


def _as_array(name: str, v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        if v.device.type != "cpu":
            raise ValueError(f"field {name!r} is on {v.device}; pass a CPU tensor (x.cpu())")
        v = v.detach().contiguous().numpy()
    a = np.ascontiguousarray(v)
    if a.ndim < 1:
        raise ValueError(f"field {name!r} must have a leading record dimension, got a scalar")
    if a.dtype.kind not in "biuf" or a.dtype.byteorder == ">":
        raise TypeError(f"field {name!r} has dtype {a.dtype}; record fields must be little-endian bool/int/uint/float")
    return a


def _schema(first: Mapping[str, np.ndarray], kind: str) -> dict:
    fields, off, align = [], 0, 1
    for name, a in first.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"field names must be non-empty strings, got {name!r}")
        it = a.dtype.itemsize
        off = (off + it - 1) // it * it  # natural alignment of each field inside the record
        fields.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape[1:]), "offset": off})
        off += int(np.prod(a.shape[1:], dtype=np.int64)) * it
        align = max(align, it)
    if not fields:
        raise ValueError("write_records needs at least one field")
    return {"kind": kind, "fields": fields, "record_bytes": max(1, (off + align - 1) // align * align)}


def _record_dtype(schema: dict) -> np.dtype:
    f = schema["fields"]
    return np.dtype({
        "names": [x["name"] for x in f],
        "formats": [(np.dtype(x["dtype"]), tuple(x["shape"])) for x in f],
        "offsets": [x["offset"] for x in f],
        "itemsize": schema["record_bytes"],
    })


def _chunk_crcs(rows: np.ndarray, names: list[str]) -> list[int]:
    return [zlib.crc32(np.ascontiguousarray(rows[n]).view(np.uint8)) for n in names]


def _concat(parts: list[np.ndarray], rdt: np.dtype) -> np.ndarray:
    # Not np.concatenate: dtype promotion would drop the record padding and change the layout.
    out = np.zeros(sum(len(p) for p in parts), dtype=rdt)
    o = 0
    for p in parts:
        out[o : o + len(p)] = p
        o += len(p)
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path, chunks: Iterable[Mapping], kind: str, chunk_records: int | None) -> Path:
    path = Path(path)
    it = iter(chunks)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("write_records got no chunks; pass a dict of arrays or a non-empty iterable of dicts") from None
    first = {k: _as_array(k, v) for k, v in first.items()}
    schema = _schema(first, kind)
    rdt = _record_dtype(schema)
    names = [f["name"] for f in schema["fields"]]
    shapes = {f["name"]: (np.dtype(f["dtype"]), tuple(f["shape"])) for f in schema["fields"]}
    per_chunk = chunk_records or max(1, (1 << 20) // schema["record_bytes"])  # ~1 MiB per checksum chunk
    sj = json.dumps(schema, separators=(",", ":")).encode()
    data_off = (_PREFIX_BYTES + len(sj) + _ALIGN - 1) // _ALIGN * _ALIGN
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * data_off)
            count, crcs, pending = 0, [], []

            def flush(rows: np.ndarray) -> None:
                f.write(memoryview(rows).cast("B"))
                crcs.append(_chunk_crcs(rows, names))

            for i, chunk in enumerate(_chain(first, it)):
                chunk = {k: _as_array(k, v) for k, v in chunk.items()}
                if set(chunk) != set(names):
                    raise ValueError(f"chunk {i} has fields {sorted(chunk)}, the first chunk had {sorted(names)}")
                n = None
                for k, a in chunk.items():
                    if (a.dtype, a.shape[1:]) != shapes[k]:
                        raise ValueError(f"chunk {i}: field {k!r} is {a.dtype} {a.shape[1:]}, expected {shapes[k][0]} {shapes[k][1]} per record")
                    if n is not None and len(a) != n:
                        raise ValueError(f"chunk {i}: field {k!r} has {len(a)} records, other fields have {n}")
                    n = len(a)
                rows = np.zeros(n, dtype=rdt)
                for k, a in chunk.items():
                    rows[k] = a
                pending.append(rows)
                buffered = sum(len(r) for r in pending)
                if buffered >= per_chunk:
                    allrows = _concat(pending, rdt)
                    full = len(allrows) // per_chunk * per_chunk
                    for s in range(0, full, per_chunk):
                        flush(allrows[s : s + per_chunk])
                    pending = [allrows[full:]]
                count += n
            rest = _concat(pending, rdt)
            if len(rest):
                flush(rest)
            table_off = data_off + count * schema["record_bytes"]
            f.write(np.asarray(crcs, dtype="<u4").tobytes())
            prefix = _PREFIX.pack(MAGIC, VERSION, len(sj), count, per_chunk, data_off, table_off, schema["record_bytes"], 0)
            hcrc = zlib.crc32(prefix[:56] + sj)
            f.seek(0)
            f.write(prefix[:56] + struct.pack("<I", hcrc) + b"\0" * (_PREFIX_BYTES - 60) + sj)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _chain(first, rest):
    yield first
    yield from rest


def write_records(path: str | os.PathLike, fields: Mapping | Iterable[Mapping], *, chunk_records: int | None = None) -> Path:
    """Writes a record file atomically (temp file + fsync + rename).

    fields: {name: array or tensor of shape (N, *field_shape)}, or an iterable of such dicts
    (chunks with the same fields, dtypes and shapes) for data larger than memory.
    chunk_records: records per checksum chunk (default ~1 MiB of records). Returns the path.
    """
    if isinstance(fields, Mapping):
        fields = [fields]
    return _write(path, fields, "records", chunk_records)


def write_tokens(path: str | os.PathLike, tokens, *, dtype=None) -> Path:
    """Writes a token file: tokens is a 1-D array/tensor or an iterable of 1-D chunks.

    dtype: np.uint16 or np.uint32 (default: uint16 if every token of a single array fits, else uint32;
    for an iterable of chunks, pass dtype or chunks that already have it).
    """
    def conv(t):
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if a.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {a.shape}")
        want = np.dtype(dtype) if dtype is not None else (a.dtype if a.dtype in (np.uint16, np.uint32) else None)
        if want is None:
            want = np.dtype(np.uint16) if a.size == 0 or (int(a.min()) >= 0 and int(a.max()) < 1 << 16) else np.dtype(np.uint32)
        if want not in (np.uint16, np.uint32):
            raise TypeError(f"token dtype must be uint16 or uint32, got {want}")
        if a.size and (int(a.min()) < 0 or int(a.max()) > np.iinfo(want).max):
            raise ValueError(f"tokens must be in [0, {np.iinfo(want).max}] for {want}, got [{int(a.min())}, {int(a.max())}]")
        return {"tokens": a.astype(want.newbyteorder("<"), copy=False)}

    if isinstance(tokens, (np.ndarray, torch.Tensor, list)):
        chunks = [conv(tokens)]
    else:
        chunks = (conv(t) for t in tokens)
    return _write(path, chunks, "tokens", None)


class RecordFile:
    """A record file opened for reading: `fields[name]` is a read-only memmap view of shape (count, *shape).

    verify=True checks every (chunk, field) checksum on open (one read of the file); a mismatch or a
    truncated file raises RecordFormatError naming the file, the field and the byte offset.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        p = str(self.path)
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(_PREFIX_BYTES)
            if len(head) < _PREFIX_BYTES:
                raise RecordFormatError(f"{p}: truncated at offset {size}: the header needs {_PREFIX_BYTES} bytes")
            magic, version, slen, count, per_chunk, data_off, table_off, rbytes, hcrc = _PREFIX.unpack(head[:60])
            if magic != MAGIC:
                raise RecordFormatError(f"{p}: not a fasttrain record file (magic {magic!r} at offset 0, expected {MAGIC!r})")
            if version != VERSION:
                raise RecordFormatError(f"{p}: format version {version} at offset 8 is not supported (this fasttrain reads {VERSION})")
            sj = f.read(slen)
        if len(sj) < slen:
            raise RecordFormatError(f"{p}: truncated at offset {size} inside the schema (offset {_PREFIX_BYTES}..{_PREFIX_BYTES + slen})")
        if zlib.crc32(head[:56] + sj) != hcrc:
            raise RecordFormatError(f"{p}: header checksum mismatch (bytes 0..{_PREFIX_BYTES + slen}); the file is corrupt, rewrite it")
        self.schema = json.loads(sj)
        self.kind = self.schema["kind"]
        self.count, self.chunk_records, self.record_bytes = count, per_chunk, rbytes
        names = [x["name"] for x in self.schema["fields"]]
        n_chunks = -(-count // per_chunk)
        expected = table_off + 4 * n_chunks * len(names)
        if size < expected:
            if size < table_off:
                t = size - data_off
                rec, within = divmod(max(t, 0), rbytes)
                field = next((x["name"] for x in reversed(self.schema["fields"]) if x["offset"] <= within), names[0])
                raise RecordFormatError(
                    f"{p}: truncated at offset {size}, in field {field!r} of record {rec} (header says {count} records, "
                    f"file should be {expected} bytes); rewrite the file"
                )
            raise RecordFormatError(f"{p}: truncated at offset {size} in the checksum table (offset {table_off}..{expected})")
        if size > expected:
            raise RecordFormatError(f"{p}: {size - expected} unexpected bytes after offset {expected}; the file is corrupt")
        rdt = _record_dtype(self.schema)
        if count:
            self._rows = np.memmap(p, dtype=rdt, mode="r", offset=data_off, shape=(count,))
        else:
            self._rows = np.zeros(0, dtype=rdt)
        self.fields: dict[str, np.ndarray] = {n: self._rows[n] for n in names}
        self._crcs = np.fromfile(p, dtype="<u4", count=n_chunks * len(names), offset=table_off).reshape(n_chunks, len(names))
        self._data_off = data_off
        if verify:
            self.verify()

    def verify(self) -> None:
        """Recomputes every (chunk, field) checksum; raises RecordFormatError at the first mismatch."""
        names = list(self.fields)
        offsets = {x["name"]: x["offset"] for x in self.schema["fields"]}
        for c in range(self._crcs.shape[0]):
            a = c * self.chunk_records
            b = min(a + self.chunk_records, self.count)
            got = _chunk_crcs(self._rows[a:b], names)
            for j, n in enumerate(names):
                if got[j] != int(self._crcs[c, j]):
                    start = self._data_off + a * self.record_bytes + offsets[n]
                    end = self._data_off + b * self.record_bytes
                    raise RecordFormatError(
                        f"{self.path}: checksum mismatch in field {n!r}, records {a}..{b - 1} "
                        f"(bytes {start}..{end}, chunk {c}); the file is corrupt, rewrite it"
                    )

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        f = ", ".join(f"{n}: {a.dtype}{list(a.shape[1:])}" for n, a in self.fields.items())
        return f"RecordFile({str(self.path)!r}, count={self.count}, {{{f}}})"


def read_tokens(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
    """Memory-maps a token file written by write_tokens: a read-only 1-D uint16/uint32 array."""
    rf = RecordFile(path, verify=verify)
    if rf.kind != "tokens":
        raise RecordFormatError(f"{path}: is a record file, not a token file (write it with fasttrain.data.write_tokens)")
    return rf.fields["tokens"]
