"""Per-field transforms for fasttrain.data.Loader.

The fused ones (Normalize, RandomCrop, RandomHorizontalFlip, Widen) compile into one C++ pass per
field, run in the loader's native threads with the GIL released, and draw their randomness from a
counter keyed by (seed, epoch, sample index): a sample is augmented the same way whatever the thread
count, batch or rank. `batch_transform` functions (numba, nogil) run next, in the loader thread, on
the whole batch. Plain Python callables run last, on the consumer thread: the slow path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Normalize", "RandomCrop", "RandomHorizontalFlip", "Widen", "BatchTransform", "batch_transform"]


@dataclass(frozen=True)
class Normalize:
    """uint8 (H, W, C) -> `(x.float() - mean) / std` rounded once to `dtype` (fp32/bf16/fp16).
    mean, std: one value per channel (or one for all). channels_first=True outputs (C, H, W)."""

    mean: Sequence[float] | float
    std: Sequence[float] | float
    dtype: torch.dtype = torch.float32
    channels_first: bool = False


@dataclass(frozen=True)
class RandomCrop:
    """Crop to `size` (int or (h, w)) at a random offset after zero-padding by `padding` (as
    torchvision's RandomCrop(size, padding)). Needs a Normalize in the same field's list."""

    size: int | tuple[int, int]
    padding: int = 0


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror left-right with probability 1/2. Needs a Normalize in the same field's list."""


@dataclass(frozen=True)
class Widen:
    """Integer field -> `dtype` (torch.int64 default; int32 or float32 also accepted)."""

    dtype: torch.dtype = torch.int64


class BatchTransform:
    """A numba-compiled function f(batch) run inside the loader thread, in place on the field's
    whole batch as a numpy array (B, ...). Made by @fasttrain.data.batch_transform."""

    def __init__(self, fn: Callable, compiled: Callable):
        self.fn, self.compiled = fn, compiled
        self.__name__ = getattr(fn, "__name__", "batch_transform")
        self.__doc__ = fn.__doc__

    def __call__(self, batch):
        return self.compiled(batch)

    def __repr__(self) -> str:
        return f"batch_transform({self.__name__})"


def batch_transform(fn: Callable) -> BatchTransform:
    """Decorator: compiles `fn(batch) -> None` with numba.njit(nogil=True) so the loader can run it in
    its thread without holding the GIL. `batch` is the field's output batch as a numpy array, modified
    in place. Requires numba (`pip install 'fasttrain[numba]'`)."""
    try:
        import numba
    except ImportError:
        raise ImportError("fasttrain.data.batch_transform needs numba: pip install 'fasttrain[numba]'") from None
    return BatchTransform(fn, numba.njit(nogil=True, cache=False)(fn))
