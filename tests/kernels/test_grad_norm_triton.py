"""Triton multi-tensor norm/clip (fasttrain.kernels.grad_norm). Without a GPU these run on CPU
tensors through TRITON_INTERPRET=1 (set in tests/conftest.py): fp32 and fp16 only, small sizes,
since the interpreter has no bf16 and is slow."""

import math

import pytest
import torch

pytest.importorskip("triton", reason="Triton kernels need `pip install 'fasttrain[triton]'`")

from fasttrain.kernels import grad_norm as tk  # noqa: E402
from fasttrain.ops import clip_grad_norm_, get_total_norm  # noqa: E402
from fasttrain.ops.reference import clip_grad_norm_reference, total_norm_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
SIZES = [[1], [7], [4099], [0, 1, 7, 4099, 16385, 33]]


def make(sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dtype).to(DEVICE) for n in sizes]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: f"{len(s)}x{s[-1]}")
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_total_norm_matches_cpp_and_reference(dtype, sizes, norm_type):
    ts = make(sizes, dtype)
    ours = tk.total_norm(ts, norm_type)
    ref64 = total_norm_reference(ts, norm_type, dtype=torch.float64)
    torch.testing.assert_close(ours.double().cpu(), ref64.cpu(), rtol=2e-6, atol=0)
    cpp = get_total_norm([t.cpu() for t in ts], norm_type)
    torch.testing.assert_close(ours.cpu(), cpp, rtol=2e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_clip_matches_reference_and_cpp(dtype, max_norm):
    sizes = SIZES[-1]
    ours, ref, cpp = make(sizes, dtype), make(sizes, dtype), make(sizes, dtype, seed=0)
    n_ours = tk.clip_grad_norm_(ours, max_norm)
    n_ref = clip_grad_norm_reference(ref, max_norm)
    cpp = [t.cpu() for t in cpp]
    for t in cpp:
        t.grad = None
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in cpp]
    for p, t in zip(params, cpp):
        p.grad = t
    clip_grad_norm_(params, max_norm)
    torch.testing.assert_close(n_ours.cpu(), n_ref.cpu(), rtol=2e-6, atol=0)
    # fp32: same arithmetic up to the norm's last bits; fp16: a norm differing in its last bit may
    # flip a rounding, so one fp16 ulp (torch's default fp16 tolerance).
    tol = {"rtol": 2e-6, "atol": 1e-7} if dtype == torch.float32 else {}
    for a, b, c in zip(ours, ref, cpp):
        torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(a.cpu(), c, **tol)


def test_no_clip_leaves_tensors_unchanged():
    ts = make(SIZES[-1], torch.float32)
    before = [t.clone() for t in ts]
    tk.clip_grad_norm_(ts, 1e9)
    assert all(torch.equal(a, b) for a, b in zip(ts, before))


# inf * 0 = NaN is the intended result (as torch); numpy, under the interpreter, warns about it.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nonfinite_matches_torch(bad, norm_type):
    ours, theirs = make([4099, 7], torch.float32), make([4099, 7], torch.float32)
    ours[1][3] = theirs[1][3] = bad
    n_ours = tk.clip_grad_norm_(ours, 1.0, norm_type)
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in theirs]
    for p, t in zip(params, theirs):
        p.grad = t
    n_theirs = torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type)
    torch.testing.assert_close(n_ours, n_theirs, equal_nan=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, equal_nan=True)
