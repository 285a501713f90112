"""Which kernels fasttrain's optimizers build their groups with, for the Triton-path tests."""

from contextlib import contextmanager

from fasttrain.optim import _flat


@contextmanager
def optim_backend(name: str):
    """Optimizers constructed inside use `name` ("triton": the Triton kernels, on CPU tensors through the
    interpreter; "auto": C++ for CPU, Triton for CUDA). The choice is made when a group is built."""
    saved, _flat._BACKEND = _flat._BACKEND, name
    try:
        yield
    finally:
        _flat._BACKEND = saved
