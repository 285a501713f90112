"""fasttrain.ops.attention vs the pure-torch reference (attention_reference /
attention_backward_reference) in fp64, on every ISA, across dtypes and odd sizes; and vs torch's own
scaled_dot_product_attention in the same dtype (rule: at most 2x its error)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from fasttrain.ops import attention
from fasttrain.ops.reference import attention_backward_reference, attention_reference

# (B, H, T, D): T = 1, 7, 64 (one block), 65 and 130 (a partial block past the diagonal), D not a
# multiple of the 16-lane vector, and one long sequence (several blocks, a 4099-wide score row).
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (1, 2, 64, 16), (1, 2, 65, 33), (2, 1, 130, 64), (1, 1, 4099, 7)]


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.detach().abs().max().clamp_min(1e-30)
    return float((x.detach().double() - ref.detach()).abs().max() / scale)


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
    return q, k, v, do


def _ours(q, k, v, do, dtype, causal):
    qs, ks, vs = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = attention(qs, ks, vs, is_causal=causal)
    return (out, *torch.autograd.grad(out, (qs, ks, vs), do.to(dtype)))


def _torch_sdpa(q, k, v, do, dtype, causal):
    qs, ks, vs = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
    return (out, *torch.autograd.grad(out, (qs, ks, vs), do.to(dtype)))


def _exact(q, k, v, do, causal):
    out = attention_reference(q, k, v, causal)
    return (out, *attention_backward_reference(do, q, k, v, causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_fp64_reference_fp32(isa, shape, causal):
    q, k, v, do = _inputs(shape, torch.float64)
    exact = _exact(q, k, v, do, causal)
    ours = _ours(q, k, v, do, torch.float32, causal)
    theirs = _torch_sdpa(q, k, v, do, torch.float32, causal)
    for name, o, t, e in zip(("out", "grad_q", "grad_k", "grad_v"), ours, theirs, exact):
        assert o.dtype == torch.float32
        # near fp32's resolution (sums of up to 4099 terms), and never far behind torch's own fp32 kernel
        assert _rel_err(o, e) <= max(2e-6, 2 * _rel_err(t, e)), f"{name}: {_rel_err(o, e):.2e} torch {_rel_err(t, e):.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: "x".join(map(str, s)))
def test_low_precision_error_at_most_twice_torch(isa, shape, causal, dtype):
    q, k, v, do = _inputs(shape, torch.float64, seed=1)
    # inputs exactly representable in the low dtype, so both sides start from the same values
    q, k, v, do = (t.to(dtype).double() for t in (q, k, v, do))
    exact = _exact(q, k, v, do, causal)
    ours = _ours(q, k, v, do, dtype, causal)
    theirs = _torch_sdpa(q, k, v, do, dtype, causal)
    ulp = torch.finfo(dtype).eps
    for name, o, t, e in zip(("out", "grad_q", "grad_k", "grad_v"), ours, theirs, exact):
        assert o.dtype == dtype
        assert _rel_err(o, e) <= 2 * _rel_err(t, e) + ulp / 4, f"{name}: ours {_rel_err(o, e):.2e} torch {_rel_err(t, e):.2e}"


def test_strided_inputs_and_output_layout(isa):
    """q, k, v as the GPT makes them (views of one qkv projection) give the contiguous inputs' result;
    the output is (B, H, T, D) laid out as (B, T, H, D), as torch's CPU flash kernel returns it."""
    B, T, H, D = 2, 40, 3, 24
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.bfloat16)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
    out = attention(q, k, v)
    ref = attention(*(t.contiguous() for t in (q, k, v)))
    assert torch.equal(out, ref)
    assert out.shape == (B, H, T, D) and out.transpose(1, 2).is_contiguous()
    # a last dimension that is not contiguous is copied first
    qt = torch.randn(B, H, D, T).transpose(-1, -2)
    assert torch.equal(attention(qt, qt, qt), attention(*(qt.contiguous(),) * 3))


def test_scale_argument_matches_torch():
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64) for _ in range(3))
    out = attention(q.float(), k.float(), v.float(), scale=0.3)
    assert _rel_err(out, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)) < 2e-6


def test_nan_input_gives_nan_rows_like_torch():
    q, k, v = (torch.randn(1, 1, 6, 4) for _ in range(3))
    k[0, 0, 2, 1] = float("nan")  # key 2: queries 2.. see it (causal), queries 0, 1 do not
    out = attention(q, k, v)
    assert torch.isnan(out[0, 0, 2:]).all() and torch.isfinite(out[0, 0, :2]).all()
    assert torch.equal(torch.isnan(out), torch.isnan(F.scaled_dot_product_attention(q, k, v, is_causal=True)))


def test_compiles_without_graph_break():
    q, k, v = (torch.randn(1, 2, 17, 8, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        return attention(q, k, v).sum()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    loss.backward()
    expected = attention_reference(q.detach(), k.detach(), v.detach()).sum()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_tracing_for_export_uses_sdpa():
    """Exporters (ONNX, TorchScript) know SDPA, not fasttrain's op: a traced model records SDPA."""
    q, k, v = (torch.randn(1, 2, 9, 8) for _ in range(3))
    with warnings.catch_warnings():
        # torch.jit.trace is deprecated (a DeprecationWarning in torch 2.13, a FutureWarning in 2.14); the
        # TorchScript ONNX exporter still traces with it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(lambda q, k, v: attention(q, k, v), (q, k, v))
    assert "scaled_dot_product_attention" in str(traced.graph) and "fasttrain::" not in str(traced.graph)
    torch.testing.assert_close(traced(q, k, v), attention(q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (lambda: attention(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)), "must be 4-D"),
    (lambda: attention(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2)), "one shape"),
    (lambda: attention(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2).double(), torch.randn(1, 1, 4, 2)), "share a dtype"),
    (lambda: attention(*(torch.zeros(1, 1, 4, 2, dtype=torch.int32),) * 3), "not supported on CPU"),
    (lambda: attention(*(torch.randn(1, 1, 4, 2),) * 3, scale=float("inf")), "scale must be finite"),
    (lambda: attention([1.0], torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2)), "must be a torch.Tensor"),
])
def test_bad_input_raises_clear_error(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        bad()


def test_charlm_gpt_attention_choice():
    """The example GPT computes the same loss and gradients with fasttrain's kernel as with SDPA (fp32,
    to fp32 accuracy), falls back to SDPA with dropout in training, and rejects unknown choices."""
    from fasttrain.examples.charlm import GPT, GPTConfig

    small = dict(n_layer=2, n_head=2, n_embd=32, block_size=24)
    torch.manual_seed(0)
    a, b = GPT(GPTConfig(**small)), GPT(GPTConfig(**small, attention="torch"))
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 256, (3, 24))
    la, lb = a(idx, idx), b(idx, idx)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="'fasttrain' or 'torch'"):
        GPTConfig(attention="flash")
