"""Resumable batching for data the Trainer receives as tensors.

The order of an epoch is a pure function of (seed, epoch); the state is (epoch, position), so a
resumed run continues with exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["TensorBatches", "is_resumable"]


def is_resumable(loader: Any) -> bool:
    return all(hasattr(loader, a) for a in ("state_dict", "load_state_dict"))


class TensorBatches:
    """Batches of `tensors` (all with the same first dimension N).

    Iterating continues from the saved position; when an epoch is exhausted the next iteration
    starts the following epoch. `len()` is the number of batches per epoch.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if not tensors or any(not isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError("TensorBatches: pass a tensor or a tuple of tensors")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"TensorBatches: all tensors need the same first dimension, got {[t.shape[0] for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors, self.n, self.batch_size = tensors, n, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self._order()
        while self.position < len(self):
            idx = order[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1  # counts batches handed out: the state after consuming this one
            yield tuple(t[idx] for t in self.tensors)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]
