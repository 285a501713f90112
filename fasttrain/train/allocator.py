"""Keep freed memory in the process, so a training loop's per-step tensors reuse warm pages.

glibc's malloc gives large freed blocks back to the kernel: a block at or above the mmap threshold is
unmapped on free, and the top of the heap is trimmed once more than M_TRIM_THRESHOLD of it is free. A
training step allocates and frees the same activations and gradients every step, so it then faults
them back in every step, and the kernel zeroes each fresh 4 KiB page first. On the 2-core box a bf16
char-LM step (the demo GPT, batch 32 x 128) ran 1.10x-1.21x faster with the thresholds raised
(`benchmarks/bench_allocator.py`, separate processes).

`tune_allocator()` raises both, once per process: M_MMAP_THRESHOLD to 32 MiB (glibc's maximum: larger
blocks are still mapped and unmapped) and M_TRIM_THRESHOLD to 1 GiB. The cost: the heap keeps its
high-water mark (RSS does not drop after a peak until the process exits), as with jemalloc or tcmalloc
preloaded, which PyTorch's CPU performance guide recommends for the same reason. Not glibc (musl, macOS,
Windows) or a preloaded allocator that ignores mallopt: nothing happens.

`fasttrain.Trainer` calls it when `fit()` starts (`Trainer(tune_allocator=False)` leaves malloc alone).
"""

from __future__ import annotations

import ctypes
import platform
import threading

__all__ = ["tune_allocator"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc caps it at 4 MiB * sizeof(long) = 32 MiB on 64-bit
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Raises glibc malloc's mmap and trim thresholds (see the module doc). Returns True when glibc
    accepted both settings (now or on an earlier call), False when there is nothing to tune."""
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _mallopt()
        return _tuned


def _mallopt() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; setting either threshold also turns off glibc's dynamic threshold
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
