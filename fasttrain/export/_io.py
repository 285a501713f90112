"""Atomic, checksummed file writes: temp file in the same directory, fsync, rename, fsync the directory.
A reader therefore sees either the old file or the complete new one, never a torn write."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["sha256_file", "atomic_replace", "atomic_write_json", "read_json_checked", "temp_path_for"]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_path_for(path: str | os.PathLike) -> Path:
    """A temporary sibling of `path` (same filesystem, so the final rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsyncs the finished temporary file `tmp` and renames it over `path`."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(Path(path).resolve().parent)


def atomic_write_json(path: str | os.PathLike, payload: dict) -> None:
    """Writes {"report": payload, "sha256": sha256 of the canonical JSON of payload} atomically."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    doc = {"report": payload, "sha256": hashlib.sha256(body.encode()).hexdigest()}
    tmp = temp_path_for(path)
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(Path(path).resolve().parent)


def read_json_checked(path: str | os.PathLike) -> dict:
    """Reads a file written by atomic_write_json; raises ValueError if its checksum does not match."""
    with open(path) as f:
        doc = json.load(f)
    body = json.dumps(doc["report"], sort_keys=True, separators=(",", ":"))
    if hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
        raise ValueError(f"{path}: checksum mismatch (the file was modified or truncated)")
    return doc["report"]
