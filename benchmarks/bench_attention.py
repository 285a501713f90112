"""fasttrain.ops.attention (forward + backward, causal) vs torch's scaled_dot_product_attention on CPU,
same inputs, interleaved: torch's default CPU kernel (flash attention) and its math backend (the
faster of the two at these shapes, which a user could pick with sdpa_kernel), bf16 and fp32.

Shapes: the char-LM demo's (batch 32, 4 heads, T 128, head 64) and a longer context (8 x 8 x 512 x 64).
extra_info records ms, speedups and the achieved GFLOP/s (causal FLOPs: 2 T^2 D per (batch, head) for the
forward, the backward counted as 2.5x the forward). Before timing, both results are
checked against the pure-torch reference (attention_reference / attention_backward_reference).

    pytest benchmarks/bench_attention.py -s
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fasttrain.bench import interleaved
from fasttrain.ops import attention
from fasttrain.ops.reference import attention_backward_reference, attention_reference


def _fwd_bwd(fn, q, k, v, do):
    def run():
        out = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), do)
    return run


def _sdpa(backend):
    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [(32, 4, 128, 64), (8, 8, 512, 64)], ids=["charlm", "long"])
def test_attention_fwd_bwd(benchmark, smoke, shape, dtype):
    B, H, T, D = (2, 2, 33, 16) if smoke else shape
    g = torch.Generator().manual_seed(0)
    # q, k, v as a GPT makes them: strided views of one (B, T, 3, H, D) projection
    qkv = torch.randn(B, T, 3, H, D, generator=g).to(dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))
    do = torch.randn(B, H, T, D, generator=g).to(dtype)

    # correctness guard (small slice, fp32 reference): never time a wrong answer
    sl = (slice(0, 1), slice(0, 1))
    qs, ks, vs, dos = (t[sl].detach() for t in (q, k, v, do))
    ref = attention_reference(qs, ks, vs)
    ref_grads = attention_backward_reference(dos, qs, ks, vs)
    qs2, ks2, vs2 = (t.clone().requires_grad_() for t in (qs, ks, vs))
    out = attention(qs2, ks2, vs2)
    grads = torch.autograd.grad(out, (qs2, ks2, vs2), dos)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for a, b in zip((out, *grads), (ref, *ref_grads)):
        assert (a.float() - b.float()).abs().max() <= tol * b.float().abs().max()

    fns = {"fasttrain": _fwd_bwd(attention, q, k, v, do),
           "torch_flash": _fwd_bwd(_sdpa(SDPBackend.FLASH_ATTENTION), q, k, v, do),
           "torch_math": _fwd_bwd(_sdpa(SDPBackend.MATH), q, k, v, do)}
    t = interleaved(fns, rounds=1 if smoke else 11, warmup=0 if smoke else 2)
    ms = {n: x.median * 1e3 for n, x in t.items()}
    flops = 3.5 * 2 * B * H * T * T * D  # causal: fwd 2 matmuls over half the scores (2 T^2 D), bwd ~2.5x that
    result = {"shape": [B, H, T, D], "dtype": str(dtype).removeprefix("torch."),
              **{f"{n}_ms": v for n, v in ms.items()},
              "speedup_vs_flash": ms["torch_flash"] / ms["fasttrain"],
              "speedup_vs_math": ms["torch_math"] / ms["fasttrain"],
              "fasttrain_gflops": flops / (ms["fasttrain"] * 1e-3) / 1e9}
    benchmark.extra_info.update(result)
    print(f"\nattention fwd+bwd {B}x{H}x{T}x{D} {result['dtype']}: fasttrain {ms['fasttrain']:.2f} ms "
          f"({result['fasttrain_gflops']:.0f} GFLOP/s), torch flash {ms['torch_flash']:.2f} ms, torch math "
          f"{ms['torch_math']:.2f} ms; speedup {result['speedup_vs_flash']:.2f}x flash, "
          f"{result['speedup_vs_math']:.2f}x math (medians of {len(t['fasttrain'].seconds)} interleaved rounds)")
    benchmark.pedantic(fns["fasttrain"], rounds=1, iterations=1)
