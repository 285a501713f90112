"""Built-in example: sklearn's 8x8 digits (1797 images, 10 classes) and an MLP for them.

Used by examples/digits.py, the CLI (`model = "digits-mlp"`, `data = "digits"`) and the tests.
"""

from __future__ import annotations

import torch
from torch import nn


def load_digits_tensors(val_fraction: float = 0.2, seed: int = 0):
    """(x_train, y_train), (x_val, y_val): float32 (N, 64) scaled to [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def digits_mlp(hidden: int = 256) -> nn.Module:
    """64 -> hidden -> hidden -> 10 MLP."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
