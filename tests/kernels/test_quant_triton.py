"""Triton quantized linear kernels (fasttrain.kernels.quant) against the same references as the C++ ops.
Without a GPU they run on CPU tensors through TRITON_INTERPRET=1 (tests/conftest.py): fp32 and fp16
activations only (the interpreter has no bf16; bf16 runs on a GPU), small shapes."""

import pytest
import torch

pytest.importorskip("triton", reason="Triton kernels need `pip install 'fasttrain[triton]'`")

from fasttrain.kernels import quant as tq  # noqa: E402
from fasttrain.ops import quantize_int4_weight, quantize_int8_weight  # noqa: E402
from fasttrain.ops.reference import (  # noqa: E402
    int4_weight_linear_reference,
    int8_dynamic_linear_reference,
    int8_weight_linear_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
SHAPES = [(1, 7, 1), (7, 130, 5), (33, 200, 40), (70, 300, 37)]  # (M, K, N): odd, K not a multiple of 64 / the group
# size; M picks the tile shape (kernels.quant._tiles: <= 16, <= 64, larger)


def make(M, K, N, dtype):
    g = torch.Generator().manual_seed(M * 1000 + K)
    x = torch.randn(M, K, generator=g).to(dtype)
    return x, torch.randn(N, K, generator=g) / K**0.5, torch.randn(N, generator=g)


def on(*ts):
    return [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in ts]


def tol(dtype):
    # Low-precision outputs are rounded once from fp32 (fp16 2^-11, bf16 2^-8 relative), and a summation
    # order differing from the reference's may land on the other side of that rounding. fp32: every
    # product is exact and the dot runs in fp32 (never TF32), on GPUs too.
    if dtype == torch.float16:
        return {"rtol": 2e-3, "atol": 2e-3}
    if dtype == torch.bfloat16:
        return {"rtol": 8e-3, "atol": 8e-3}
    return {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_weight(dtype, M, K, N):
    x, w, b = make(M, K, N, dtype)
    w_q, w_scale, _ = quantize_int8_weight(w)
    y = tq.int8_weight_linear(*on(x, w_q, w_scale, b))
    ref = int8_weight_linear_reference(x.float(), w_q, w_scale, b)
    assert y.dtype == dtype and y.shape == (M, N)
    torch.testing.assert_close(y.float().cpu(), ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_dynamic(dtype, M, K, N):
    x, w, b = make(M, K, N, dtype)
    w_q, w_scale, w_sum = quantize_int8_weight(w)
    y = tq.int8_dynamic_linear(*on(x, w_q, w_scale, b))
    ref = int8_dynamic_linear_reference(x.float(), w_q, w_scale, w_sum, b)
    torch.testing.assert_close(y.float().cpu(), ref, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group", [64, 256])  # the kernel's K step shrinks to divide the group (kernels.quant)
def test_int4_weight(dtype, M, K, N, scale_dtype, group):
    x, w, b = make(M, K, N, dtype)
    w_packed, w_scale = quantize_int4_weight(w, group, scale_dtype)
    if DEVICE == "cpu" and scale_dtype == torch.bfloat16:
        w_scale_k = w_scale.float()  # the interpreter has no bf16 loads; the scale values are identical
    else:
        w_scale_k = w_scale
    y = tq.int4_weight_linear(*on(x, w_packed, w_scale_k), group, *on(b), N)
    ref = int4_weight_linear_reference(x.float(), w_packed, w_scale, group, b, N)
    torch.testing.assert_close(y.float().cpu(), ref, **tol(dtype))


@pytest.mark.parametrize("K", [1, 130, 2049])  # 2049: more than one 1024-wide block per row
def test_row_quantization_is_bit_exact(K):
    """The fused per-token prologue (one launch) against the references, bit for bit: levels, scales,
    zero padding, an all-zero row, and exact .5 ties (round half to even)."""
    from fasttrain.ops.reference import quantize_per_token_int16_reference, quantize_per_token_reference

    g = torch.Generator().manual_seed(K)
    x = torch.randn(5, K, generator=g)
    x[1] = 0.0
    x[2, : min(K, 4)] = torch.tensor([127.0, 0.5, 1.5, -2.5])[: min(K, 4)]  # x * 127 / 127 = x: ties
    Kp = (K + 63) // 64 * 64
    q, r = tq._quantize_rows(*on(x), Kp, 127, levels=True)
    q_ref, r_ref = quantize_per_token_reference(x)
    assert torch.equal(q[:, :K].cpu(), q_ref) and torch.equal(r.cpu(), r_ref)
    assert not q[:, K:].any()
    xr, r16 = tq._quantize_rows(*on(x), Kp, 32639, levels=False)
    q16, s16 = quantize_per_token_int16_reference(x)
    assert torch.equal(r16.cpu(), s16)
    assert torch.equal(xr[:, :K].cpu(), q16.float() * s16[:, None]) and not xr[:, K:].any()
