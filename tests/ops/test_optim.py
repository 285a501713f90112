"""fasttrain.ops.adamw_step_ (fasttrain::adamw_) and adamw_multi_step_ (fasttrain::adamw_multi_) against
fasttrain.ops.reference.adamw_reference / adamw_multi_reference on every ISA path, for odd sizes (1, 7, 4099, non-multiples of 8 and 16 lanes), amsgrad / maximize /
weight decay, and bad input."""

import pytest
import torch

from fasttrain.ops import adamw_multi_step_, adamw_step_
from fasttrain.ops.optim import touch_4r3w_
from fasttrain.ops.reference import adamw_multi_reference, adamw_reference

SIZES = [1, 7, 17, 4099, 65537 * 2 + 5]  # the last spans several OpenMP chunks with a ragged end
EPS32 = torch.finfo(torch.float32).eps


def make_state(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g)
    grad = torch.randn(n, generator=g) * 1e-2
    m = torch.randn(n, generator=g) * 1e-2
    v = torch.rand(n, generator=g) * 1e-4
    mx = v + torch.rand(n, generator=g) * 1e-4
    return p, grad, m, v, mx


CONFIGS = [
    dict(weight_decay=0.01, amsgrad=False, maximize=False),
    dict(weight_decay=0.0, amsgrad=True, maximize=False),
    dict(weight_decay=0.1, amsgrad=True, maximize=True),
    dict(weight_decay=0.01, amsgrad=False, maximize=False, beta1=0.3),  # lerp's other branch (weight >= 0.5)
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_adamw_step_matches_reference(isa, n, cfg):
    bufs = make_state(n)
    ours = [t.clone() for t in bufs]
    same = [t.clone() for t in bufs]  # plain torch in fp32: the yardstick for the tolerance
    ref64 = [t.double() for t in bufs]
    kw = dict(lr=1e-3, eps=1e-8, step=5, **cfg)
    adamw_step_(*ours[:4], ours[4] if cfg["amsgrad"] else None, **kw)
    adamw_reference(*same[:4], same[4] if cfg["amsgrad"] else None, **kw)
    adamw_reference(*ref64[:4], ref64[4] if cfg["amsgrad"] else None, **kw)
    for name, o, s, r in zip(("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ours, same, ref64):
        # Rule: max error vs fp64 at most 2x plain torch's max fp32 error, floored at 1 ulp of the
        # largest value (torch can be exact by luck on a tiny tensor).
        err, torch_err = (o.double() - r).abs().max().item(), (s.double() - r).abs().max().item()
        assert err <= max(2 * torch_err, EPS32 * r.abs().max().item()), f"{name}: {err:.3g} vs torch {torch_err:.3g}"
        # and close to plain torch elementwise: atol is ~1 ulp of the update term (|update| <= ~lr), which
        # AVX-512 computes with a refined reciprocal instead of a division
        torch.testing.assert_close(o, s, rtol=1e-6, atol=1e-9)


def test_adamw_step_first_step_and_zero_state(isa):
    p, grad, *_ = make_state(4099, seed=3)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    ours = [p.clone(), grad, m.clone(), v.clone()]
    ref = [p.clone(), grad, m.clone(), v.clone()]
    adamw_step_(*ours, lr=1e-2, step=1)
    adamw_reference(*ref, lr=1e-2, step=1)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=0)


def test_adamw_step_same_result_for_any_thread_count(monkeypatch):
    bufs = make_state(65537 * 3)
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("FASTTRAIN_NUM_THREADS", threads)
        b = [t.clone() for t in bufs]
        adamw_step_(*b[:4], lr=1e-3, step=2)
        outs.append(b)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sizes", [(7, 4099, 1, 70000), (16384, 256, 65536, 256, 2560, 10), (1,)])
def test_adamw_multi_step_same_result_for_any_thread_count(monkeypatch, sizes):
    """The threads' equal shares cut tensors anywhere (mid-tensor, mid-vector): for 1, 2 and 3 threads
    the result is bit for bit adamw_step_'s on each tensor alone."""
    g = torch.Generator().manual_seed(len(sizes))
    bufs = [[torch.randn(n, generator=g) * s for n in sizes] for s in (1.0, 1.0, 0.1, 0.01)]
    bufs[3] = [t.abs() for t in bufs[3]]
    single = [[t.clone() for t in ts] for ts in bufs]
    monkeypatch.setenv("FASTTRAIN_NUM_THREADS", "1")
    for i in range(len(sizes)):
        adamw_step_(*(ts[i] for ts in single), lr=1e-3, step=2)
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("FASTTRAIN_NUM_THREADS", threads)
        b = [[t.clone() for t in ts] for ts in bufs]
        adamw_multi_step_(*b, lr=1e-3, step=2)
        for ts_out, ts_single in zip(b, single):
            for a, want in zip(ts_out, ts_single):
                assert torch.equal(a, want)


def test_adamw_step_nan_grad_propagates_like_torch(isa):
    p, grad, m, v, mx = make_state(33)
    grad[5] = float("nan")
    ours, ref = [t.clone() for t in (p, grad, m, v, mx)], [t.clone() for t in (p, grad, m, v, mx)]
    adamw_step_(*ours, lr=1e-3, step=2, amsgrad=True)
    adamw_reference(*ref, lr=1e-3, step=2, amsgrad=True)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-12, equal_nan=True)


def test_touch_kernel_adds_c_times_g(isa):
    p, g, m, v, _ = make_state(4099)
    b = [p.clone(), g, m.clone(), v.clone()]
    touch_4r3w_(*b, c=2.0)
    for o, r in zip((b[0], b[2], b[3]), (p, m, v)):
        torch.testing.assert_close(o, r + 2.0 * g)


# --- bad input ----------------------------------------------------------------------------------


def bufs4(n=8):
    return [torch.zeros(n) for _ in range(4)]


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda b: b.__setitem__(1, b[1].to_sparse()), TypeError, "sparse"),
        (lambda b: b.__setitem__(0, torch.zeros(8, dtype=torch.complex64)), TypeError, "complex"),
        (lambda b: b.__setitem__(2, torch.zeros(8, dtype=torch.float64)), TypeError, "exp_avg.*float64"),
        (lambda b: b.__setitem__(3, torch.zeros(16)[::2]), ValueError, "exp_avg_sq.*not contiguous"),
        (lambda b: b.__setitem__(1, torch.zeros(9)), ValueError, "grad.*9 elements"),
        (lambda b: b.__setitem__(2, b[0]), ValueError, "share memory"),
        (lambda b: b.__setitem__(3, torch.zeros(8, device="meta")), ValueError, "meta"),
    ],
    ids=["sparse-grad", "complex-param", "fp64-state", "strided", "size", "alias", "device"],
)
def test_adamw_step_bad_buffers(mutate, exc, match):
    b = bufs4()
    mutate(b)
    with pytest.raises(exc, match=match):
        adamw_step_(*b, lr=1e-3, step=1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=-1.0), "Invalid learning rate"),
        (dict(beta1=1.0), "beta parameter at index 0"),
        (dict(beta2=-0.1), "beta parameter at index 1"),
        (dict(eps=-1e-8), "epsilon"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(step=0), "step must be >= 1"),
    ],
)
def test_adamw_step_bad_hyperparameters(kw, match):
    args = dict(lr=1e-3, step=1) | kw
    with pytest.raises(ValueError, match=match):
        adamw_step_(*bufs4(), **args)


