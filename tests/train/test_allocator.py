"""fasttrain.train.tune_allocator: freed blocks stay mapped (measured as page faults in a child
process, so this process's malloc is not changed), and the Trainer calls it unless told not to."""

import platform

import pytest
import torch

import fasttrain
from fasttrain.train import allocator
from _subprocess import run_python

# One 30 MiB block (under glibc's 32 MiB cap on the mmap threshold) allocated, touched and freed per
# cycle: with glibc's defaults it is unmapped or trimmed on free and faulted in again by the next cycle
# (15k-31k faults over 4 cycles in 5 of 5 runs here; three 12 MiB blocks, or a mix of sizes, did not
# fault reliably: glibc's dynamic threshold adapts to them).
_CYCLES = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from fasttrain.train import tune_allocator
    assert tune_allocator() is True
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def cycle():
    block = torch.empty(30 << 18).fill_(1.0)
    del block
for _ in range(6):  # warm-up: the heap reaches its working size
    cycle()
f0 = faults()
for _ in range(4):  # steady state
    cycle()
print(faults() - f0)
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")


@glibc
def test_tuned_process_reuses_freed_pages():
    got = {}
    for mode in ("default", "tuned"):
        r = run_python("-c", _CYCLES, mode)
        assert r.returncode == 0, r.stderr
        got[mode] = int(r.stdout.split()[-1])
    block_pages = (30 << 20) // 4096
    assert got["default"] >= block_pages, got  # the premise: with glibc's defaults the block faults back in
    assert got["tuned"] * 4 < got["default"], got


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
