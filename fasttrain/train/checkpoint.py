"""Checkpoint files: atomic (temp file + fsync + rename) and checksummed.

Layout: 8-byte magic, 32-byte SHA-256 of the payload, payload. Version FTCKPT02 (written now): the
payload is `fasttrain.train._serial` (a pickle with the tensors' bytes out of band, ~2x faster to write
than torch.save); FTCKPT01 (still read): a legacy-format `torch.save`.
A truncated or altered file fails `load_checkpoint` with an error naming the file.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import itertools
import os
import re
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from fasttrain.train import _serial

__all__ = [
    "save_checkpoint", "load_checkpoint", "list_checkpoints", "CheckpointError", "atomic_write_bytes",
    "serialize_checkpoint", "write_checkpoint_bytes", "stage_checkpoint", "commit_checkpoint", "StagedCheckpoint",
    "write_in_background", "wait_for_writes", "raise_failed_writes",
    "prune_checkpoints", "recycle_path",
]

# File layout (FTCKPT03): a 40-byte header = magic (8) + CRC-32C of the payload (4, little-endian) +
# payload length (8) + zeros, then the payload (_serial.py). FTCKPT02 files (SHA-256 of the payload in
# bytes 8-40) and FTCKPT01 files (SHA-256, torch.save payload) still load.
MAGIC = b"FTCKPT03"
_MAGIC_V2 = b"FTCKPT02"
_MAGIC_V1 = b"FTCKPT01"
_HEADER = 40


_STEP_RE = re.compile(r"^step-(\d+)\.ckpt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes | list, durable: bool = True) -> None:
    """Writes `data` (bytes, or a list of buffers written back to back) to `path` so that readers see
    either the old file or the whole new one. durable=True: temp file + fsync + rename + directory fsync,
    done by one C++ call with the GIL released (the writer thread would otherwise take the GIL back
    from the training thread after each of a dozen syscalls). durable=False skips the fsyncs (~10 ms
    here): for log files rewritten on the training thread, where losing the newest rows in a power cut
    is acceptable but a stall at every log point is not."""
    from fasttrain._ext import _C

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = data if isinstance(data, list) else [data]
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    _C.write_file_durable(str(path), str(tmp), parts, durable)


def serialize_checkpoint(state: dict[str, Any]) -> bytes:
    """The payload bytes of a checkpoint. Holds the GIL: call it on the training thread, where it costs
    one short pause instead of contending with the loop."""
    return _serial.dumps(state)


def write_checkpoint_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Checksums and writes a serialized payload atomically. Releases the GIL for the hash and the
    I/O, so it can run on a background thread without slowing the training thread."""
    return commit_checkpoint(_stage_parts(Path(path), [payload], recycle=False))


_stage_ids = itertools.count()


class StagedCheckpoint:
    """A checkpoint whose bytes are in its temp file (written, not yet durable or visible):
    `commit_checkpoint` makes it durable and renames it into place, `discard()` drops it."""

    __slots__ = ("path", "tmp", "fd")

    def __init__(self, path: Path, tmp: Path, fd: int):
        self.path, self.tmp, self.fd = path, tmp, fd

    def discard(self, recycle: bool = False) -> None:
        """Drops the staged file; recycle=True parks it for the next `stage_checkpoint(recycle=True)`."""
        os.close(self.fd)
        if recycle:
            try:
                os.replace(self.tmp, recycle_path(self.path.parent))
                return
            except OSError:
                pass  # deleted instead
        self.tmp.unlink(missing_ok=True)


def recycle_path(directory: str | os.PathLike) -> Path:
    """Where `prune_checkpoints(..., recycle=True)` parks a pruned checkpoint of this process for the
    next `stage_checkpoint(..., recycle=True)` to overwrite (a hidden temp file)."""
    return Path(_recycle_name(str(directory)))


def _recycle_name(directory: str) -> str:
    # A plain string: each Path built on the training thread costs a few microseconds.
    return f"{directory}/.recycle.{os.getpid()}.tmp"


def stage_checkpoint(path: str | os.PathLike, state: dict[str, Any], recycle: bool = False) -> StagedCheckpoint:
    """The CPU half of a checkpoint write, for the training thread: serialize (tensor bytes not
    copied), checksum and copy into the page cache (~0.5 ms for the digits Trainer's 1 MB state here,
    `benchmarks/bench_checkpoint_io.py`). Done on a background thread
    instead, the same work preempts one of torch's OpenMP workers and every other worker then waits
    for it at the next barrier: measured about twice its own CPU time in step time on the 2-core box.
    What is left for the background, fsync and rename (`commit_checkpoint`), is waiting.
    recycle=True overwrites the checkpoint that `prune_checkpoints(..., recycle=True)` parked, if any,
    instead of creating a file: its pages are still cached, so the copy skips the page allocation
    (`benchmarks/bench_checkpoint_io.py`: 1.24x-1.42x faster for the digits Trainer's 1 MB state)."""
    return _stage_parts(Path(path), _serial.dumps_parts(state, addresses=True), recycle)


