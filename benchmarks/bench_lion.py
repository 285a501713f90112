"""fasttrain.optim.Lion (fp32) vs the pure-torch Lion step (fasttrain.ops.reference.lion_reference
per tensor, torch has no Lion) and a _foreach implementation of the same math, same run.

Workload: the 42.6M-parameter GPT of bench_adamw.py. Lion reads param, grad, exp_avg and writes
param, exp_avg: 20 bytes per parameter.

    pytest benchmarks/bench_lion.py -s -q
"""

import pytest
import torch

import fasttrain.optim
from fasttrain.bench import gpt_param_shapes, interleaved, make_grads
from fasttrain.ops import lion_step_
from fasttrain.ops.reference import lion_reference


def _foreach_lion(params, grads, ms, lr=1e-4, beta1=0.9, beta2=0.99, wd=0.0):
    # The fastest plain-torch formulation: multi-tensor kernels, 4 passes.
    torch._foreach_mul_(params, 1 - lr * wd)
    upd = torch._foreach_mul(ms, beta1)
    torch._foreach_add_(upd, grads, alpha=1 - beta1)
    torch._foreach_sign_(upd)
    torch._foreach_add_(params, upd, alpha=-lr)
    torch._foreach_mul_(ms, beta2)
    torch._foreach_add_(ms, grads, alpha=1 - beta2)


def test_lion_fp32(benchmark, smoke):
    g = torch.Generator().manual_seed(0)
    bufs = [torch.randn(4099, generator=g) for _ in range(3)]
    ours, ref = [b.clone() for b in bufs], [b.clone() for b in bufs]
    lion_step_(*ours, lr=1e-4)
    lion_reference(*ref, lr=1e-4)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)

    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else \
        gpt_param_shapes(n_layer=2, d_model=1024, vocab=16000, block=1024)
    rounds = 1 if smoke else 15
    ps = make_grads(shapes, seed=0)
    n = sum(p.numel() for p in ps)
    opt = fasttrain.optim.Lion(ps, lr=1e-4)
    rp = [p.detach() for p in make_grads(shapes, seed=0)]
    rg = [torch.randn_like(p) * 1e-3 for p in rp]
    rm = [torch.zeros_like(p) for p in rp]

    def loop():
        for p, gr, m in zip(rp, rg, rm):
            lion_reference(p, gr, m, lr=1e-4)

    t = interleaved({"fasttrain": opt.step, "torch_foreach": lambda: _foreach_lion(rp, rg, rm), "torch_loop": loop},
                    rounds=rounds, warmup=0 if smoke else 1)
    ft, te, tl = t["fasttrain"].median, t["torch_foreach"].median, t["torch_loop"].median
    result = {"params": n, "fasttrain_ms": ft * 1e3, "torch_foreach_ms": te * 1e3, "torch_loop_ms": tl * 1e3,
              "speedup_vs_foreach": te / ft, "speedup_vs_loop": tl / ft, "gbps": 20 * n / ft / 1e9}
    benchmark.extra_info.update(result)
    print(f"\nLion fp32 {n / 1e6:.1f}M params: fasttrain {ft * 1e3:.2f} ms ({result['gbps']:.1f} GB/s), torch foreach "
          f"{te * 1e3:.2f} ms, per-tensor reference {tl * 1e3:.2f} ms; speedup {te / ft:.2f}x vs foreach")
    benchmark.pedantic(opt.step, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")
def test_lion_cuda(benchmark, smoke):
    """fasttrain.optim.Lion on CUDA (one Triton launch) vs the _foreach implementation on the same GPU,
    ~0.65B params in GPT shapes (smoke: tiny)."""
    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else \
        gpt_param_shapes(n_layer=12, d_model=2048, vocab=50304, block=2048)
    rounds = 1 if smoke else 11
    ps = make_grads(shapes, seed=0, device="cuda")
    n = sum(p.numel() for p in ps)
    opt = fasttrain.optim.Lion(ps, lr=1e-4)
    rp = [p.detach() for p in make_grads(shapes, seed=0, device="cuda")]
    rg = [torch.randn_like(p) * 1e-3 for p in rp]
    rm = [torch.zeros_like(p) for p in rp]
    t = interleaved({"fasttrain": opt.step, "torch_foreach": lambda: _foreach_lion(rp, rg, rm)},
                    rounds=rounds, warmup=0 if smoke else 2, sync=torch.cuda.synchronize)
    ft, te = t["fasttrain"].median, t["torch_foreach"].median
    result = {"params": n, "device": torch.cuda.get_device_name(), "fasttrain_ms": ft * 1e3,
              "torch_foreach_ms": te * 1e3, "speedup_vs_foreach": te / ft, "gbps": 20 * n / ft / 1e9}
    benchmark.extra_info.update(result)
    print(f"\nCUDA Lion fp32 {n / 1e9:.2f}B params on {result['device']}: fasttrain {ft * 1e3:.2f} ms "
          f"({result['gbps']:.0f} GB/s), torch foreach {te * 1e3:.2f} ms; speedup {te / ft:.2f}x")
    benchmark.pedantic(opt.step, rounds=rounds, iterations=1, warmup_rounds=0)
