"""Memory-bandwidth probes, measured in the same run as the kernel they judge.

read:  torch.sum over a buffer far larger than the last-level cache (bytes read / time).
copy:  dst.copy_(src) (bytes read + bytes written / time).
Both use torch's own multi-threaded kernels at the current torch thread count.
"""

from __future__ import annotations

import torch

from fasttrain.bench.timing import interleaved

__all__ = ["memory_bandwidth"]


def memory_bandwidth(nbytes: int = 256 << 20, rounds: int = 9) -> dict[str, float]:
    """Returns {"read_gbps": ..., "copy_gbps": ...} (GB/s = 1e9 bytes/s, medians)."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = interleaved({"read": lambda: src.sum(), "copy": lambda: dst.copy_(src)}, rounds=rounds, warmup=1)
    return {"read_gbps": nbytes / t["read"].median / 1e9, "copy_gbps": 2 * nbytes / t["copy"].median / 1e9}
