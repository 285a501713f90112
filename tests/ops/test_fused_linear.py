"""fasttrain.ops.adamw_linear_step_ (fasttrain::adamw_linear_): AdamW on a Linear weight whose gradient
grad_output.T @ input is computed inside the pass, against the reference (matmul, then AdamW) on
every ISA path, for odd shapes, and bad input."""

import pytest
import torch

from fasttrain.ops import adamw_linear_step_, adamw_step_
from fasttrain.ops.reference import adamw_linear_reference

EPS32 = torch.finfo(torch.float32).eps
# (rows, out_features, in_features): 1-element weight, odd widths (not multiples of 8/16/64 lanes),
# a row longer than the 4096-element chunk, chunks that straddle rows, the 64-row limit.
SHAPES = [(1, 1, 1), (7, 33, 129), (8, 5, 4099), (3, 700, 9), (64, 17, 63), (2, 300, 513)]


def make(rows, out_f, in_f, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(out_f, in_f, generator=g)
    m = torch.randn(out_f, in_f, generator=g) * 1e-2
    v = torch.rand(out_f, in_f, generator=g) * 1e-4
    mx = v + torch.rand(out_f, in_f, generator=g) * 1e-4
    x, dy = torch.randn(rows, in_f, generator=g), torch.randn(rows, out_f, generator=g) * 1e-2
    return p, m, v, mx, x, dy


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cfg", [dict(), dict(amsgrad=True, maximize=True, weight_decay=0.1, grad_scale=0.5)],
                         ids=["default", "amsgrad-maximize-scaled"])
def test_matches_reference(isa, shape, cfg):
    p, m, v, mx, x, dy = make(*shape)
    ams = cfg.get("amsgrad", False)
    kw = dict(lr=1e-3, step=4, **cfg)
    ours = [t.clone() for t in (p, m, v, mx)]
    adamw_linear_step_(*ours[:3], x, dy, ours[3] if ams else None, **kw)
    same = [t.clone() for t in (p, m, v, mx)]  # plain torch in fp32: the yardstick for the tolerance
    adamw_linear_reference(*same[:3], x, dy, same[3] if ams else None, **kw)
    r = [t.double() for t in (p, m, v, mx)]
    adamw_linear_reference(*r[:3], x.double(), dy.double(), r[3] if ams else None, **kw)
    for name, o, s, ref in zip(("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ours, same, r):
        err, torch_err = (o.double() - ref).abs().max().item(), (s.double() - ref).abs().max().item()
        assert err <= max(2 * torch_err, EPS32 * ref.abs().max().item()), f"{name}: {err:.3g} vs torch {torch_err:.3g}"


def test_isas_agree_bit_for_bit():
    """Every ISA sums each element's rows in the same fma order, so the gradient, and with it the new
    exp_avg and exp_avg_sq, are identical; the param differs by the ISAs' reciprocal (see optim_avx512)."""
    from fasttrain._ext import _C

    previous, results = _C.isa(), []
    try:
        for isa in _C.available_isas():
            _C.set_isa(isa)
            p, m, v, _, x, dy = make(9, 37, 1031, seed=5)
            adamw_linear_step_(p, m, v, x, dy, lr=1e-3, step=2)
            results.append((p, m, v))
    finally:
        _C.set_isa(previous)
    for other in results[1:]:
        assert torch.equal(results[0][1], other[1]) and torch.equal(results[0][2], other[2])
        torch.testing.assert_close(results[0][0], other[0], rtol=1e-6, atol=1e-9)


def test_same_as_adamw_step_with_the_matmul_gradient():
    p, m, v, _, x, dy = make(8, 64, 300, seed=2)
    a, b = [t.clone() for t in (p, m, v)], [t.clone() for t in (p, m, v)]
    adamw_linear_step_(*a, x, dy, lr=1e-2, step=1)
    adamw_step_(b[0], dy.t() @ x, b[1], b[2], lr=1e-2, step=1)
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bad, match", [
    (lambda p, m, v, x, dy: (p, m, v, x[:, :-1], dy), r"`input` must be \(rows, 129\)"),
    (lambda p, m, v, x, dy: (p, m, v, x, dy[:-1]), "`input` has 7 rows but `grad_output` has 6"),
    (lambda p, m, v, x, dy: (p, m, v, x.double(), dy), "`input` has dtype torch.float64"),
    (lambda p, m, v, x, dy: (p, m, v, x.t().contiguous().t(), dy), "`input` is not contiguous"),
    (lambda p, m, v, x, dy: (p.reshape(-1), m.reshape(-1), v.reshape(-1), x, dy), "must be a 2-D"),
    (lambda p, m, v, x, dy: (p, m[:1], v, x, dy), "`exp_avg` has 129 elements"),
    (lambda p, m, v, x, dy: (p, p, v, x, dy), "share memory"),
    (lambda p, m, v, x, dy: (p, m, v, torch.randn(65, 129), torch.randn(65, 33)), "1 to 64"),
])
def test_bad_input_is_named(bad, match):
    p, m, v, _, x, dy = make(7, 33, 129)
    with pytest.raises((TypeError, ValueError), match=match):
        adamw_linear_step_(*bad(p, m, v, x, dy), lr=1e-3, step=1)


def test_amsgrad_needs_max_state():
    p, m, v, _, x, dy = make(2, 3, 5)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        adamw_linear_step_(p, m, v, x, dy, lr=1e-3, step=1, amsgrad=True)
