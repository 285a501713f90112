"""fasttrain.ops int8 / int4 linear ops against their pure-torch references (dequantize, then matmul) on
every ISA path, for odd shapes (M in {1, 7, 33}, K not a multiple of 64 or of the group size, N = 1),
fp32 / bf16 activations, fp32 / bf16 int4 scales; SQNR against the unquantized layer; bad input."""

import pytest
import torch

from fasttrain._ext import _C
from fasttrain.ops import (
    int4_weight_linear,
    int8_dynamic_linear,
    int8_weight_linear,
    quantize_int4_weight,
    quantize_int8_weight,
)
from fasttrain.ops.quant import repack_int4_scale, repack_int4_weight, repack_int8_weight
from fasttrain.ops.reference import (
    dequantize_int4_reference,
    int4_scale_reference,
    int4_weight_linear_reference,
    int8_dynamic_linear_reference,
    int8_weight_linear_reference,
    quantize_per_token_int16_reference,
    quantize_per_token_reference,
    unblock_int8_reference,
    unpack_int4_reference,
)

MS = [1, 7, 33]
# (K, N): K = 1 and 7 (below one vector), 130 (not a multiple of 64 or 128), 4099 (odd, > group), 1024.
KN = [(1, 1), (7, 5), (130, 1), (4099, 3), (1024, 67)]
EPS32 = torch.finfo(torch.float32).eps


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """20 log10(|ref| / |ref - x|): the quantization literature's signal-to-noise ratio (torchao's test metric)."""
    ref, x = ref.double(), x.double()
    return float(20 * torch.log10(ref.norm() / (ref - x).norm()))


def make(M, K, N, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / K**0.5,
            torch.randn(N, generator=g) if bias else None)


