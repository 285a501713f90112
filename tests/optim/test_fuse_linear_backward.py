"""AdamW(step_in_backward=True).fuse_linear_backward(model): Linear weights are updated from inside
their backward with the weight gradient computed in the update pass (never stored). Results equal
torch.optim.AdamW; several calls of one layer, forwards without backward, big inputs, autocast,
tied weights, copies and removal behave as documented."""

import copy
import pickle

import pytest
import torch
from torch import nn

import fasttrain
import fasttrain.optim
from fasttrain.optim._fused_linear import FusedLinear


class Twice(nn.Module):
    """One Linear called twice per forward (weights shared across calls)."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(13, 24), nn.Linear(24, 24), nn.Linear(24, 3)

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        return self.out(torch.tanh(self.mid(h)))


def mlp():
    return nn.Sequential(nn.Linear(13, 33), nn.GELU(), nn.Linear(33, 33), nn.GELU(), nn.Linear(33, 3))


def pair(make=mlp, seed=0):
    torch.manual_seed(seed)
    a = make()
    b = copy.deepcopy(a)
    return a, b


def batch(step, shape=(7, 13), out=3):
    g = torch.Generator().manual_seed(step)
    return torch.randn(*shape, generator=g), torch.randn(*shape[:-1], out, generator=g)


def close(a, b, rtol=1e-5, atol=1e-7):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def train(model, opt, steps, shape=(7, 13), extra=None):
    for step in range(steps):
        x, y = batch(step, shape)
        if extra is not None:
            extra(model)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("cfg", [dict(), dict(amsgrad=True, weight_decay=0.1, maximize=True)],
                         ids=["default", "amsgrad-wd-maximize"])
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 13), (1, 13)], ids=["2d", "3d", "1row"])
def test_matches_torch_adamw(isa, cfg, shape):
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True, **cfg)
    handle = ours.fuse_linear_backward(ours_m)
    assert handle.modules == ["0", "2", "4"]
    assert all(type(ours_m[i]) is FusedLinear for i in (0, 2, 4))
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False, **cfg)
    for step in range(10):
        x, y = batch(step, shape)
        nn.functional.mse_loss(ours_m(x), y).backward()  # the update happens here
        assert all(p.grad is None for p in ours_m.parameters())
        ours.step()
        ours.zero_grad()
        nn.functional.mse_loss(ref_m(x), y).backward()
        ref.step()
        ref.zero_grad()
    close(ours_m, ref_m)
    assert ours.state_dict()["state"][0]["step"].item() == 10.0


def test_layer_called_twice_waits_for_both_backwards():
    ours_m, ref_m = pair(Twice)
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    assert ours.fuse_linear_backward(ours_m).modules == ["inp", "mid", "out"]
    train(ours_m, ours, 6)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    train(ref_m, ref, 6)
    close(ours_m, ref_m)


def test_forward_without_backward_is_settled_at_step():
    """A grad-mode forward whose backward never comes (e.g. evaluation without no_grad) leaves a layer
    waiting for a second backward; opt.step() applies what arrived."""
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    ours.fuse_linear_backward(ours_m)
    train(ours_m, ours, 5, extra=lambda m: m(torch.randn(4, 13)))
    train(ref_m, torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False), 5)
    close(ours_m, ref_m)


def test_more_rows_than_the_fused_limit_use_a_matmul():
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    ours.fuse_linear_backward(ours_m)
    train(ours_m, ours, 4, shape=(100, 13))
    train(ref_m, torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False), 4, shape=(100, 13))
    close(ours_m, ref_m)


def test_no_grad_and_autocast_forwards_run_plain_linear():
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    ours.fuse_linear_backward(ours_m)
    x, _ = batch(0)
    with torch.no_grad():
        torch.testing.assert_close(ours_m(x), ref_m(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours_m(x).float().sum().backward()  # bf16 compute: the hook path updates the weights
    assert all(p.grad is None for p in ours_m.parameters())
    assert all(s[1].count == 0 for s in ours._fused_layers)
    ours.step()


def test_only_eligible_weights_are_fused():
    torch.manual_seed(0)
    tied = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    tied[1].weight = tied[0].weight  # one tensor in two modules: left to the hook
    groups = [{"params": [*tied[0].parameters(), tied[1].bias]},
              {"params": tied[2].parameters(), "state_dtype": "bf16"}]  # bf16 states: not fused
    opt = fasttrain.optim.AdamW(groups, lr=1e-2, step_in_backward=True)
    assert opt.fuse_linear_backward(tied).modules == []
    with pytest.raises(ValueError, match="step_in_backward=True"):
        fasttrain.optim.AdamW(mlp().parameters(), lr=1e-2).fuse_linear_backward(nn.Linear(2, 2))


def test_remove_copy_and_pickle():
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    handle = ours.fuse_linear_backward(ours_m)
    clone = copy.deepcopy(ours_m)  # a copy is detached from the optimizer: plain nn.Linear behaviour
    x, y = batch(0)
    nn.functional.mse_loss(clone(x), y).backward()
    assert clone[0].weight.grad is not None
    close(ours_m, ref_m)  # the original was not touched
    restored = pickle.loads(pickle.dumps(ours_m))
    close(restored, ref_m)
    handle.remove()
    assert all(type(ours_m[i]) is nn.Linear for i in (0, 2, 4)) and not ours._fused_layers
    train(ours_m, ours, 3)  # back to the hook path
    train(ref_m, torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False), 3)
    close(ours_m, ref_m)


def test_trainer_fuses_and_refuses_accumulation():
    torch.manual_seed(0)
    x, y = torch.randn(64, 13), torch.randn(64, 3)
    model = mlp()
    trainer = fasttrain.Trainer(model, loss_fn=nn.functional.mse_loss, max_steps=4, batch_size=16, loggers=None,
                                optimizer_kwargs={"step_in_backward": True, "lr": 1e-2}, verbose=False,
                                progress=False)
    assert type(model[0]) is FusedLinear
    before = model[0].weight.detach().clone()
    trainer.fit((x, y))
    assert trainer.global_step == 4 and not torch.equal(before, model[0].weight)
    with pytest.raises(ValueError, match="grad_accum"):
        fasttrain.Trainer(mlp(), loss_fn=nn.functional.mse_loss, max_steps=1, grad_accum=2, loggers=None,
                          optimizer_kwargs={"step_in_backward": True})


def test_compiled_model_uses_the_hook_path():
    """Under torch.compile the fused layers trace as plain F.linear; the hooks then update the weights."""
    ours_m, ref_m = pair()
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-2, step_in_backward=True)
    ours.fuse_linear_backward(ours_m)
    compiled = torch.compile(ours_m, backend="eager")
    train(compiled, ours, 3)
    train(ref_m, torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False), 3)
    close(ours_m, ref_m)
