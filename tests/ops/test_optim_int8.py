"""fasttrain.ops.adamw_int8_step_ (fasttrain::adamw_int8_, blockwise 8-bit AdamW states) against
fasttrain.ops.reference.adamw_int8_reference on every ISA path: odd sizes around the 256-element block
and the 16/8-lane vectors, several steps, hyperparameter variants, the code maps' properties, thread
count independence and bad input."""

import pytest
import torch

from fasttrain.ops import adamw_int8_step_
from fasttrain.ops.reference import (
    adamw_int8_reference,
    dequantize_int8_states_reference,
    quantize_int8_states_reference,
)

SIZES = [1, 7, 255, 256, 257, 4099, 100003]


def make_state(n, seed=0):
    """Param, grad and quantized states whose magnitudes spread over several decades (as real ones do)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g)
    grad = torch.randn(n, generator=g) * 1e-2 * torch.exp(torch.randn(n, generator=g))
    m = torch.randn(n, generator=g) * 1e-2 * torch.exp(2 * torch.randn(n, generator=g))
    v = torch.rand(n, generator=g) * 1e-4 * torch.exp(4 * torch.randn(n, generator=g))
    return [p, grad, *quantize_int8_states_reference(m, v)]


CONFIGS = [
    dict(weight_decay=0.01),
    dict(weight_decay=0.1, maximize=True, grad_scale=0.5),
    dict(weight_decay=0.0, beta1=0.3),  # lerp's other branch (weight >= 0.5)
]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_adamw_int8_matches_reference(isa, n, cfg):
    bufs = make_state(n)
    ours, ref = [t.clone() for t in bufs], [t.clone() for t in bufs]
    for step in (1, 2, 3):
        adamw_int8_step_(*ours, lr=1e-3, step=step, **cfg)
        adamw_int8_reference(*ref, lr=1e-3, step=step, **cfg)
        # The new states are the same fp32 operations on the same values (correctly rounded sqrt, no
        # FMA contraction), and the code rounding is exact: codes and scales are bit-identical.
        for name, o, r in zip(("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"), ours[2:], ref[2:]):
            assert torch.equal(o, r), name
    # param: AVX-512 takes 1/denominator from a refined reciprocal (a few ulp of the update term: these
    # random states make updates up to ~100 lr), then the sum rounds to the param's ulp; the scalar and
    # AVX2 paths divide, as the reference does.
    p0 = bufs[0]
    tol = 2 * torch.finfo(torch.float32).eps * ref[0].abs() + 1e-6 * (ref[0] - p0).abs()
    assert ((ours[0] - ref[0]).abs() <= tol).all()


def test_adamw_int8_same_result_for_any_thread_count(monkeypatch):
    bufs = make_state(65536 * 3 + 300)  # several OpenMP chunks, a ragged last block
    outs = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("FASTTRAIN_NUM_THREADS", threads)
        b = [t.clone() for t in bufs]
        for step in (1, 2):
            adamw_int8_step_(*b, lr=1e-3, step=step)
        outs.append(b)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


def test_codes_round_to_nearest_sqrt_level():
    """The maps: |m| and sqrt(v) are stored on a square-root grid, so the relative error of a value x
    of the block max M is at most ~1 / (127 sqrt(x / M)) for m (1 / (255 sqrt(.)) for sqrt(v))."""
    g = torch.Generator().manual_seed(1)
    n = 256 * 40
    m = torch.randn(n, generator=g) * torch.exp(3 * torch.randn(n, generator=g))
    v = torch.exp(6 * torch.randn(n, generator=g))
    qm, qv, am, as_ = quantize_int8_states_reference(m, v)
    m2, v2 = dequantize_int8_states_reference(qm, qv, am, as_)
    big_m = torch.repeat_interleave(am, 256)
    big_s = torch.repeat_interleave(as_, 256)
    # half a grid step: |sqrt(|m|/M) - q/127| <= 1/254, so ||m| - |m2|| <= M (2 sqrt(|m|/M) / 254 + 1/254^2)
    bound_m = big_m * (2 * (m.abs() / big_m).sqrt() / 254 + 1 / 254**2) * (1 + 1e-5)
    assert ((m - m2).abs() <= bound_m).all()
    s, s2 = v.sqrt(), v2.sqrt()
    bound_s = big_s * (2 * (s / big_s).sqrt() / 510 + 1 / 510**2)
    # below half the first level a nonzero value is lifted to level 1 instead (never to zero)
    lifted = s < big_s / 510**2
    assert ((s - s2).abs() <= bound_s * (1 + 1e-5))[~lifted].all()
    assert (qv > 0).all() and (v2 > 0).all()
    assert torch.equal(torch.sign(m2), torch.sign(m) * (qm != 0))


def test_zero_state_stays_zero_and_nan_poisons_its_block(isa):
    n = 600
    p, grad = torch.randn(n), torch.zeros(n)
    qm, qv = torch.zeros(n, dtype=torch.int8), torch.zeros(n, dtype=torch.uint8)
    am, as_ = torch.zeros(3), torch.zeros(3)
    adamw_int8_step_(p, grad, qm, qv, am, as_, lr=1e-3, step=1)
    assert not qm.any() and not qv.any() and not am.any() and not as_.any()
    grad[300] = float("nan")
    ours = [p.clone(), grad, qm.clone(), qv.clone(), am.clone(), as_.clone()]
    ref = [p.clone(), grad, qm.clone(), qv.clone(), am.clone(), as_.clone()]
    adamw_int8_step_(*ours, lr=1e-3, step=2)
    adamw_int8_reference(*ref, lr=1e-3, step=2)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-8, equal_nan=True)
    for scale in ours[4:]:  # a NaN grad makes m and v NaN: both scales of that block only
        assert scale[1].isnan() and not scale[[0, 2]].isnan().any()
    assert not ours[2][256:512].any()  # the poisoned block stores zero codes (and reads back as NaN)


# --- bad input ----------------------------------------------------------------------------------


def bufs8(n=300):
    p, g = torch.zeros(n), torch.zeros(n)
    return [p, g, torch.zeros(n, dtype=torch.int8), torch.zeros(n, dtype=torch.uint8), torch.zeros(2), torch.zeros(2)]


@pytest.mark.parametrize(
    "i, value, exc, match",
    [
        (2, torch.zeros(300), TypeError, "exp_avg.*float32"),
        (3, torch.zeros(300, dtype=torch.int8), TypeError, "exp_avg_sq.*int8"),
        (0, torch.zeros(300, dtype=torch.bfloat16), TypeError, "param.*bfloat16"),
        (4, torch.zeros(3), ValueError, "exp_avg_scale.*3 elements.*= 2 scales"),
        (5, torch.zeros(2, dtype=torch.float64), TypeError, "exp_avg_sq_scale.*float32"),
        (1, torch.zeros(299), ValueError, "grad.*299 elements"),
        (1, torch.zeros(300).to_sparse(), TypeError, "sparse"),
    ],
    ids=["fp32-codes", "signed-v-codes", "bf16-param", "scale-count", "fp64-scale", "size", "sparse"],
)
def test_adamw_int8_bad_buffers(i, value, exc, match):
    b = bufs8()
    b[i] = value
    with pytest.raises(exc, match=match):
        adamw_int8_step_(*b, lr=1e-3, step=1)


def test_adamw_int8_bad_hyperparameters():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        adamw_int8_step_(*bufs8(), lr=-1.0, step=1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        adamw_int8_step_(*bufs8(), lr=1e-3, step=0)
    b = bufs8()
    with pytest.raises(ValueError, match="share memory"):
        adamw_int8_step_(b[0], b[1], b[2], b[3], b[4], b[4], lr=1e-3, step=1)
