"""fasttrain.train.tune_allocator: a training step stops faulting its freed activations back in
(page faults counted in child processes, so this process's malloc is not changed), and the Trainer
calls it unless told not to."""

import platform

import pytest
import torch

import fasttrain
from fasttrain.train import allocator
from _subprocess import run_python

# Training steps of the char-LM demo GPT (bf16 autocast, batch 32 x 128), the workload whose per-step
# page faults tune_allocator removes (benchmarks/bench_allocator.py). Synthetic alloc/free loops were
# not a reliable stand-in: whether glibc's defaults fault them back in depended on the heap's layout
# (editable vs wheel install), while this step faulted 16k-43k pages with the defaults in both.
_STEPS = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from fasttrain.train import tune_allocator
    assert tune_allocator() is True
from fasttrain.examples.charlm import GPT, GPTConfig
torch.manual_seed(0)
model = GPT(GPTConfig(attention="torch"))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
x = torch.randint(0, 256, (32, 128))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")


@glibc
def test_tuned_training_step_stops_faulting_pages_in():
    got = {}
    for mode in ("default", "tuned"):
        r = run_python("-c", _STEPS, mode)
        assert r.returncode == 0, r.stderr
        got[mode] = float(r.stdout.split()[-1])  # minor page faults per step
    assert got["default"] >= 2000, got  # the premise: glibc's defaults fault freed activations back in
    # tuned: ~100-250 per step here, ~2.5k once with another test suite running alongside
    assert got["tuned"] * 5 < got["default"], got


@glibc
def test_tune_allocator_is_idempotent():
    assert allocator.tune_allocator() is True
    assert allocator.tune_allocator() is True


@pytest.mark.parametrize("tune", [True, False])
def test_trainer_tunes_at_fit_unless_disabled(monkeypatch, tune):
    calls = []
    monkeypatch.setattr("fasttrain.train.trainer.tune_allocator", lambda: calls.append(1) or True)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    t = fasttrain.Trainer(torch.nn.Linear(4, 2), loss_fn=torch.nn.functional.cross_entropy, max_steps=1,
                          loggers=(), progress=False, verbose=False, tune_allocator=tune)
    t.fit((x, y))
    assert calls == ([1] if tune else [])