def fp_tolerance(ours64_err: torch.Tensor, ref32: torch.Tensor, ref64: torch.Tensor) -> None:
    """Low-precision rule: our error vs fp64 at most 2x that of torch's fp32 matmul of the same dequantized
    weights, plus a floor of a few fp32 ulps of the output scale (torch can be exact by luck on tiny K)."""
    torch_err = (ref32.double() - ref64).abs().max().item()
    floor = 8 * EPS32 * ref64.abs().max().item()
    assert ours64_err.abs().max().item() <= 2 * torch_err + floor


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N", KN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_dynamic_matches_reference(isa, M, K, N, dtype):
    x, w, b = make(M, K, N, bias=N != 1)
    x = x.to(dtype)
    w_q, w_scale, w_sum = quantize_int8_weight(w)
    ours = int8_dynamic_linear(x, w_q, w_scale, w_sum, b)
    ref = int8_dynamic_linear_reference(x, w_q, w_scale, w_sum, b)
    assert ours.shape == (M, N) and ours.dtype == dtype
    # The integer dot is exact on every path, so only the final fp32 scale/bias rounding may differ, and
    # in bf16 that can flip the last rounding: one bf16 ulp (2^-7 relative).
    tol = 4 * EPS32 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(ours.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N", KN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_weight_matches_reference(isa, M, K, N, dtype):
    x, w, b = make(M, K, N)
    x = x.to(dtype)
    w_q, w_scale, _ = quantize_int8_weight(w)
    ours = int8_weight_linear(x, w_q, w_scale, b)
    assert ours.shape == (M, N) and ours.dtype == dtype
    ref64 = int8_weight_linear_reference(x, w_q, w_scale, b, dtype=torch.float64)
    ref32 = int8_weight_linear_reference(x, w_q, w_scale, b)
    if dtype == torch.float32:
        fp_tolerance(ours.double() - ref64, ref32, ref64)
    else:  # the output is rounded once to bf16: compare with the reference rounded the same way
        torch.testing.assert_close(ours, ref32.to(dtype), rtol=1.6e-2, atol=1e-2)


@pytest.mark.parametrize("M", MS)
@pytest.mark.parametrize("K,N", KN)
@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_weight_matches_reference(isa, M, K, N, group_size, scale_dtype):
    x, w, b = make(M, K, N)
    w_packed, w_scale = quantize_int4_weight(w, group_size, scale_dtype)
    Kp = -(-K // group_size) * group_size
    assert w_packed.shape == (-(-N // 16), Kp // 8, 16, 4) and w_scale.shape == (-(-N // 16), Kp // group_size, 16)
    assert w_scale.dtype == scale_dtype
    ours = int4_weight_linear(x, w_packed, w_scale, group_size, b)
    ref64 = int4_weight_linear_reference(x, w_packed, w_scale, group_size, b, dtype=torch.float64)
    ref32 = int4_weight_linear_reference(x, w_packed, w_scale, group_size, b)
    fp_tolerance(ours.double() - ref64, ref32, ref64)
    # Without a bias N comes from out_features (the blocked scales only hold round_up(N, 16)).
    ours = int4_weight_linear(x, w_packed, w_scale, group_size, None, N)
    ref64 = int4_weight_linear_reference(x, w_packed, w_scale, group_size, None, N, dtype=torch.float64)
    ref32 = int4_weight_linear_reference(x, w_packed, w_scale, group_size, None, N)
    assert ours.shape == (M, N)
    fp_tolerance(ours.double() - ref64, ref32, ref64)


def test_int4_bf16_activations(isa):
    x, w, b = make(7, 130, 5)
    w_packed, w_scale = quantize_int4_weight(w, 64)
    ours = int4_weight_linear(x.bfloat16(), w_packed, w_scale, 64, b)
    assert ours.dtype == torch.bfloat16
    ref = int4_weight_linear_reference(x.bfloat16(), w_packed, w_scale, 64, b)
    torch.testing.assert_close(ours, ref.bfloat16(), rtol=1.6e-2, atol=1e-2)


def test_leading_dims_are_kept(isa):
    x, w, b = make(6, 70, 9)
    w_q, w_scale, w_sum = quantize_int8_weight(w)
    y = int8_dynamic_linear(x.reshape(2, 3, 70), w_q, w_scale, w_sum, b)
    assert y.shape == (2, 3, 9)
    torch.testing.assert_close(y.reshape(6, 9), int8_dynamic_linear(x, w_q, w_scale, w_sum, b))


def test_packers_round_trip():
    _, w, _ = make(1, 130, 5)
    w_q, w_scale, w_sum = quantize_int8_weight(w)
    assert w_q.shape == (1, 48, 16, 4)  # (Np / 16, Kp / 4, 16, 4): N = 5 padded to 16, K = 130 to 192
    rows = unblock_int8_reference(w_q, 16)
    assert torch.all(rows[:, 130:] == 0) and torch.all(rows[5:] == 0)
    rows = rows[:5]
    assert torch.equal(w_sum, rows.sum(1, dtype=torch.int32))
    # Half a quantization step is the largest rounding error of a symmetric round-to-nearest quantizer.
    assert torch.all((rows[:, :130].float() * w_scale[:, None] - w).abs() <= w_scale[:, None] / 2 + 1e-7)
    w_packed, s = quantize_int4_weight(w, 64)
    deq = dequantize_int4_reference(w_packed, s, 64, 5)
    assert torch.all(deq[:, 130:] == 0)
    assert s.shape == (1, 3, 16) and torch.all(s[:, :, 5:] == 1)  # (Np / 16, G, 16), padding channels 1
    step = int4_scale_reference(s, 5).repeat_interleave(64, dim=1)[:, :130]
    assert torch.all((deq[:, :130] - w).abs() <= step / 2 + 1e-7)


def test_int8_blocked_layout_and_version_1_repack():
    # Element [b, k4, j, kk] of the VNNI-blocked layout is W[16 b + j, 4 k4 + kk] (csrc/quant/quant.h).
    _, w, _ = make(1, 70, 37)
    w_q, w_scale, w_sum = quantize_int8_weight(w)
    rows = unblock_int8_reference(w_q, 37)
    for n, k in [(0, 0), (5, 3), (17, 66), (36, 69), (33, 4)]:
        assert w_q[n // 16, k // 4, n % 16, k % 4] == rows[n, k]
    # A version-1 (row-major (N, Kp)) tensor repacks to the same bytes and is refused by the ops, naming the fix.
    v1 = rows.contiguous()
    assert v1.shape == (37, 128) and torch.equal(repack_int8_weight(v1), w_q)
    assert repack_int8_weight(w_q) is w_q
    with pytest.raises(ValueError, match="layout version 1.*repack_int8_weight"):
        int8_weight_linear(torch.randn(2, 70), v1, w_scale)
    with pytest.raises(ValueError, match="multiple of 64 columns"):
        repack_int8_weight(v1[:, :70].contiguous())


def test_per_token_quantization_is_symmetric_and_handles_zero_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, s = quantize_per_token_reference(x)
    assert torch.equal(q[0], torch.zeros(3, dtype=torch.int8)) and s[0] == 0
    assert q[1].tolist() == [64, -127, 32] and torch.isclose(s[1], torch.tensor(2 / 127))
    w_q, w_scale, w_sum = quantize_int8_weight(torch.randn(4, 3))
    y = int8_dynamic_linear(x, w_q, w_scale, w_sum, None)
    assert torch.equal(y[0], torch.zeros(4))


# SQNR against the unquantized fp32 layer on a realistic shape (K = 1024, Gaussian weights and activations).
# Thresholds: int8 weights, per channel: ~42 dB measured, so >= 40 dB (the bar). int8 dynamic also
# quantizes Gaussian activations per token (absmax ~ 3.3 sigma costs ~3 dB): ~39 dB measured, bar 36 dB.
# int4, 15 levels per group of 128: ~18.6 dB measured, bar 17 dB.
@pytest.mark.parametrize("scheme,min_db", [("int8-weight", 40.0), ("int8-dynamic", 36.0), ("int4-weight", 17.0)])
def test_sqnr_against_unquantized(isa, scheme, min_db):
    x, w, b = make(33, 1024, 256, seed=3)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
    if scheme == "int4-weight":
        y = int4_weight_linear(x, *quantize_int4_weight(w, 128), 128, b)
    else:
        w_q, w_scale, w_sum = quantize_int8_weight(w)
        y = int8_weight_linear(x, w_q, w_scale, b) if scheme == "int8-weight" else int8_dynamic_linear(x, w_q, w_scale, w_sum, b)
    assert sqnr_db(exact, y) >= min_db


def test_every_isa_path_is_exercised(isa):
    expected = {"avx512": {"avx512vnni", "avx2"}, "avx2": {"avx2"}, "scalar": {"scalar"}}[isa]
    assert _C.quant.kernel_path() in expected


def test_int4_blocked_layout_and_version_1_repack():
    # Byte [b, p, j, kk]: W[16 b + j, 8 p + kk] in the low nibble, W[16 b + j, 8 p + 4 + kk] in the high one.
    _, w, _ = make(1, 130, 37)
    w_packed, w_scale = quantize_int4_weight(w, 64)
    q = unpack_int4_reference(w_packed, 37)
    for n, k in [(0, 0), (5, 3), (17, 66), (36, 129), (33, 4), (20, 7)]:
        byte = int(w_packed[n // 16, k // 8, n % 16, k % 4])
        assert (byte & 15 if k % 8 < 4 else byte >> 4) - 8 == q[n, k]
    # Version 1: (N, Kp / 2), byte j of each 16-byte block = value j (low) | value j + 16 (high).
    u = (q + 8).reshape(37, -1, 2, 16)
    v1 = (u[:, :, 0] | (u[:, :, 1] << 4)).to(torch.uint8).reshape(37, -1)
    assert v1.shape == (37, 96) and torch.equal(repack_int4_weight(v1)[:, :, :5], w_packed[:, :, :5])
    assert torch.equal(repack_int4_weight(v1)[:2], w_packed[:2]) and repack_int4_weight(w_packed) is w_packed
    with pytest.raises(ValueError, match="layout version 1.*repack_int4_weight"):
        int4_weight_linear(torch.randn(2, 130), v1, w_scale, 64, None, 37)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_blocked_scales_and_older_scale_layouts(scale_dtype):
    # Element [b, g, j] of the version-3 scales is the scale of W[16 b + j, group g].
    _, w, _ = make(1, 200, 37)
    w_packed, w_scale = quantize_int4_weight(w, 64, scale_dtype)
    assert w_scale.shape == (3, 4, 16)
    amax = torch.nn.functional.pad(w, (0, 56)).reshape(37, 4, 64).abs().amax(2)
    for n, g in [(0, 0), (15, 3), (16, 1), (36, 2)]:
        assert w_scale[n // 16, g, n % 16] == (amax[n, g] / 7).to(scale_dtype)
    s_ng = int4_scale_reference(w_scale, 37)  # (N, G): version 1; its transpose is version 2
    assert torch.equal(repack_int4_scale(s_ng.T.contiguous(), 37), w_scale)
    assert torch.equal(repack_int4_scale(s_ng.contiguous(), 37, version=1), w_scale)
    assert repack_int4_scale(w_scale, 37) is w_scale
    with pytest.raises(ValueError, match="out_features=36"):
        repack_int4_scale(s_ng.T.contiguous(), 36)
    x = torch.randn(3, 200)
    with pytest.raises(ValueError, match="layout version 1 or 2.*repack_int4_scale"):
        int4_weight_linear(x, w_packed, s_ng.T.contiguous(), 64, None, 37)
    with pytest.raises(ValueError, match="pass out_features"):
        int4_weight_linear(x, w_packed, w_scale, 64)
    with pytest.raises(ValueError, match="round_up\\(N, 16\\) = 16"):
        int4_weight_linear(x, w_packed, w_scale, 64, None, 5)


@pytest.mark.parametrize("M", [1, 7, 33])
@pytest.mark.parametrize("K,N", [(200, 1), (200, 37), (8192 + 64, 17)])
def test_int4_odd_shapes_every_isa(isa, M, K, N):
    # K not a multiple of the group size, N = 1 and N not a multiple of 16, batch-1 and tiled paths.
    x, w, _ = make(M, K, N, seed=5)
    for scale_dtype in (torch.float32, torch.bfloat16):
        w_packed, w_scale = quantize_int4_weight(w, 128, scale_dtype)
        ours = int4_weight_linear(x, w_packed, w_scale, 128, None, N)
        ref64 = int4_weight_linear_reference(x, w_packed, w_scale, 128, None, N, dtype=torch.float64)
        ref32 = int4_weight_linear_reference(x, w_packed, w_scale, 128, None, N)
        fp_tolerance(ours.double() - ref64, ref32, ref64)


def test_int4_activations_are_16_bit_per_token():
    x = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    q, s = quantize_per_token_int16_reference(x)
    assert q[0].tolist() == [0, 0] and s[0] == 0 and q[1].tolist() == [32639, -16320]  # -16319.5: half to even


# ---- bad input --------------------------------------------------------------------------------------


@pytest.fixture
def packed():
    x, w, b = make(3, 130, 4)
    return x, quantize_int8_weight(w), quantize_int4_weight(w, 64), b


def test_wrong_dtypes_raise_type_error(packed):
    x, (w_q, w_scale, w_sum), (w4, s4), b = packed
    with pytest.raises(TypeError, match="`x` has dtype torch.float64"):
        int8_dynamic_linear(x.double(), w_q, w_scale, w_sum, b)
    with pytest.raises(TypeError, match="`w_q` has dtype torch.float32"):
        int8_weight_linear(x, w_q.float(), w_scale, b)
    with pytest.raises(TypeError, match="`w_sum` has dtype torch.int64"):
        int8_dynamic_linear(x, w_q, w_scale, w_sum.long(), b)
    with pytest.raises(TypeError, match="`w_scale` has dtype torch.float16"):
        int4_weight_linear(x, w4, s4.half(), 64, b)
    with pytest.raises(TypeError, match="group_size must be an int"):
        int4_weight_linear(x, w4, s4, 64.0, b)


def test_shape_mismatches_name_the_packer(packed):
    x, (w_q, w_scale, w_sum), (w4, s4), b = packed
    with pytest.raises(ValueError, match="round_up\\(K, 64\\) = 64.*quantize_int8_weight"):
        int8_weight_linear(x[:, :60].contiguous(), w_q, w_scale, b)
    with pytest.raises(ValueError, match="`bias` has shape \\(3,\\), expected \\(4,\\)"):
        int8_weight_linear(x, w_q, w_scale, b[:3])
    with pytest.raises(ValueError, match="quantize_int4_weight"):
        int4_weight_linear(x, w4, s4, 128, b)  # packed for 64: the byte count no longer matches
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize_int4_weight(torch.randn(4, 130), 32)


def test_non_contiguous_and_device_errors(packed):
    x, (w_q, w_scale, w_sum), _, b = packed
    with pytest.raises(ValueError, match="`x` is not contiguous"):
        int8_dynamic_linear(torch.randn(130, 3).T, w_q, w_scale, w_sum, b)
    with pytest.raises(ValueError, match="`w_q` is not contiguous"):
        int8_weight_linear(x, torch.zeros(1, 48, 4, 16, dtype=torch.int8).transpose(2, 3), w_scale, b)
    with pytest.raises(ValueError, match="meta but x is on cpu"):
        int8_weight_linear(x, w_q, w_scale.to("meta"), b)