def _stage_parts(path: Path, parts: list[Any], recycle: bool) -> StagedCheckpoint:
    """Header (magic, CRC-32C, length) + parts into a temp file next to `path`, in one C++ call."""
    from fasttrain._ext import _C

    # Unique per call: a step can be staged again (at the epoch end) while its first version waits.
    # Plain strings: each Path built here costs a few microseconds of the training thread.
    directory = os.path.dirname(path) or "."
    tmp = f"{directory}/.{path.name}.{os.getpid()}.{next(_stage_ids)}.tmp"
    parked = _recycle_name(directory) if recycle else ""
    try:
        fd = _C.write_checkpoint_begin(tmp, MAGIC, _HEADER, parts, parked)
    except FileNotFoundError:  # the directory is missing: create it (not checked up front, ~40 us per call)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _C.write_checkpoint_begin(tmp, MAGIC, _HEADER, parts, parked)
    return StagedCheckpoint(path, Path(tmp), fd)


def commit_checkpoint(staged: StagedCheckpoint, prune_keep: int = 0, recycle: bool = False) -> Path:
    """fsync, close, rename into place and fsync the directory: the durable half. prune_keep > 0 then
    runs `prune_checkpoints(directory, prune_keep, recycle)` in the same call (all without the GIL)."""
    from fasttrain._ext import _C

    parked = str(recycle_path(staged.path.parent)) if recycle else ""
    _C.write_file_commit(staged.fd, str(staged.tmp), str(staged.path), prune_keep, parked)
    return staged.path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return write_checkpoint_bytes(path, serialize_checkpoint(state))


# ---------------------------------------------------------------------------------- background writes
# One FIFO writer thread for the whole process: checkpoint files (checksum + write + fsync, all of which
# release the GIL) and their clean-up run there in submission order while training goes on. Readers in
# this module wait for it first, so the process always reads its own writes; the interpreter waits for
# the queue at exit (ThreadPoolExecutor joins its workers), and errors nobody collected are printed.
_executor: ThreadPoolExecutor | None = None
_pending: list[Future] = []
_lock = threading.Lock()


def write_in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Queues `fn(*args, **kwargs)` on fasttrain's writer thread (FIFO). Its error is raised by the next
    `wait_for_writes()` (and by the returned future)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fasttrain-writer")
        fut = _executor.submit(fn, *args, **kwargs)
        _pending[:] = [f for f in _pending if not f.done() or f.exception() is not None]
        _pending.append(fut)
    return fut


def wait_for_writes() -> None:
    """Blocks until every queued background write is done; raises the first error among them."""
    with _lock:
        pending, _pending[:] = list(_pending), []
    errors = [e for f in pending if (e := f.exception()) is not None]  # exception() waits
    if errors:
        raise errors[0]


def raise_failed_writes() -> None:
    """Raises the first error among finished background writes, without waiting for the others."""
    with _lock:
        failed = [f for f in _pending if f.done() and f.exception() is not None]
        _pending[:] = [f for f in _pending if f not in failed]
    if failed:
        raise failed[0].exception()


@atexit.register
def _report_lost_errors() -> None:
    # Runs after the executor's workers were joined (threading's exit hooks run first).
    for f in _pending:
        if f.done() and f.exception() is not None:
            print(f"fasttrain: a background write failed: {f.exception()!r}", file=sys.stderr)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    wait_for_writes()
    path = Path(path)
    try:
        with path.open("rb") as f:
            header = f.read(_HEADER)
            payload = _serial.empty_buffer(max(path.stat().st_size - _HEADER, 0))  # aligned for the dtype views
            got = f.readinto(payload.numpy())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if len(header) < _HEADER or header[:8] not in (MAGIC, _MAGIC_V2, _MAGIC_V1) or got != len(payload):
        raise CheckpointError(f"{path} is not a fasttrain checkpoint (bad header; truncated or another format)")
    if header[:8] == MAGIC:
        from fasttrain._ext import _C

        want = int.from_bytes(header[12:20], "little")
        if want != len(payload):
            raise CheckpointError(f"checkpoint {path} is truncated or padded: {len(payload)} payload bytes, the header "
                                  f"says {want}")
        if _C.crc32c([payload.numpy()]) != int.from_bytes(header[8:12], "little"):
            raise CheckpointError(f"checkpoint {path} is corrupt: CRC-32C mismatch over {len(payload)} payload bytes")
    elif hashlib.sha256(payload.numpy()).digest() != header[8:40]:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 mismatch over {len(payload)} payload bytes")
    # Full unpickling (not weights_only): the state holds RNG states and config dicts written by
    # fasttrain itself, whose integrity the checksum has just verified.
    if header[:8] == _MAGIC_V1:
        return torch.load(io.BytesIO(payload.numpy().tobytes()), map_location=map_location, weights_only=False)
    return _serial.loads(payload, map_location)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """step-N.ckpt files in `directory`, oldest step first (after queued writes have landed)."""
    wait_for_writes()
    return _step_files(directory)


def _step_files(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(directory: str | os.PathLike, keep: int, recycle: bool = False) -> None:
    """Deletes all but the newest `keep` step-N.ckpt files (no waiting: runs on the writer thread too),
    and the temp files of checkpoint writes whose process died before renaming them (a kill between
    stage_checkpoint and commit_checkpoint leaves one behind). recycle=True keeps one pruned file as
    this process's `recycle_path` for the next `stage_checkpoint(..., recycle=True)`; recycle=False
    deletes that file too (the end of a run)."""
    from fasttrain._ext import _C

    _C.prune_checkpoints(str(directory), keep, str(recycle_path(directory)) if recycle else "")
    if not recycle:
        recycle_path(directory).unlink(missing_ok=True)
