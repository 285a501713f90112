"""fasttrain: a fast, measured PyTorch training core.

Compiled kernels (C++ for CPU, Triton for GPU) behind a small API. Heavy optional dependencies
(triton, onnx, onnxruntime, optuna) are imported only when the feature that needs them is used.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fasttrain")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from an unusual layout
    __version__ = "0+unknown"

import torch as _torch  # noqa: F401  (load torch's libgomp before our extension's OpenMP)

from fasttrain import ops
from fasttrain._info import info

__all__ = ["__version__", "info", "ops"]

# Feature packages load on first use (`fasttrain.optim`, ...), so `import fasttrain` stays light and
# never imports their optional dependencies.
_LAZY_SUBPACKAGES = frozenset({"optim", "data", "train", "quant", "export", "tune", "bench", "kernels", "cli"})


_LAZY_NAMES = {"Trainer": "fasttrain.train", "Precision": "fasttrain.train"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"fasttrain.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'fasttrain' has no attribute {name!r}")
