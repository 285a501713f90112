"""`fasttrain.info()`: what this installation will run, for bug reports and benchmark logs."""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib import metadata

__all__ = ["info", "format_info"]


def triton_installed() -> bool:
    """Whether `import triton` can work, without importing it (slow, and never needed by `import fasttrain`)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # blocked, or a broken partial install
        return False


def _triton_status(cuda: bool) -> str:
    if not triton_installed():
        return "not installed (pip install 'fasttrain[triton]')"
    version = metadata.version("triton")
    if cuda:
        return f"{version} (usable on CUDA)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return f"{version} (interpreter on CPU: TRITON_INTERPRET=1)"
    return f"{version} (installed, no CUDA device: GPU kernels unused)"


def info() -> dict[str, object]:
    """Version, active ISA path, thread counts, torch/Triton/CUDA availability.

    Returns a plain dict (stable keys) so it can be logged as JSON.
    """
    import torch

    import fasttrain
    from fasttrain._ext import _C, num_threads

    cuda = torch.cuda.is_available()
    return {
        "fasttrain": fasttrain.__version__,
        "isa": _C.isa(),
        "isa_available": list(_C.available_isas()),
        "isa_override": os.environ.get("FASTTRAIN_ISA"),
        "threads": num_threads(),
        "omp_max_threads": _C.omp_max_threads(),
        "compiler": _C.compiler,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "triton": _triton_status(cuda),
        "machine": platform.machine(),
    }


def format_info(d: dict[str, object] | None = None) -> str:
    d = info() if d is None else d
    width = max(map(len, d))
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items())
