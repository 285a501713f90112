"""fasttrain.optim.AdamW on CUDA (the Triton path) vs torch's fused CUDA AdamW, same run (GPU only;
benchmarks/gpu/check.sh runs this file on a lent GPU). Every call is followed by a device synchronize.

1. The op on 1B params in one flat buffer, fp32 and bf16 params + fp32 masters, with the device's copy
   bandwidth (issue targets: >= 1.0x torch fused and >= 85% of copy bandwidth; bf16 + masters >= 1.3x
   torch's way).
2. The optimizer class on 24 tensors (flat buffers, device-side step scalars, no host sync).
3. step_in_backward: a full training step of a ~0.7B-param MLP at batch 8 (each parameter updated from
   its post-accumulate-grad hook, gradient freed) vs backward + torch fused step + zero_grad, with the peak
   device memory of each.

    pytest benchmarks/bench_adamw_cuda.py -s -q
"""

import pytest
import torch

import fasttrain.optim
from fasttrain.bench import interleaved
from fasttrain.ops import adamw_step_


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")
def test_adamw_cuda_triton(benchmark, smoke):
    """Flat Triton AdamW on CUDA vs torch.optim.AdamW(fused=True) and the GPU's copy bandwidth, same
    run: fp32 (28 B/param) and bf16 params + fp32 masters vs torch's way (cast up, fused, cast down).
    1B parameters (smoke: 1M) in one flat buffer for fasttrain, 24 tensors for torch."""
    dev = "cuda"
    n = 1 << 20 if smoke else 1_000_000_000
    rounds = 1 if smoke else 11
    sizes = [n // 24] * 23 + [n - 23 * (n // 24)]
    sync = torch.cuda.synchronize
    p, g = torch.randn(n, device=dev), torch.randn(n, device=dev) * 1e-3
    m, v = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    ours = lambda: adamw_step_(p, g, m, v, lr=1e-4, step=10)  # noqa: E731
    tp = [torch.nn.Parameter(t) for t in torch.randn(n, device=dev).split(sizes)]
    for t in tp:
        t.grad = torch.randn_like(t) * 1e-3
    ref = torch.optim.AdamW(tp, lr=1e-4, fused=True)
    ref.step()
    src, dst = torch.empty(n, device=dev), torch.empty(n, device=dev)
    t = interleaved({"fasttrain": ours, "torch_fused": ref.step, "copy": lambda: dst.copy_(src)},
                    rounds=rounds, warmup=0 if smoke else 2, sync=sync)
    ft, th, cp = t["fasttrain"].median, t["torch_fused"].median, t["copy"].median
    copy_gbps = 8 * n / cp / 1e9
    result = {"params": n, "fasttrain_ms": ft * 1e3, "torch_fused_ms": th * 1e3, "speedup": th / ft,
              "gbps": 28 * n / ft / 1e9, "copy_gbps": copy_gbps, "fraction_of_copy_bw": 28 * n / ft / 1e9 / copy_gbps,
              "device": torch.cuda.get_device_name()}
    del tp, ref
    # bf16 + masters vs torch's way
    lp, lg = p.bfloat16(), g.bfloat16()
    master = p.clone()
    ours_bf16 = lambda: adamw_step_(lp, lg, m, v, lr=1e-4, step=10, master=master)  # noqa: E731
    mp = [torch.nn.Parameter(t) for t in p.clone().split(sizes)]
    lows, lgrads = list(lp.clone().split(sizes)), list(lg.split(sizes))
    for t in mp:
        t.grad = torch.empty_like(t)
    ref2 = torch.optim.AdamW(mp, lr=1e-4, fused=True)

    def torch_way():
        torch._foreach_copy_([t.grad for t in mp], lgrads)
        ref2.step()
        torch._foreach_copy_(lows, [t.detach() for t in mp])

    torch_way()
    t2 = interleaved({"fasttrain": ours_bf16, "torch_way": torch_way}, rounds=rounds, warmup=0 if smoke else 2, sync=sync)
    result["bf16_master_speedup"] = t2["torch_way"].median / t2["fasttrain"].median
    benchmark.extra_info.update(result)
    print(f"\nCUDA AdamW fp32 {n / 1e9:.2f}B params on {result['device']}: fasttrain {ft * 1e3:.2f} ms "
          f"({result['gbps']:.0f} GB/s, {100 * result['fraction_of_copy_bw']:.0f}% of copy {copy_gbps:.0f} GB/s), "
          f"torch fused {th * 1e3:.2f} ms, speedup {th / ft:.3f}x; bf16 + masters vs torch's way "
          f"{result['bf16_master_speedup']:.3f}x")
    benchmark.pedantic(ours, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")
@pytest.mark.parametrize("precision", ["fp32", "bf16-masters"])
def test_adamw_cuda_optimizer(benchmark, smoke, precision):
    """The user-facing fasttrain.optim.AdamW on CUDA (24 params packed into one flat buffer, the step
    scalars built on the device, one Triton launch, no host sync), 1B params (smoke: 1M), vs torch:
    fp32: torch.optim.AdamW(fused=True) on the same 24 tensors; bf16-masters: bf16 params + fp32
    masters vs torch's way (fp32 copies with fused AdamW: cast grads up, step, cast params down)."""
    dev = "cuda"
    n = 1 << 20 if smoke else 1_000_000_000
    rounds = 1 if smoke else 11
    sizes = [n // 24] * 23 + [n - 23 * (n // 24)]
    sync = torch.cuda.synchronize
    low = precision != "fp32"
    pdt = torch.bfloat16 if low else torch.float32
    ours_p = [torch.nn.Parameter(t.to(pdt)) for t in torch.randn(n, device=dev).split(sizes)]
    ours = fasttrain.optim.AdamW(ours_p, lr=1e-4, master_weights=low)
    for p in ours_p:
        p.grad.normal_(0, 1e-3)
    ref_p = [torch.nn.Parameter(p.detach().float()) for p in ours_p]
    for p, q in zip(ref_p, ours_p):
        p.grad = q.grad.float()
    ref = torch.optim.AdamW(ref_p, lr=1e-4, fused=True)
    lows, lgrads = [p.detach().clone() for p in ours_p], [p.grad for p in ours_p]

    def torch_way():
        if low:
            torch._foreach_copy_([p.grad for p in ref_p], lgrads)
        ref.step()
        if low:
            torch._foreach_copy_(lows, [p.detach() for p in ref_p])

    ours.step()  # compile the kernels
    torch_way()  # allocate torch's states
    src, dst = torch.empty(n, device=dev), torch.empty(n, device=dev)
    t = interleaved({"fasttrain": ours.step, "torch": torch_way, "copy": lambda: dst.copy_(src)},
                    rounds=rounds, warmup=0 if smoke else 2, sync=sync)
    ft, th, cp = t["fasttrain"].median, t["torch"].median, t["copy"].median
    # Bytes per parameter moved by our pass: fp32 p, g, m, v read + p, m, v written = 28; bf16 + masters: g read
    # (2) + p written (2) + fp32 master, m, v read and written (24) = 28 as well (p itself is not read).
    # (torch's way moves 40: the fp32 copy's 28 + casting grads up (2 + 4) and params down (4 + 2).)
    bpp = 28
    copy_gbps = 8 * n / cp / 1e9
    result = {"params": n, "precision": precision, "fasttrain_ms": ft * 1e3, "torch_ms": th * 1e3, "speedup": th / ft,
              "gbps": bpp * n / ft / 1e9, "copy_gbps": copy_gbps, "fraction_of_copy_bw": bpp * n / ft / 1e9 / copy_gbps,
              "device": torch.cuda.get_device_name()}
    benchmark.extra_info.update(result)
    print(f"\nCUDA fasttrain.optim.AdamW {precision} {n / 1e9:.2f}B params on {result['device']}: {ft * 1e3:.2f} ms "
          f"({result['gbps']:.0f} GB/s, {100 * result['fraction_of_copy_bw']:.0f}% of copy {copy_gbps:.0f} GB/s), "
          f"torch {'fused' if not low else 'way (cast up, fused, cast down)'} {th * 1e3:.2f} ms: speedup {th / ft:.3f}x")
    benchmark.pedantic(ours.step, rounds=rounds, iterations=1, warmup_rounds=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton path)")
def test_adamw_cuda_step_in_backward(benchmark, smoke):
    """Forward, backward and update of an MLP 4096 -> 16384 -> 16384 -> 4096 (GELU; ~0.67B params; smoke:
    tiny) at batch 8: AdamW(step_in_backward=True) (each update inside backward, gradients never held for
    the whole model) vs backward + torch.optim.AdamW(fused=True).step() + zero_grad(); peak device memory
    of a step of each (torch.cuda.max_memory_allocated after reset_peak_memory_stats)."""
    d, h = (32, 64) if smoke else (4096, 16384)
    rounds = 1 if smoke else 11

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.GELU(), torch.nn.Linear(h, h), torch.nn.GELU(),
                                   torch.nn.Linear(h, d)).cuda()

    x, y = torch.randn(8, d, device="cuda"), torch.randn(8, d, device="cuda")
    ours_m, ref_m = make(), make()
    n = sum(p.numel() for p in ours_m.parameters())
    ours = fasttrain.optim.AdamW(ours_m.parameters(), lr=1e-4, step_in_backward=True)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-4, fused=True)

    def step(m, o):
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
        o.zero_grad()

    peaks = {}
    for name, m, o in (("fasttrain", ours_m, ours), ("torch_fused", ref_m, ref)):
        step(m, o)  # states allocated, kernels compiled
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(m, o)
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    t = interleaved({"fasttrain": lambda: step(ours_m, ours), "torch_fused": lambda: step(ref_m, ref)},
                    rounds=rounds, warmup=0 if smoke else 2, sync=torch.cuda.synchronize)
    ft, th = t["fasttrain"].median, t["torch_fused"].median
    result = {"params": n, "device": torch.cuda.get_device_name(), "fasttrain_ms": ft * 1e3, "torch_fused_ms": th * 1e3,
              "speedup": th / ft, "peak_mib": peaks["fasttrain"], "torch_peak_mib": peaks["torch_fused"]}
    benchmark.extra_info.update(result)
    print(f"\nCUDA MLP {n / 1e9:.2f}B params, batch 8, full step on {result['device']}: step_in_backward {ft * 1e3:.2f} ms, "
          f"torch fused + zero_grad {th * 1e3:.2f} ms, speedup {th / ft:.3f}x; peak {peaks['fasttrain']:.0f} MiB vs torch "
          f"{peaks['torch_fused']:.0f} MiB")
    benchmark.pedantic(step, args=(ours_m, ours), rounds=rounds, iterations=1, warmup_rounds=0)
