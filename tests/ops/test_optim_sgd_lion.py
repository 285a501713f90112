"""fasttrain.ops.sgd_step_ / lion_step_ (fasttrain::sgd_, fasttrain::lion_) against
fasttrain.ops.reference.sgd_reference / lion_reference on every ISA path, odd sizes, bad input."""

import pytest
import torch

from fasttrain.ops import lion_step_, sgd_step_
from fasttrain.ops.reference import lion_reference, sgd_reference

SIZES = [1, 7, 17, 4099, 65537 * 2 + 5]


def rand(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) for _ in range(k)]


SGD_CONFIGS = [
    dict(momentum=0.0),
    dict(momentum=0.9, first=True),
    dict(momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_sgd_step_matches_reference(isa, n, cfg):
    p, g, buf = rand(n, 3)
    ours, ref = [p.clone(), g, buf.clone()], [p.clone(), g, buf.clone()]
    sgd_step_(*ours, lr=0.1, **cfg)
    sgd_reference(*ref, lr=0.1, **cfg)
    # Same operations in the same order (FMA where torch's add(alpha=) is one): equal to the last ulp
    # or so; 1e-6 relative leaves room for the one place rounding order may differ.
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cfg", [dict(), dict(weight_decay=0.1, maximize=True), dict(beta1=0.5, beta2=0.9)],
                         ids=["default", "wd-maximize", "betas"])
def test_lion_step_matches_reference(isa, n, cfg):
    p, g, m = rand(n, 3, seed=1)
    m[:3] = 0.0
    g[:3] = 0.0  # sign(0) = 0: those params only decay
    ours, ref = [p.clone(), g, m.clone()], [p.clone(), g, m.clone()]
    lion_step_(*ours, lr=1e-3, **cfg)
    lion_reference(*ref, lr=1e-3, **cfg)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)


def test_lion_nan_grad_like_torch():
    # torch.sign(nan) is 0 on CPU: the param only decays, the momentum becomes NaN (as in the reference)
    p, g, m = rand(9, 3)
    g[4] = float("nan")
    ours, ref = [p.clone(), g, m.clone()], [p.clone(), g, m.clone()]
    lion_step_(*ours, lr=1e-3)
    lion_reference(*ref, lr=1e-3)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, equal_nan=True)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda b: sgd_step_(b[0], b[1], lr=-0.1), ValueError, "Invalid learning rate"),
        (lambda b: sgd_step_(b[0], b[1], lr=0.1, momentum=0.9), ValueError, "needs `momentum_buffer`"),
        (lambda b: sgd_step_(b[0], b[1], b[2], lr=0.1, momentum=0.9, nesterov=True, dampening=0.1), ValueError,
         "Nesterov"),
        (lambda b: sgd_step_(b[0], b[1].to_sparse(), lr=0.1), TypeError, "sparse"),
        (lambda b: sgd_step_(b[0].bfloat16(), b[1], lr=0.1), TypeError, "param.*bfloat16"),
        (lambda b: lion_step_(b[0], b[1], b[0], lr=1e-4), ValueError, "share memory"),
        (lambda b: lion_step_(b[0], b[1], b[2], lr=1e-4, beta1=1.0), ValueError, "beta parameter at index 0"),
        (lambda b: lion_step_(b[0], b[1], torch.zeros(5), lr=1e-4), ValueError, "exp_avg.*5 elements"),
    ],
    ids=["sgd-lr", "sgd-no-buffer", "sgd-nesterov", "sgd-sparse", "sgd-bf16", "lion-alias", "lion-beta", "lion-size"],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(rand(8, 3))
