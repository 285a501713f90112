"""fasttrain.optim.SGD (momentum 0.9, fp32) vs torch.optim.SGD(fused=True) and foreach, same run.

Workload: the 42.6M-parameter GPT of bench_adamw.py (28 tensors). SGD with momentum reads param,
grad, momentum_buffer and writes param, momentum_buffer: 20 bytes per parameter. extra_info: speedup
vs each torch path and GB/s. The guard checks fasttrain.ops.sgd_step_ against
fasttrain.ops.reference.sgd_reference first.

    pytest benchmarks/bench_sgd.py -s -q
"""

import pytest
import torch

import fasttrain.optim
from fasttrain.bench import gpt_param_shapes, interleaved, make_grads
from fasttrain.ops import sgd_step_
from fasttrain.ops.reference import sgd_reference


def test_sgd_momentum_fp32(benchmark, smoke):
    g = torch.Generator().manual_seed(0)
    bufs = [torch.randn(4099, generator=g) for _ in range(3)]
    ours, ref = [b.clone() for b in bufs], [b.clone() for b in bufs]
    sgd_step_(*ours, lr=0.1, momentum=0.9)
    sgd_reference(*ref, lr=0.1, momentum=0.9)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-7)

    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else \
        gpt_param_shapes(n_layer=2, d_model=1024, vocab=16000, block=1024)
    rounds = 1 if smoke else 21
    ps = make_grads(shapes, seed=0)
    n = sum(p.numel() for p in ps)
    opt = fasttrain.optim.SGD(ps, lr=1e-3, momentum=0.9)
    fused_p, foreach_p = make_grads(shapes, seed=0), make_grads(shapes, seed=0)
    fused = torch.optim.SGD(fused_p, lr=1e-3, momentum=0.9, fused=True)
    foreach = torch.optim.SGD(foreach_p, lr=1e-3, momentum=0.9, foreach=True)
    for o in (opt, fused, foreach):
        o.step()  # momentum buffers exist before timing
    t = interleaved({"fasttrain": opt.step, "torch_fused": fused.step, "torch_foreach": foreach.step},
                    rounds=rounds, warmup=0 if smoke else 2)
    ft, tf, te = t["fasttrain"].median, t["torch_fused"].median, t["torch_foreach"].median
    result = {"params": n, "fasttrain_ms": ft * 1e3, "torch_fused_ms": tf * 1e3, "torch_foreach_ms": te * 1e3,
              "speedup_vs_fused": tf / ft, "speedup_vs_foreach": te / ft, "gbps": 20 * n / ft / 1e9}
    benchmark.extra_info.update(result)
    print(f"\nSGD momentum fp32 {n / 1e6:.1f}M params: fasttrain {ft * 1e3:.2f} ms ({result['gbps']:.1f} GB/s), "
          f"torch fused {tf * 1e3:.2f} ms, foreach {te * 1e3:.2f} ms; speedup {tf / ft:.3f}x vs fused, "
          f"{te / ft:.3f}x vs foreach")
    benchmark.pedantic(opt.step, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")
def test_sgd_momentum_cuda(benchmark, smoke):
    """fasttrain.optim.SGD on CUDA (one Triton launch over the flat buffers) vs torch.optim.SGD(fused=True)
    and foreach on the same GPT shapes (~0.65B params; smoke: tiny), with the GPU's copy bandwidth."""
    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else \
        gpt_param_shapes(n_layer=12, d_model=2048, vocab=50304, block=2048)
    rounds = 1 if smoke else 11
    opts = {}
    for name in ("fasttrain", "torch_fused", "torch_foreach"):
        ps = make_grads(shapes, seed=0, device="cuda")
        opts[name] = (fasttrain.optim.SGD(ps, lr=1e-3, momentum=0.9) if name == "fasttrain" else
                      torch.optim.SGD(ps, lr=1e-3, momentum=0.9, **{name.split("_")[1]: True}))
        opts[name].step()  # momentum buffers exist before timing
    n = sum(p.numel() for p in opts["fasttrain"].param_groups[0]["params"])
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    fns = {name: o.step for name, o in opts.items()}
    fns["copy"] = lambda: dst.copy_(src)
    t = interleaved(fns, rounds=rounds, warmup=0 if smoke else 2, sync=torch.cuda.synchronize)
    ms = {k: v.median * 1e3 for k, v in t.items()}
    copy_gbps = 8 * n / (ms["copy"] / 1e3) / 1e9
    result = {"params": n, "device": torch.cuda.get_device_name(), **{f"{k}_ms": v for k, v in ms.items()},
              "speedup_vs_fused": ms["torch_fused"] / ms["fasttrain"],
              "speedup_vs_foreach": ms["torch_foreach"] / ms["fasttrain"],
              "gbps": 20 * n / (ms["fasttrain"] / 1e3) / 1e9, "copy_gbps": copy_gbps}
    benchmark.extra_info.update(result)
    print(f"\nCUDA SGD momentum fp32 {n / 1e9:.2f}B params on {result['device']}: fasttrain {ms['fasttrain']:.2f} ms "
          f"({result['gbps']:.0f} GB/s, copy {copy_gbps:.0f} GB/s), torch fused {ms['torch_fused']:.2f} ms, foreach "
          f"{ms['torch_foreach']:.2f} ms; speedup {result['speedup_vs_fused']:.3f}x vs fused")
    benchmark.pedantic(opts["fasttrain"].step, rounds=rounds, iterations=1, warmup_rounds=0)
