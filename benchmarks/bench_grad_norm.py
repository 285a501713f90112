"""fasttrain.ops.clip_grad_norm_ / get_total_norm vs torch.nn.utils (foreach=True), same run.

Workload: the gradients of a 41M-parameter GPT (8 layers x 512, 100 tensors), fp32 and bf16, with
and without clipping. extra_info records torch/fasttrain (speedup), fasttrain's GB/s and the box's
read/copy bandwidth measured in the same run. Accuracy lives in tests/; the reference
(fasttrain.ops.reference.clip_grad_norm_reference) is cross-checked below only to keep the
benchmark from timing a wrong answer.

    pytest benchmarks/bench_grad_norm.py --benchmark-json out.json   # full
    pytest benchmarks --benchmark-disable                             # smoke (CI)
"""

import pytest
import torch

from fasttrain.bench import gpt_param_shapes, interleaved, make_grads, memory_bandwidth
from fasttrain.bench.grad_norm import compare_clip_grad_norm
from fasttrain.ops import clip_grad_norm_, get_total_norm
from fasttrain.ops.reference import clip_grad_norm_reference, total_norm_reference


@pytest.fixture(scope="module")
def bandwidth(request):
    smoke = request.config.getoption("benchmark_disable")
    return memory_bandwidth(nbytes=(8 << 20) if smoke else (256 << 20), rounds=1 if smoke else 9)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
def test_clip_grad_norm(benchmark, smoke, bandwidth, dtype, clip, device):
    """On CUDA the anchor is the same torch call on CUDA tensors, and fasttrain runs its Triton kernels;
    the box bandwidth figures stay the CPU's (the GPU's copy bandwidth is in extra_info as cuda_copy_gbps)."""
    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else gpt_param_shapes()
    if device == "cuda" and not smoke:
        shapes = gpt_param_shapes(n_layer=24, d_model=2048, vocab=50304, block=2048)  # ~1.3B params
    rounds = 1 if smoke else 21

    # Guard: the timed call must compute what the reference computes.
    ours = make_grads(shapes, dtype, device=device)
    ref = [p.grad.clone() for p in ours]
    n_ref = clip_grad_norm_reference(ref, 0.1, dtype=torch.float64)  # fp64: torch's fp32 norm drifts at 41M
    torch.testing.assert_close(clip_grad_norm_(ours, 0.1).double(), n_ref, rtol=1e-5, atol=0)

    del ours, ref
    result = compare_clip_grad_norm(shapes, dtype, clip=clip, rounds=rounds, device=device)
    result.update(bandwidth)
    if device == "cuda":
        result["cuda_copy_gbps"] = _cuda_copy_gbps()
    benchmark.extra_info.update(result)
    print(
        f"\n{device} {result['dtype']} clip={clip}: fasttrain {result['fasttrain_ms']:.2f} ms, torch {result['torch_ms']:.2f} ms, "
        f"speedup {result['speedup']:.2f}x, {result['gbps']:.1f} GB/s "
        f"(box: read {bandwidth['read_gbps']:.1f}, copy {bandwidth['copy_gbps']:.1f} GB/s)"
    )

    params = make_grads(shapes, dtype, device=device)
    max_norm = 0.5 * torch.cat([p.grad.float().flatten() for p in params]).norm().item() if clip else 1e9
    benchmark.pedantic(clip_grad_norm_, args=(params, max_norm), rounds=rounds, iterations=1, warmup_rounds=0 if smoke else 2)


def _cuda_copy_gbps(nbytes: int = 1 << 30) -> float:
    src = torch.ones(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    t = interleaved({"copy": lambda: dst.copy_(src)}, rounds=9, sync=torch.cuda.synchronize)
    return 2 * nbytes / t["copy"].median / 1e9


def test_get_total_norm(benchmark, smoke):
    """The norm alone (the pass an optimizer's clipping needs) vs torch.nn.utils.get_total_norm."""
    shapes = gpt_param_shapes(n_layer=1, d_model=64, vocab=1000, block=64) if smoke else gpt_param_shapes()
    rounds = 1 if smoke else 21
    grads = [p.grad for p in make_grads(shapes)]
    ref = total_norm_reference(grads, dtype=torch.float64)
    torch.testing.assert_close(get_total_norm(grads).double(), ref, rtol=1e-6, atol=0)
    # Roofline in the same rounds: torch.sum over one flat buffer of the same bytes (a pure read).
    flat = torch.ones(sum(g.numel() for g in grads))
    t = interleaved(
        {
            "fasttrain": lambda: get_total_norm(grads),
            "torch": lambda: torch.nn.utils.get_total_norm(grads, foreach=True),
            "read": lambda: flat.sum(),
        },
        rounds=rounds,
    )
    nbytes = flat.numel() * 4
    ft, th, rd = t["fasttrain"].median, t["torch"].median, t["read"].median
    result = {"speedup": th / ft, "gbps": nbytes / ft / 1e9, "torch_gbps": nbytes / th / 1e9, "read_gbps_same_rounds": nbytes / rd / 1e9}
    benchmark.extra_info.update(result)
    print(
        f"\nget_total_norm fp32: fasttrain {ft * 1e3:.2f} ms, torch {th * 1e3:.2f} ms, speedup {th / ft:.2f}x, "
        f"{result['gbps']:.1f} GB/s vs torch.sum read {result['read_gbps_same_rounds']:.1f} GB/s (same rounds)"
    )
    benchmark.pedantic(get_total_norm, args=(grads,), rounds=rounds, iterations=1)
