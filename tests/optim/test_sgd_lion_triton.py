"""fasttrain.optim.SGD / Lion on their Triton path (the CUDA path) against their C++ path and torch.

Without a GPU the Triton path runs on CPU tensors through the interpreter (the private switch
`fasttrain.optim._flat._BACKEND = "triton"`, TRITON_INTERPRET=1 from tests/conftest.py); with a GPU the
same tests run on CUDA. Both paths do the same fp32 operations and FMAs (kernels/optim.py, csrc/optim/
optim_elem.h); rtol 1e-6 leaves room for an FMA that some Triton versions' interpreter rounds twice."""

import copy

import pytest
import torch

pytest.importorskip("triton", reason="the Triton path needs `pip install 'fasttrain[triton]'`")

import fasttrain.optim  # noqa: E402
from _optim_backend import optim_backend  # noqa: E402
from _sync import SyncCounter  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {
    "sgd": (fasttrain.optim.SGD, dict(lr=0.05)),
    "sgd-momentum-wd": (fasttrain.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "sgd-nesterov-maximize": (fasttrain.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    "lion": (fasttrain.optim.Lion, dict(lr=1e-3)),
    "lion-wd-maximize": (fasttrain.optim.Lion, dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1, maximize=True)),
}


def tiny(device, seed=0):
    torch.manual_seed(seed)
    # odd sizes (7, 37, 1): the flat buffers have padding and a program ends mid-block
    return torch.nn.Sequential(torch.nn.Linear(7, 37), torch.nn.GELU(), torch.nn.Linear(37, 1)).to(device)


def run(cls, kw, device, backend, steps=5, drop=None, model=None, opt=None):
    """`steps` steps on fixed random grads; drop=i: parameter i has no gradient at step 1 (per-tensor path)."""
    model = model if model is not None else tiny(device)
    if opt is None:
        with optim_backend(backend):
            opt = cls(model.parameters(), **kw)
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        for i, p in enumerate(model.parameters()):
            grad = torch.randn(p.shape, generator=g).to(device)
            if drop is not None and s == 1 and i == drop:
                p.grad = None
            else:
                p.grad = grad
        opt.step()
    return model, opt


def assert_close(a, b):
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x.detach().cpu(), y.detach().cpu(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("drop", [None, 1], ids=["flat", "per-tensor"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_cpp(case, drop):
    cls, kw = CASES[case]
    ours, opt = run(cls, kw, DEVICE, "triton", drop=drop)
    assert all(fg.triton for fg in opt._flat)
    ref, _ = run(cls, kw, "cpu", "auto", drop=drop)
    assert_close(ours, ref)


@pytest.mark.parametrize("case", ["sgd-momentum-wd", "sgd-nesterov-maximize"])
def test_sgd_matches_torch(case):
    """Against torch.optim.SGD(foreach=False) on the same device: the first step sets the momentum
    buffer to the gradient, later steps follow torch's formula."""
    cls, kw = CASES[case]
    ours, _ = run(cls, kw, DEVICE, "triton", steps=20)
    model = tiny(DEVICE)
    ref, _ = run(None, None, DEVICE, None, steps=20, model=model,
                 opt=torch.optim.SGD(model.parameters(), foreach=False, **kw))
    for x, y in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(x.detach().cpu(), y.detach().cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("drop", [None, 1], ids=["flat", "per-tensor"])
@pytest.mark.parametrize("case", ["sgd-momentum-wd", "lion-wd-maximize"])
def test_no_host_sync_per_step(case, drop):
    cls, kw = CASES[case]
    model = tiny(DEVICE)
    with optim_backend("triton"):
        opt = cls(model.parameters(), **kw)
    for s in range(3):
        for i, p in enumerate(model.parameters()):
            p.grad = None if (drop == i and s == 1) else torch.randn_like(p)
        with SyncCounter() as counter:
            opt.step()
        assert counter.count == 0, f"step {s}: {counter.count} host syncs"


@pytest.mark.parametrize("case", ["sgd-momentum-wd", "lion-wd-maximize"])
def test_state_dict_round_trip(case):
    """Saved after 3 steps, loaded into a fresh optimizer (Triton path), 2 more steps on both: identical.
    For SGD this also checks the loaded step count: a loaded buffer is not re-initialised from the grad."""
    cls, kw = CASES[case]
    model, opt = run(cls, kw, DEVICE, "triton", steps=3)
    model2 = copy.deepcopy(model)
    with optim_backend("triton"):
        opt2 = cls(model2.parameters(), **kw)
    opt2.load_state_dict(opt.state_dict())
    for m, o in ((model, opt), (model2, opt2)):
        run(cls, kw, DEVICE, None, steps=2, model=m, opt=o)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
