import os

import pytest

# Triton kernels run on CPU tensors through the interpreter when no GPU is present. The flag is
# read when a kernel is decorated, so it must be set before anything imports fasttrain.kernels.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

from fasttrain._ext import _C  # noqa: E402


@pytest.fixture(params=list(_C.available_isas()))
def isa(request):
    """Runs a test once per ISA path this CPU supports, restoring the previous choice afterwards."""
    previous = _C.isa()
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa(previous)
