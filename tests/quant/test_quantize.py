"""fasttrain.quant.quantize: layer replacement for every scheme, accuracy against the fp32 model, the
report of what was not quantized, skip patterns, state_dict save/load, bad arguments."""

import io

import pytest
import torch
from torch import nn

from fasttrain.quant import (
    Int4WeightLinear,
    Int8DynamicLinear,
    Int8WeightLinear,
    QuantizedLinear,
    quantize,
)

SCHEME_TYPES = {"int8-dynamic": Int8DynamicLinear, "int8-weight": Int8WeightLinear, "int4-weight": Int4WeightLinear}
# Output SQNR of the net below vs fp32 (measured: ~37 / ~43 / ~18 dB); bars sit a few dB under.
MIN_DB = {"int8-dynamic": 33.0, "int8-weight": 38.0, "int4-weight": 15.0}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 130)
        self.mlp = nn.Sequential(nn.Linear(130, 257), nn.GELU(), nn.Linear(257, 64))
        self.norm = nn.LayerNorm(64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)  # out_proj is a Linear subclass
        self.head = nn.Linear(64, 7)

    def forward(self, tokens):
        h = self.norm(self.mlp(self.emb(tokens)))
        return self.head(h + self.attn(h, h, h, need_weights=False)[0])


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net().eval()


def sqnr_db(ref, x):
    return float(20 * torch.log10(ref.norm() / (ref - x).norm()))


TOKENS = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("scheme", list(SCHEME_TYPES))
def test_quantize_replaces_linears_and_stays_close(scheme):
    net = make_net()
    with torch.no_grad():
        ref = net(TOKENS)
    report = quantize(net, scheme, group_size=64)
    assert [q[0] for q in report.quantized] == ["mlp.0", "mlp.2", "head"]
    for name in ("mlp.0", "mlp.2", "head"):
        assert type(net.get_submodule(name)) is SCHEME_TYPES[scheme]
    # Small, odd in_features pay for padding (130 -> 192): 2.5x / 4.5x here, ~4x / ~7x on 1024-wide layers.
    assert report.bytes_after < report.bytes_before / (2.5 if scheme != "int4-weight" else 4.5)
    with torch.no_grad():
        out = net(TOKENS)
    assert out.shape == ref.shape and sqnr_db(ref, out) >= MIN_DB[scheme]


def test_report_lists_what_was_not_quantized():
    net = make_net()
    report = quantize(net, "int8-dynamic", skip=["head"])
    skipped = {name: (kind, why) for name, kind, why in report.skipped}
    assert skipped["emb"] == ("Embedding", "unsupported layer type")
    assert skipped["norm"][0] == "LayerNorm"
    assert skipped["attn.out_proj"][0] == "NonDynamicallyQuantizableLinear" and "subclass" in skipped["attn.out_proj"][1]
    assert skipped["attn"][0] == "MultiheadAttention"
    assert skipped["head"][1] == "matched `skip`" and type(net.head) is nn.Linear
    text = str(report)
    assert "2 layer(s) quantized" in text and "emb (Embedding): unsupported layer type" in text


def test_skip_accepts_patterns_and_a_single_name():
    net = make_net()
    report = quantize(net, "int8-weight", skip="mlp.*")
    assert [q[0] for q in report.quantized] == ["head"]
    assert type(net.mlp[0]) is nn.Linear


@pytest.mark.parametrize("scheme", list(SCHEME_TYPES))
def test_state_dict_round_trip(scheme):
    net = make_net()
    quantize(net, scheme, group_size=64, scale_dtype=torch.bfloat16)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    fresh = make_net(seed=1)  # different weights: everything must come from the checkpoint
    quantize(fresh, scheme, group_size=64, scale_dtype=torch.bfloat16)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, map_location="cpu", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS), net(TOKENS))
    packed = "w_packed" if scheme == "int4-weight" else "w_q"
    assert f"head.{packed}" in net.state_dict() and "head.weight" not in net.state_dict()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs_keep_their_dtype(dtype):
    lin = nn.Linear(70, 9)
    q = Int8WeightLinear.from_linear(lin)
    x = torch.randn(4, 70)
    y = q(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), q(x), rtol=2e-2, atol=2e-2)


