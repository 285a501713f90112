"""fasttrain.train.tune_allocator: the same raw training loop in fresh processes with glibc's default
malloc thresholds and with tune_allocator() called first, alternating (malloc settings are
process-wide, so the two cannot share a process the way interleaved() candidates do).

Workloads: the char-LM demo GPT written with SDPA (GPTConfig(attention="torch")), batch 32 x 128,
bf16 autocast, torch fused AdamW, clipping (bench_charlm.py's raw loop on fixed batches); and the digits
MLP, batch 32 (bench_trainer.py's raw model). extra_info: median ms/step of each, the speedup and
the minor page faults per step.

    pytest benchmarks/bench_allocator.py -s
"""

import json
import statistics
import subprocess
import sys

import pytest

_CHILD = r"""
import json, resource, sys, time
mode, workload, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "tuned":
    from fasttrain.train import tune_allocator
    assert tune_allocator()
import torch
torch.manual_seed(0)
if workload == "charlm":
    from fasttrain.examples.charlm import GPT, GPTConfig
    cfg = GPTConfig(attention="torch") if steps > 2 else GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, attention="torch")
    model = GPT(cfg)
    x = torch.randint(0, 256, (32, cfg.block_size)); y = torch.randint(0, 256, (32, cfg.block_size))
    def loss_fn():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x, y)
else:
    from fasttrain.examples.digits import digits_mlp
    model = digits_mlp()
    x = torch.randn(32, 64); y = torch.randint(0, 10, (32,))
    def loss_fn():
        return torch.nn.functional.cross_entropy(model(x), y)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
def step():
    loss_fn().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ts = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
ts.sort()
print(json.dumps({"ms": ts[len(ts) // 2] * 1e3, "faults_per_step": faults / steps}))
"""


def _child(mode: str, workload: str, steps: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, mode, workload, str(steps)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workload", ["charlm", "digits"])
def test_tune_allocator_process(benchmark, smoke, workload):
    steps = 2 if smoke else (24 if workload == "charlm" else 400)
    pairs = 1 if smoke else 5
    got = {"default": [], "tuned": []}
    for i in range(pairs):  # alternate which goes first
        for mode in (("default", "tuned") if i % 2 == 0 else ("tuned", "default")):
            got[mode].append(_child(mode, workload, steps))
    ms = {m: statistics.median(r["ms"] for r in rs) for m, rs in got.items()}
    faults = {m: statistics.median(r["faults_per_step"] for r in rs) for m, rs in got.items()}
    result = {"workload": workload, "default_ms_per_step": ms["default"], "tuned_ms_per_step": ms["tuned"],
              "speedup": ms["default"] / ms["tuned"], "default_faults_per_step": faults["default"],
              "tuned_faults_per_step": faults["tuned"], "processes_each": pairs}
    benchmark.extra_info.update(result)
    print(f"\n{workload}: glibc defaults {ms['default']:.2f} ms/step ({faults['default']:.0f} page faults/step), "
          f"tune_allocator() {ms['tuned']:.2f} ms/step ({faults['tuned']:.0f}); speedup {result['speedup']:.3f}x "
          f"(medians of {pairs} processes each, alternating)")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
