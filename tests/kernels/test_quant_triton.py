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
def test_int4_weight(dtype, M, K, N, scale_dtype):
    x, w, b = make(M, K, N, dtype)
    w_packed, w_scale = quantize_int4_weight(w, 64, scale_dtype)
    if DEVICE == "cpu" and scale_dtype == torch.bfloat16:
        w_scale_k = w_scale.float()  # the interpreter has no bf16 loads; the scale values are identical
    else:
        w_scale_k = w_scale
    y = tq.int4_weight_linear(*on(x, w_packed, w_scale_k), 64, *on(b), N)
    ref = int4_weight_linear_reference(x.float(), w_packed, w_scale, 64, b, N)
    torch.testing.assert_close(y.float().cpu(), ref, **tol(dtype))