def test_adamw_step_amsgrad_needs_buffer():
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        adamw_step_(*bufs4(), lr=1e-3, step=1, amsgrad=True)


# --- mixed precision ---------------------------------------------------------------------------

LOW = [torch.bfloat16, torch.float16]


# Every (param dtype, state dtype, masters) combination except all-fp32 without masters, which is the
# fp32 path covered by test_adamw_step_matches_reference.
MIXED_CASES = [
    pytest.param(pdt, sdt, use_master, id=f"{str(pdt)[6:]}-{str(sdt)[6:]}-{'master' if use_master else 'no-master'}")
    for pdt in (torch.float32, torch.bfloat16, torch.float16)
    for sdt in (torch.float32, torch.bfloat16)
    for use_master in (False, True)
    if not (pdt == sdt == torch.float32 and not use_master)
]


@pytest.mark.parametrize("n", [1, 7, 4099, 65537 * 2 + 5])
@pytest.mark.parametrize("pdt, sdt, use_master", MIXED_CASES)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["", "amsgrad"])
def test_adamw_step_mixed_matches_reference(isa, n, pdt, sdt, use_master, amsgrad):
    p, grad, m, v, mx = make_state(n, seed=7)
    master = p.clone()
    bufs = [p.to(pdt), grad.to(pdt), m.to(sdt), v.to(sdt), mx.to(sdt) if amsgrad else None]
    ours = [t.clone() if t is not None else None for t in bufs]
    ref = [t.clone() if t is not None else None for t in bufs]
    om, rm = (master.clone(), master.clone()) if use_master else (None, None)
    kw = dict(lr=1e-2, weight_decay=0.1, step=4, amsgrad=amsgrad)
    adamw_step_(*ours, master=om, **kw)
    adamw_reference(*ref, master=rm, **kw)  # plain torch: fp32 math, one rounding per buffer
    r64 = [t.double() if t is not None else None for t in bufs]
    m64 = master.double() if use_master else None
    adamw_reference(*([m64] if use_master else r64[:1]), *r64[1:], **kw)
    if use_master:
        r64[0] = m64
    # Rule: max error vs the fp64 step at most 2x plain torch's, floored at 1 ulp of the storage
    # dtype (torch can be exact by luck on a small tensor).
    for name, o, r, e in zip(("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ours, ref, r64):
        if o is None or name == "grad":
            continue
        err = (o.double() - e).abs().max().item()
        torch_err = (r.double() - e).abs().max().item()
        floor = torch.finfo(o.dtype).eps * e.abs().max().item()
        assert err <= max(2 * torch_err, floor), f"{name}: error {err:.3g} vs plain torch {torch_err:.3g}"
    if use_master:
        err = (om.double() - m64).abs().max().item()
        assert err <= max(2 * (rm.double() - m64).abs().max().item(), EPS32 * m64.abs().max().item())
        assert torch.equal(ours[0], om.to(pdt))  # the param is the master, rounded to nearest even


def test_stochastic_rounding_is_unbiased(isa):
    # 100k copies of one bf16 value; lr * weight_decay shrinks each by a factor that is not a bf16
    # step, zero grads/states make the Adam term exactly 0, so every element rounds the same fp32
    # value y: the mean of the rounded results must be y (3e-5 relative; the std of the mean of
    # 100k roundings is ~0.5 * ulp / sqrt(1e5) ~ 1.2e-5 relative for a value near 1.5).
    n = 100_000
    p = torch.full((n,), 1.5, dtype=torch.bfloat16)
    zeros = [torch.zeros(n, dtype=torch.bfloat16)] + [torch.zeros(n) for _ in range(2)]
    adamw_step_(p, *zeros, lr=1e-3, weight_decay=1.0, step=1, stochastic_rounding=True, seed=42)
    y = torch.tensor(1.5) * torch.tensor(1 - 1e-3)  # fp32, as the kernel computes p * (1 - lr * wd)
    lo, hi = torch.tensor(1.5, dtype=torch.bfloat16).float() - 2**-7, torch.tensor(1.5)
    vals = p.float()
    assert set(vals.unique().tolist()) == {lo.item(), hi.item()}  # only the two neighbours of y
    assert abs(vals.double().mean().item() - y.item()) <= 3e-5 * y.item()
    # round-to-nearest would give hi every time: that is the bias SR removes
    assert (vals == lo).float().mean().item() == pytest.approx((hi - y).item() / (hi - lo).item(), abs=0.01)


def test_stochastic_rounding_is_deterministic_per_seed_and_thread_independent(monkeypatch):
    n = 65537 * 3
    outs = []
    for seed, threads in ((1, "1"), (1, "2"), (2, "2")):
        monkeypatch.setenv("FASTTRAIN_NUM_THREADS", threads)
        p = torch.full((n,), 1.5, dtype=torch.bfloat16)
        adamw_step_(p, torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n), torch.zeros(n), lr=1e-3,
                    weight_decay=1.0, step=1, stochastic_rounding=True, seed=seed)
        outs.append(p)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_stochastic_rounding_keeps_inf_and_nan():
    p = torch.tensor([float("inf"), float("-inf"), float("nan"), 1.0], dtype=torch.bfloat16)
    z = [torch.zeros(4, dtype=torch.bfloat16), torch.zeros(4), torch.zeros(4)]
    adamw_step_(p, *z, lr=1e-3, weight_decay=0.0, step=1, stochastic_rounding=True)
    assert p[0].item() == float("inf") and p[1].item() == float("-inf") and p[2].isnan() and p[3].item() == 1.0


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(stochastic_rounding=True), ValueError, "stochastic_rounding applies to bf16"),
        (dict(master=torch.zeros(8, dtype=torch.bfloat16)), TypeError, "master.*bfloat16"),
        (dict(grad_dtype=torch.bfloat16), TypeError, "grad.*must match"),
        (dict(state_dtype=torch.float16), TypeError, "exp_avg.*float16"),
    ],
    ids=["sr-fp32", "master-dtype", "grad-dtype", "fp16-state"],
)
def test_adamw_step_mixed_bad_input(kw, exc, match):
    p, m, v = torch.zeros(8), torch.zeros(8, dtype=kw.pop("state_dtype", torch.float32)), None
    v = torch.zeros_like(m)
    g = torch.zeros(8, dtype=kw.pop("grad_dtype", torch.float32))
    with pytest.raises(exc, match=match):
        adamw_step_(p, g, m, v, lr=1e-3, step=1, **kw)


