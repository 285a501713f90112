"""Quantized inference, fasttrain vs the best torch / onnxruntime equivalents, interleaved in the same run.

1. MLP 1024 -> 4096 -> 4096 -> 1024 (25M params) at batch 1 and 64: fasttrain int8-dynamic
   (fasttrain.quant.quantize) vs torch.ao quantize_dynamic (int8, fbgemm) vs ORT int8 (its quantize_dynamic
   of the fp32 export) vs torch fp32. Issue target: batch 1 at least as fast as the best other int8; batch 64
   within 1.2x of it.
2. Two 8192 x 8192 layers (134M params; int8 weights 134 MB >> 32 MB L3) at batch 1: int4-weight vs int8-weight
   (target >= 1.6x) and int8-weight vs torch fp32 (target >= 1.8x), with weight GB/s against the box's read
   bandwidth measured in the same run. At batch 1 these layers are pure weight streaming.
3. The int8 artifacts of fasttrain.export.onnx (dynamic and static QDQ) on ORT vs what ORT's own
   quantize_dynamic makes of the same fp32 export, batch 1 and 64.

Each case first checks the timed fasttrain op against its reference (fasttrain.ops.reference) so a wrong
answer is never timed.

    pytest benchmarks/bench_quant.py -s -q      # full (prints ratios and GB/s)
    pytest benchmarks --benchmark-disable       # smoke (tiny sizes, one round)
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from fasttrain._ext import num_threads
from fasttrain.bench import interleaved, memory_bandwidth
from fasttrain.ops import (
    int4_weight_linear,
    int8_dynamic_linear,
    int8_weight_linear,
    quantize_int4_weight,
    quantize_int8_weight,
)
from fasttrain.ops.reference import (
    int4_weight_linear_reference,
    int8_dynamic_linear_reference,
    int8_weight_linear_reference,
)
from fasttrain.quant import quantize


def mlp(widths, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers).eval()


def torch_quantize_dynamic(model):
    # torch.ao's eager quantization is deprecated (removal planned): exactly those two messages are filtered.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


@pytest.fixture(scope="module")
def bandwidth(request):
    smoke = request.config.getoption("benchmark_disable")
    return memory_bandwidth(nbytes=(8 << 20) if smoke else (512 << 20), rounds=1 if smoke else 7)


@pytest.fixture(scope="module")
def mlp_setup(request, tmp_path_factory):
    """The fp32 MLP, its fasttrain / torch int8 versions and, with onnxruntime, ORT sessions."""
    smoke = request.config.getoption("benchmark_disable")
    widths = [64, 128, 128, 64] if smoke else [1024, 4096, 4096, 1024]
    fp32 = mlp(widths)
    ours = copy.deepcopy(fp32)
    quantize(ours, "int8-dynamic")
    setup = {"widths": widths, "fp32": fp32, "fasttrain": ours, "torch_int8": torch_quantize_dynamic(fp32), "ort": {}}
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from fasttrain.export import onnx as export_onnx
    except ImportError:
        return setup
    d = tmp_path_factory.mktemp("onnx")
    example = torch.randn(4, widths[0])
    calib = [torch.randn(16, widths[0]) for _ in range(4)]
    dyn = export_onnx(fp32, example, d / "dyn.onnx", quantize="dynamic", latency_rounds=0, verbose=False)
    sta = export_onnx(fp32, example, d / "sta.onnx", quantize="static", calibration=calib, latency_rounds=0,
                      verbose=False, min_sqnr_db=0.0, min_top1_agreement=0.0)
    quantize_dynamic(str(d / "dyn.onnx"), str(d / "ort_own.int8.onnx"), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = num_threads(), 1
    # ORT's pool spin-waits after every run by default; interleaved with torch / fasttrain (OpenMP) on 2
    # cores, that spinning steals the core the next candidate needs (seen: 20-40x slowdowns of the others).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, path in [("ort_fp32", dyn.fp32_path), ("ort_int8", d / "ort_own.int8.onnx"),
                       ("export_dynamic", dyn.quantized_path), ("export_static", sta.quantized_path)]:
        setup["ort"][name] = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    # A second session of the very same file: how far two identical artifacts' timings drift apart
    # (weight placement, order) is the noise floor of the export-vs-ORT comparison.
    setup["ort"]["ort_int8_again"] = ort.InferenceSession(str(d / "ort_own.int8.onnx"), sess_options=opts,
                                                          providers=["CPUExecutionProvider"])
    setup["exporter"] = dyn.exporter
    setup["weights"] = {"dynamic": dyn.weight_granularity, "static": sta.weight_granularity,
                        "dynamic_sqnr_db": dyn.sqnr_db_candidates}
    return setup


def _ort_fn(sess, x):
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feeds)


@pytest.mark.parametrize("batch", [1, 64])
def test_mlp_int8_dynamic(benchmark, smoke, mlp_setup, batch):
    s = mlp_setup
    x = torch.randn(batch, s["widths"][0])
    first = s["fasttrain"][0]
    guard = int8_dynamic_linear(x, first.w_q, first.w_scale, first.w_sum, first.bias)
    torch.testing.assert_close(guard, int8_dynamic_linear_reference(x, first.w_q, first.w_scale, first.w_sum, first.bias),
                               rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        fns = {"fasttrain": lambda: s["fasttrain"](x), "torch_int8": lambda: s["torch_int8"](x),
               "torch_fp32": lambda: s["fp32"](x)}
        for name in ("ort_int8", "ort_fp32"):
            if name in s["ort"]:
                fns[name] = _ort_fn(s["ort"][name], x)
        t = interleaved(fns, rounds=1 if smoke else 31, warmup=0 if smoke else 3)
    ms = {k: v.median * 1e3 for k, v in t.items()}
    others = [k for k in ("torch_int8", "ort_int8") if k in ms]
    best = min(others, key=ms.get)
    result = {"batch": batch, **{f"{k}_ms": v for k, v in ms.items()}, "best_other": best,
              "speedup_vs_best_other": ms[best] / ms["fasttrain"], "speedup_vs_torch_fp32": ms["torch_fp32"] / ms["fasttrain"]}
    benchmark.extra_info.update(result)
    print(f"\nMLP {'->'.join(map(str, s['widths']))} batch {batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
          + f"; fasttrain vs best other int8 ({best}): {result['speedup_vs_best_other']:.2f}x "
          f"(target >= {1.0 if batch == 1 else 1 / 1.2:.2f}x)")
    with torch.no_grad():
        benchmark.pedantic(s["fasttrain"], args=(x,), rounds=1 if smoke else 11, iterations=1)


@pytest.fixture(scope="module")
def wide_setup(request):
    smoke = request.config.getoption("benchmark_disable")
    width = 256 if smoke else 8192
    fp32 = mlp([width, width, width])
    int8, int4 = copy.deepcopy(fp32), copy.deepcopy(fp32)
    quantize(int8, "int8-weight")
    quantize(int4, "int4-weight", group_size=128)
    return {"width": width, "fp32": fp32, "int8": int8, "int4": int4}


def test_wide_weight_only_batch1(benchmark, smoke, bandwidth, wide_setup):
    s = wide_setup
    x = torch.randn(1, s["width"])
    # Guards on the first 64 output channels of the first layer (full-size references would need 0.5 GB).
    l8, l4 = s["int8"][0], s["int4"][0]
    w_q, w_scale = l8.w_q[:4].contiguous(), l8.w_scale[:64].contiguous()  # 4 VNNI blocks of 16 channels
    torch.testing.assert_close(int8_weight_linear(x, w_q, w_scale), int8_weight_linear_reference(x, w_q, w_scale),
                               rtol=1e-4, atol=1e-4)
    w_p, s4 = l4.w_packed[:4].contiguous(), l4.w_scale[:4].contiguous()  # blocked scales: the same 4 blocks
    torch.testing.assert_close(int4_weight_linear(x, w_p, s4, 128, None, 64),
                               int4_weight_linear_reference(x, w_p, s4, 128, None, 64), rtol=1e-4, atol=1e-4)
    n_params = sum(m.weight.numel() for m in s["fp32"] if isinstance(m, nn.Linear))
    nbytes = {"fp32": 4 * n_params,
              "int8": sum(m.weight_bytes() for m in s["int8"] if hasattr(m, "weight_bytes")),
              "int4": sum(m.weight_bytes() for m in s["int4"] if hasattr(m, "weight_bytes"))}
    with torch.no_grad():
        t = interleaved({"int4": lambda: s["int4"](x), "int8": lambda: s["int8"](x), "fp32": lambda: s["fp32"](x)},
                        rounds=1 if smoke else 31, warmup=0 if smoke else 3)
    ms = {k: v.median * 1e3 for k, v in t.items()}
    gbps = {k: nbytes[k] / (ms[k] / 1e3) / 1e9 for k in ms}
    result = {"params": n_params, **{f"{k}_ms": v for k, v in ms.items()}, **{f"{k}_weight_gbps": v for k, v in gbps.items()},
              "int4_vs_int8": ms["int8"] / ms["int4"], "int8_vs_torch_fp32": ms["fp32"] / ms["int8"], **bandwidth}
    benchmark.extra_info.update(result)
    print(f"\n{n_params / 1e6:.0f}M params ({s['width']}-wide) batch 1: int4 {ms['int4']:.2f} ms ({gbps['int4']:.1f} GB/s), "
          f"int8 {ms['int8']:.2f} ms ({gbps['int8']:.1f} GB/s), torch fp32 {ms['fp32']:.2f} ms ({gbps['fp32']:.1f} GB/s); "
          f"int4 vs int8 {result['int4_vs_int8']:.2f}x (target 1.6x), int8 vs fp32 {result['int8_vs_torch_fp32']:.2f}x "
          f"(target 1.8x); box read {bandwidth['read_gbps']:.1f} GB/s, copy {bandwidth['copy_gbps']:.1f} GB/s")
    with torch.no_grad():
        benchmark.pedantic(s["int4"], args=(x,), rounds=1 if smoke else 11, iterations=1)


@pytest.mark.parametrize("batch", [1, 64])
def test_exported_int8_vs_ort_quantize_dynamic(benchmark, smoke, mlp_setup, batch):
    s = mlp_setup
    if not s["ort"]:
        pytest.skip("needs `pip install 'fasttrain[onnx]'`")
    x = torch.randn(batch, s["widths"][0])
    fns = {k: _ort_fn(s["ort"][k], x) for k in ("export_dynamic", "export_static", "ort_int8", "ort_int8_again")}
    t = interleaved(fns, rounds=1 if smoke else 31, warmup=0 if smoke else 3)
    ms = {k: v.median * 1e3 for k, v in t.items()}
    result = {"batch": batch, "exporter": s["exporter"], "weights": s["weights"], **{f"{k}_ms": v for k, v in ms.items()},
              "ort_own_vs_export_dynamic": ms["ort_int8"] / ms["export_dynamic"],
              "ort_own_vs_export_static": ms["ort_int8"] / ms["export_static"],
              "ort_own_vs_same_file_again": ms["ort_int8"] / ms["ort_int8_again"]}
    benchmark.extra_info.update(result)
    print(f"\nORT batch {batch}: fasttrain export dynamic {ms['export_dynamic']:.3f} ms, static QDQ {ms['export_static']:.3f} ms, "
          f"ORT's own quantize_dynamic {ms['ort_int8']:.3f} ms; own/export: dynamic {result['ort_own_vs_export_dynamic']:.2f}x, "
          f"static {result['ort_own_vs_export_static']:.2f}x (noise floor: ORT's own file in a second session "
          f"{result['ort_own_vs_same_file_again']:.2f}x); export's weight scales: dynamic "
          f"{s['weights']['dynamic']} (candidates' SQNR: "
          f"{', '.join(f'{g} {v:.1f} dB' for g, v in s['weights']['dynamic_sqnr_db'].items())}), static "
          f"{s['weights']['static']}")
    benchmark.pedantic(fns["export_dynamic"], rounds=1 if smoke else 11, iterations=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton kernels)")
@pytest.mark.parametrize("batch", [1, 64])
def test_quant_cuda(benchmark, smoke, batch):
    """The Triton kernels on CUDA, bf16 activations: two 8192 x 8192 layers (134M params; smoke: 256-wide)
    through fasttrain.quant.quantize (int8-weight, int8-dynamic, int4-weight, group 128) vs the same model
    in bf16 (cuBLAS), interleaved, with weight GB/s against the GPU's copy bandwidth measured in the same
    run. Each timed call runs the model REPS times, so launch latency is amortised as in a decode loop.
    Guard: every quantized model's output against the bf16 model's (SQNR) before anything is timed."""
    width = 256 if smoke else 8192
    reps, rounds = (1, 1) if smoke else (20, 21)
    base = mlp([width, width, width]).cuda()
    models = {"bf16": copy.deepcopy(base).bfloat16()}
    for scheme in ("int8-weight", "int8-dynamic", "int4-weight"):
        models[scheme] = copy.deepcopy(base)
        quantize(models[scheme], scheme, group_size=128)
    del base
    x = torch.randn(batch, width, device="cuda", dtype=torch.bfloat16)
    min_db = {"int8-weight": 30.0, "int8-dynamic": 25.0, "int4-weight": 15.0}
    with torch.no_grad():
        ref = models["bf16"](x).float()
        sqnr = {k: float(20 * torch.log10(ref.norm() / (ref - models[k](x).float()).norm())) for k in min_db}
    assert all(sqnr[k] >= min_db[k] for k in min_db), sqnr
    nbytes = {"bf16": 2 * 2 * width * width,
              **{k: sum(m.weight_bytes() for m in models[k] if hasattr(m, "weight_bytes")) for k in min_db}}
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    fns = {k: (lambda m=m: [m(x) for _ in range(reps)]) for k, m in models.items()}
    fns["copy"] = lambda: dst.copy_(src)
    with torch.no_grad():
        t = interleaved(fns, rounds=rounds, warmup=0 if smoke else 3, sync=torch.cuda.synchronize)
    copy_gbps = 2 * src.numel() * 4 / t["copy"].median / 1e9
    us = {k: t[k].median / reps * 1e6 for k in models}
    gbps = {k: nbytes[k] / (us[k] / 1e6) / 1e9 for k in models}
    result = {"batch": batch, "width": width, "device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps,
              **{f"{k}_us": v for k, v in us.items()}, **{f"{k}_weight_gbps": v for k, v in gbps.items()},
              **{f"{k}_vs_bf16": us["bf16"] / us[k] for k in min_db}, **{f"{k}_sqnr_db": v for k, v in sqnr.items()}}
    benchmark.extra_info.update(result)
    print(f"\nCUDA quantized linears, 2 x {width}-wide, batch {batch}, bf16 x, {result['device']} (copy "
          f"{copy_gbps:.0f} GB/s): " + "; ".join(
              f"{k} {us[k]:.1f} us ({gbps[k]:.0f} GB/s weights" + (f", {us['bf16'] / us[k]:.2f}x bf16, "
                                                                   f"{sqnr[k]:.1f} dB)" if k in min_db else ")")
              for k in models))
    with torch.no_grad():
        benchmark.pedantic(models["int8-weight"], args=(x,), rounds=1 if smoke else 11, iterations=1)
