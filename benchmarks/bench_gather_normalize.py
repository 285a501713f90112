"""fasttrain.ops.gather_normalize vs hand-written torch (`(src[idx].float() - mean) / std`), same run.

Workload: a batch of 256 CIFAR-sized uint8 images (32x32x3) gathered from 50k in random order and
normalized to fp32 (and bf16). extra_info: speedup over torch, fasttrain's GB/s (bytes read + written)
and the box's copy bandwidth from the same run. Correctness is asserted against
fasttrain.ops.reference.gather_normalize_reference before timing.

    pytest benchmarks/bench_gather_normalize.py -s      # full
    pytest benchmarks --benchmark-disable                # smoke (CI)
"""

import pytest
import torch

from fasttrain.bench import interleaved, memory_bandwidth
from fasttrain.ops import gather_normalize
from fasttrain.ops.reference import gather_normalize_reference

MEAN = torch.tensor([125.3, 123.0, 113.9])
STD = torch.tensor([63.0, 62.1, 66.7])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gather_normalize(benchmark, smoke, dtype):
    n, batch, rounds = (2_000, 64, 1) if smoke else (50_000, 256, 51)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    idx = torch.randperm(n, generator=g)[:batch]
    ref = gather_normalize_reference(src, idx[:8], MEAN, STD, dtype=dtype)
    assert torch.equal(gather_normalize(src, idx[:8], MEAN, STD, dtype=dtype), ref)

    def torch_path():
        return ((src[idx].float() - MEAN) / STD).to(dtype)

    bw = memory_bandwidth(nbytes=(8 << 20) if smoke else (256 << 20), rounds=1 if smoke else 5)
    t = interleaved({"fasttrain": lambda: gather_normalize(src, idx, MEAN, STD, dtype=dtype), "torch": torch_path}, rounds=rounds)
    ft, th = t["fasttrain"].median, t["torch"].median
    nbytes = batch * 3072 * (1 + torch.empty((), dtype=dtype).element_size())
    result = {"speedup": th / ft, "gbps": nbytes / ft / 1e9, "torch_gbps": nbytes / th / 1e9, **bw}
    benchmark.extra_info.update(result)
    print(f"\ngather_normalize {dtype}: fasttrain {ft * 1e6:.0f} us, torch {th * 1e6:.0f} us, speedup {th / ft:.2f}x, "
          f"{result['gbps']:.1f} GB/s (box copy {bw['copy_gbps']:.1f} GB/s)")
    benchmark.pedantic(gather_normalize, args=(src, idx, MEAN, STD), kwargs={"dtype": dtype}, rounds=rounds, iterations=1)