def test_eager_path_bumps_versions_and_modes_still_see_the_op():
    """The public op skips the torch.library round trip in plain eager CPU calls (fasttrain/ops/_eager.py):
    autograd must still see the in-place update, and dispatch modes / compile must still see the op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    p, g, m, v = torch.randn(64), torch.randn(64), torch.zeros(64), torch.zeros(64)
    before = p._version, m._version, v._version
    adamw_step_(p, g, m, v, lr=1e-3, step=1.0)
    assert (p._version, m._version, v._version) == tuple(b + 1 for b in before)

    w = torch.randn(8, requires_grad=True)
    leaf = w.detach()
    y = (w * leaf).sum()  # leaf is saved for backward
    adamw_step_(leaf, torch.ones(8), torch.zeros(8), torch.zeros(8), lr=1e-3, step=1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        adamw_step_(p, g, m, v, lr=1e-3, step=2.0)
    assert any("fasttrain.adamw_" in s for s in seen)


# --- adamw_multi_step_: lists of tensors, one call --------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_adamw_multi_step_matches_reference_and_single_tensor_op(isa, cfg):
    """All of SIZES in one call (several pieces per tensor for the largest, a ragged one each): the same
    result, bit for bit, as adamw_step_ on each tensor, and within the rounding rule of the reference."""
    states = [make_state(n, seed=i) for i, n in enumerate(SIZES)]
    lists = lambda: [[t.clone() for t in col] for col in zip(*states)]  # p, grad, m, v, mx lists
    ours, single, ref64 = lists(), lists(), [[t.double() for t in col] for col in zip(*states)]
    kw = dict(lr=1e-3, eps=1e-8, step=5, grad_scale=0.5, **cfg)
    mx = lambda cols: cols[4] if cfg["amsgrad"] else None
    adamw_multi_step_(*ours[:4], mx(ours), **kw)
    for i in range(len(SIZES)):
        adamw_step_(*(c[i] for c in single[:4]), mx(single)[i] if cfg["amsgrad"] else None, **kw)
    adamw_multi_reference(*ref64[:4], mx(ref64), **kw)
    for col in (0, 2, 3, 4):
        for o, s1, r in zip(ours[col], single[col], ref64[col]):
            assert torch.equal(o, s1)
            torch.testing.assert_close(o.double(), r, rtol=1e-6, atol=1e-9)


def test_adamw_multi_step_empty_and_shapes():
    adamw_multi_step_([], [], [], [], lr=1e-3, step=1)  # nothing to do
    p, g = torch.randn(3, 5), torch.randn(3, 5)
    m, v = torch.zeros(3, 5), torch.zeros(3, 5)
    ref = [p.clone(), g, m.clone(), v.clone()]
    adamw_multi_step_([p], [g], [m], [v], lr=1e-2, step=1)
    adamw_reference(*ref, lr=1e-2, step=1)
    torch.testing.assert_close(p, ref[0], rtol=1e-6, atol=1e-9)


def test_adamw_multi_step_bad_input():
    p, g, m, v = (torch.randn(8) for _ in range(4))
    with pytest.raises(ValueError, match="`grads` has 2 tensors but `params` has 1"):
        adamw_multi_step_([p], [g, g], [m], [v], lr=1e-3, step=1)
    with pytest.raises(TypeError, match="`exp_avgs` must be a list of tensors"):
        adamw_multi_step_([p], [g], m, [v], lr=1e-3, step=1)
    with pytest.raises(TypeError, match=r"`grad` has dtype torch.bfloat16.*\(tensor 0 of the lists\)"):
        adamw_multi_step_([p], [g.bfloat16()], [m], [v], lr=1e-3, step=1)
    with pytest.raises(ValueError, match=r"`exp_avg` has 4 elements.*\(tensor 0 of the lists\)"):
        adamw_multi_step_([p], [g], [m[:4]], [v], lr=1e-3, step=1)
    with pytest.raises(ValueError, match="not contiguous"):
        adamw_multi_step_([p], [torch.randn(16)[::2]], [m], [v], lr=1e-3, step=1)
    with pytest.raises(ValueError, match="share memory"):
        adamw_multi_step_([p, p], [g, g], [m, torch.randn(8)], [v, torch.randn(8)], lr=1e-3, step=1)
    with pytest.raises(ValueError, match="amsgrad=True needs `max_exp_avg_sqs`"):
        adamw_multi_step_([p], [g], [m], [v], lr=1e-3, step=1, amsgrad=True)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        adamw_multi_step_([p], [g], [m], [v], lr=-1.0, step=1)