def test_quantize_twice_is_a_no_op_for_quantized_layers():
    net = make_net()
    quantize(net, "int8-dynamic")
    report = quantize(net, "int4-weight", group_size=64)
    assert report.quantized == [] and all(isinstance(net.get_submodule(n), QuantizedLinear) for n in ("mlp.0", "head"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown scheme 'int3'.*int8-dynamic"):
        quantize(make_net(), "int3")
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize(make_net(), "int4-weight", group_size=100)
    with pytest.raises(TypeError, match="must be an nn.Module"):
        quantize("model")
    with pytest.raises(TypeError, match="bare nn.Linear"):
        quantize(nn.Linear(4, 4))


@pytest.mark.parametrize("cls", [Int8DynamicLinear, Int8WeightLinear])
def test_int8_version_1_state_dict_is_repacked(cls):
    # A checkpoint from before the VNNI-blocked layout holds w_q row-major (N, Kp): loading repacks it.
    from fasttrain.ops.reference import unblock_int8_reference

    lin = nn.Linear(70, 37)
    q = cls.from_linear(lin)
    old = {k: v.clone() for k, v in q.state_dict().items()}
    old["w_q"] = unblock_int8_reference(old["w_q"], 37).contiguous()
    assert old["w_q"].shape == (37, 128)
    fresh = cls(70, 37)
    fresh.load_state_dict(old)
    x = torch.randn(3, 70)
    assert torch.equal(fresh(x), q(x)) and fresh.w_q.shape == (3, 32, 16, 4)
    old["w_q"] = old["w_q"][:36].contiguous()
    with pytest.raises(RuntimeError, match="version-1.*shape \\(36, 128\\).*needs \\(37, 128\\)"):
        cls(70, 37).load_state_dict(old)


def test_int4_version_1_state_dict_is_repacked():
    from fasttrain.ops.reference import int4_scale_reference, unpack_int4_reference

    q = Int4WeightLinear.from_linear(nn.Linear(70, 37), group_size=64)
    old = {k: v.clone() for k, v in q.state_dict().items()}
    u = (unpack_int4_reference(old["w_packed"], 37) + 8).reshape(37, -1, 2, 16)  # version 1: 32-value nibble blocks
    old["w_packed"] = (u[:, :, 0] | (u[:, :, 1] << 4)).to(torch.uint8).reshape(37, -1)
    old["w_scale"] = int4_scale_reference(old["w_scale"], 37).contiguous()  # version 1: (N, G)
    fresh = Int4WeightLinear(70, 37, group_size=64)
    fresh.load_state_dict(old)
    x = torch.randn(3, 70)
    assert torch.equal(fresh(x), q(x)) and fresh.w_packed.shape == (3, 16, 16, 4)
    old["w_packed"] = old["w_packed"][:, :16].contiguous()
    with pytest.raises(RuntimeError, match="version-1.*needs \\(37, 64\\)"):
        Int4WeightLinear(70, 37, group_size=64).load_state_dict(old)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_version_2_state_dict_is_repacked(scale_dtype):
    # Version 2 (before the blocked scales) stored w_scale group-major (G, N); loading blocks it.
    from fasttrain.ops.reference import int4_scale_reference

    q = Int4WeightLinear.from_linear(nn.Linear(200, 37), group_size=64, scale_dtype=scale_dtype)
    old = {k: v.clone() for k, v in q.state_dict().items()}
    old["w_scale"] = int4_scale_reference(old["w_scale"], 37).T.contiguous()
    assert old["w_scale"].shape == (4, 37)
    fresh = Int4WeightLinear(200, 37, group_size=64, scale_dtype=scale_dtype)
    fresh.load_state_dict(old)
    x = torch.randn(3, 200)
    assert torch.equal(fresh.w_scale, q.w_scale) and torch.equal(fresh(x), q(x))
    old["w_scale"] = old["w_scale"][:, :36].contiguous()
    with pytest.raises(RuntimeError, match="version-2.*shape \\(4, 36\\).*needs \\(4, 37\\)"):
        Int4WeightLinear(200, 37, group_size=64, scale_dtype=scale_dtype).load_state_dict(old)


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int8-weight", "int4-weight"])
def test_eager_fast_path_matches_op_and_pickles(scheme):
    # The eager CPU path runs the kernel bound to the checked buffers' addresses: same result as the op, leading
    # dims and dtypes kept, rebound when a buffer is replaced, and the module still pickles (torch.save) after it.
    model = nn.Sequential(nn.Linear(70, 37))
    quantize(model, scheme, group_size=64) if scheme == "int4-weight" else quantize(model, scheme)
    q = model[0]
    x = torch.randn(2, 3, 70)
    with torch.no_grad():
        first, second = q(x), q(x)  # checked through the op, then the bound kernel
        assert second.shape == (2, 3, 37) and torch.equal(first, second)
        assert torch.equal(q(x.reshape(6, 70)), second.reshape(6, 37))
        assert q(x.bfloat16()).dtype == torch.bfloat16 and q(x.half()).dtype == torch.float16
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(loaded(x), second)
        old_bias = q.bias.clone()
        q.bias = torch.zeros(37)  # replaced buffer: checked and bound again
        y = q(x)
        assert torch.equal(y, q(x)) and torch.allclose(y + old_bias, second, atol=1e-5)
