"""fasttrain.optim.AdamW with torch.amp.GradScaler (unscale inside the fused pass, skip on inf)
and with global-norm clipping (max_grad_norm), against torch.optim.AdamW(foreach=False) driven the
usual way (GradScaler / torch.nn.utils.clip_grad_norm_)."""

import pytest
import torch

import fasttrain.optim


def make_models(seed=0):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    b = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 13, generator=g), torch.randn(32, 3, generator=g)


def assert_models_close(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)


def test_grad_scaler_matches_torch_and_skips_inf_steps(isa):
    ours_m, ref_m = make_models()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3) for _ in range(2)]
    for step in range(12):
        x, y = batch(step)
        for m, o, s in ((ours_m, ours, scalers[0]), (ref_m, ref, scalers[1])):
            o.zero_grad()
            s.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
            if step in (4, 5):  # an overflow: the step must be skipped and the scale reduced
                next(m.parameters()).grad[0, 0] = float("inf")
            before = [p.detach().clone() for p in m.parameters()]
            s.step(o)
            s.update()
            if step in (4, 5):
                assert all(torch.equal(p, q) for p, q in zip(before, m.parameters()))
    assert scalers[0].get_scale() == scalers[1].get_scale()
    assert_models_close(ours_m, ref_m)
    p0 = next(ours_m.parameters())
    assert ours.state[p0]["step"].item() == ref.state[next(ref_m.parameters())]["step"].item() == 10


def test_grad_scaler_after_manual_unscale(isa):
    ours_m, ref_m = make_models(1)
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    for step in range(5):
        x, y = batch(step)
        for m, o, s in ((ours_m, ours, scalers[0]), (ref_m, ref, scalers[1])):
            o.zero_grad()
            s.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
            s.unscale_(o)  # e.g. to look at the grads: step() must not unscale twice
            s.step(o)
            s.update()
    assert_models_close(ours_m, ref_m)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipping", "no-clipping"])
def test_max_grad_norm_matches_clip_grad_norm_then_step(isa, max_norm):
    ours_m, ref_m = make_models(2)
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, max_grad_norm=max_norm)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    for step in range(10):
        x, y = batch(step)
        for m, o in ((ours_m, ours), (ref_m, ref)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref_m.parameters(), max_norm)
        ours.step()
        ref.step()
        torch.testing.assert_close(ours.last_grad_norm, norm, rtol=1e-5, atol=0)
    assert_models_close(ours_m, ref_m)


def test_max_grad_norm_with_grad_scaler(isa):
    ours_m, ref_m = make_models(3)
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, max_grad_norm=1e-2)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    for step in range(6):
        x, y = batch(step)
        for m, o, s in ((ours_m, ours, scalers[0]), (ref_m, ref, scalers[1])):
            o.zero_grad()
            s.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
        scalers[1].unscale_(ref)
        torch.nn.utils.clip_grad_norm_(ref_m.parameters(), 1e-2)
        for o, s in ((ours, scalers[0]), (ref, scalers[1])):
            s.step(o)
            s.update()
    assert_models_close(ours_m, ref_m)


def test_grads_are_left_unscaled_and_unclipped():
    # The fused pass reads the grads through a multiplier and never writes them: what backward left
    # is still there after step() (torch's clip_grad_norm_ would have rewritten them).
    m, _ = make_models()
    opt = fasttrain.optim.AdamW(m.parameters(), max_grad_norm=1e-6)
    x, y = batch(0)
    torch.nn.functional.mse_loss(m(x), y).backward()
    before = [p.grad.clone() for p in m.parameters()]
    opt.step()
    assert all(torch.equal(b, p.grad) for b, p in zip(before, m.parameters()))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_invalid_max_grad_norm(bad):
    with pytest.raises(ValueError, match="Invalid max_grad_norm"):
        fasttrain.optim.AdamW(torch.nn.Linear(2, 2).parameters(), max_grad_norm=bad)
