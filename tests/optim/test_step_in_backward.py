"""fasttrain.optim.AdamW(step_in_backward=True): the update of each parameter runs from its
post-accumulate-grad hook and the gradient is freed; results equal the ordinary step; gradient
accumulation, global clipping and GradScaler are refused with clear errors."""

import pytest
import torch

import fasttrain.optim


def make_models(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3)).to(dtype)
    b = torch.nn.Sequential(torch.nn.Linear(13, 33), torch.nn.GELU(), torch.nn.Linear(33, 3)).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def batch(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 13, generator=g).to(dtype), torch.randn(32, 3, generator=g).to(dtype)


@pytest.mark.parametrize("cfg", [dict(), dict(amsgrad=True, weight_decay=0.1)], ids=["default", "amsgrad-wd"])
def test_matches_torch_adamw(isa, cfg):
    ours_m, ref_m = make_models()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True, **cfg)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False, **cfg)
    sched = torch.optim.lr_scheduler.StepLR(ours, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    for step in range(10):
        x, y = batch(step)
        torch.nn.functional.mse_loss(ours_m(x), y).backward()  # the update happens here
        assert all(p.grad is None for p in ours_m.parameters())  # and the gradients are gone
        ours.step()
        sched.step()
        ref.zero_grad()
        torch.nn.functional.mse_loss(ref_m(x), y).backward()
        ref.step()
        ref_sched.step()
    for p, q in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
    p0, q0 = next(ours_m.parameters()), next(ref_m.parameters())
    torch.testing.assert_close(ours.state[p0]["exp_avg"], ref.state[q0]["exp_avg"], rtol=1e-5, atol=1e-9)


def test_bf16_masters_in_backward_match_flat_step():
    a_m, b_m = make_models(1, torch.bfloat16)
    a = fasttrain.optim.AdamW(a_m.parameters(), lr=1e-2, master_weights=True, step_in_backward=True)
    b = fasttrain.optim.AdamW(b_m.parameters(), lr=1e-2, master_weights=True)
    for step in range(5):
        x, y = batch(step, torch.bfloat16)
        torch.nn.functional.mse_loss(a_m(x), y).backward()
        a.step()
        b.zero_grad()
        torch.nn.functional.mse_loss(b_m(x), y).backward()
        b.step()
    for p, q in zip(a_m.parameters(), b_m.parameters()):
        assert torch.equal(a.state[p]["master"], b.state[q]["master"])


def test_gradient_accumulation_raises():
    m, _ = make_models()
    opt = fasttrain.optim.AdamW(m.parameters(), step_in_backward=True)
    x, y = batch(0)
    torch.nn.functional.mse_loss(m(x), y).backward()
    with pytest.raises(RuntimeError, match="Gradient accumulation"):
        torch.nn.functional.mse_loss(m(x), y).backward()
    opt.zero_grad()  # ends the iteration: the next backward is fine
    torch.nn.functional.mse_loss(m(x), y).backward()


def test_refuses_global_clipping_and_grad_scaler():
    m, _ = make_models()
    with pytest.raises(ValueError, match="max_grad_norm"):
        fasttrain.optim.AdamW(m.parameters(), step_in_backward=True, max_grad_norm=1.0)
    opt = fasttrain.optim.AdamW(m.parameters(), step_in_backward=True)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batch(0)
    scaler.scale(torch.nn.functional.mse_loss(m(x), y)).backward()
    with pytest.raises(RuntimeError, match="GradScaler"):
        scaler.step(opt)


def test_state_dict_round_trip():
    a_m, b_m = make_models(2)
    a = fasttrain.optim.AdamW(a_m.parameters(), lr=1e-2, step_in_backward=True)
    for step in range(3):
        x, y = batch(step)
        torch.nn.functional.mse_loss(a_m(x), y).backward()
        a.step()
    b_m.load_state_dict(a_m.state_dict())
    b = fasttrain.optim.AdamW(b_m.parameters(), lr=1e-2, step_in_backward=True)
    b.load_state_dict(a.state_dict())
    for step in range(3, 6):
        x, y = batch(step)
        for m, o in ((a_m, a), (b_m, b)):
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for p, q in zip(a_m.parameters(), b_m.parameters()):
        assert torch.equal(p, q)
