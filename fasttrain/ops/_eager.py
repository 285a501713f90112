"""Eager CPU calls without the torch.library round trip.

A `torch.library.custom_op` call from Python passes through default filling, the autograd and
ADInplaceOrView layers and a redispatch before its CPU kernel runs: ~60-100 us per call here, more than
the whole update of a 100k-parameter model. When nothing can observe the difference (not being traced by
torch.compile, no dispatch mode such as FakeTensorMode active, plain CPU tensors), the public functions
call the op's CPU body directly and bump the version counters of what it mutated, as the op would
(autograd's in-place checks keep working). Everything else still goes through the op.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd.graph import increment_version
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["call"]


def _direct_ok(t: torch.Tensor) -> bool:
    return type(t) is torch.Tensor and t.device.type == "cpu" and not torch.compiler.is_compiling() \
        and _get_current_dispatch_mode() is None


def call(op: Callable[..., Any], cpu_impl: Callable[..., Any], mutated: tuple[torch.Tensor | None, ...],
         *args: Any) -> None:
    """Runs `op(*args)`, or `cpu_impl(*args)` directly when that is unobservable (see module doc).
    mutated: the tensors the op declares in mutates_args (None entries skipped)."""
    first = mutated[0]
    if first is not None and _direct_ok(first):
        cpu_impl(*args)  # works on data pointers: autograd never sees it, grad mode does not matter
        for t in mutated:
            if t is not None:
                increment_version(t)
        return
    op(*args)
