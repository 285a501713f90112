"""Loads the compiled core once, with an error that says how to build it."""

from __future__ import annotations

import os

try:
    from fasttrain import _C
except ImportError as e:
    if "FASTTRAIN_ISA" in str(e):  # a bad override, not a bad install: the message says what to set
        raise ImportError(str(e)) from None
    raise ImportError(  # pragma: no cover - exercised only on a broken install
        "fasttrain's compiled core (fasttrain._C) could not be imported: "
        f"{e}. Install the package with `pip install .` (or, for development, the editable install in "
        "CONTRIBUTING.md) instead of importing it from a source checkout."
    ) from e

__all__ = ["_C", "num_threads"]


def num_threads() -> int:
    """Threads for fasttrain's OpenMP kernels.

    FASTTRAIN_NUM_THREADS if set, else torch's intra-op thread count, so fasttrain and torch
    never oversubscribe the cores between them.
    """
    env = os.environ.get("FASTTRAIN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FASTTRAIN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"FASTTRAIN_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    import torch

    return torch.get_num_threads()
