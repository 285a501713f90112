"""fasttrain.export.onnx on a real classifier (an MLP trained on sklearn's digits in the test): the int8
artifact must agree with fp32 on >= 99% of top-1 and lose <= 0.5 accuracy points on held-out digits;
rejection below thresholds keeps only the fp32 artifact; the report is atomic JSON with a checksum;
missing onnxruntime names the extra."""

import json
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="export tests need `pip install 'fasttrain[onnx]'`")
datasets = pytest.importorskip("sklearn.datasets", reason="the digits data ships with scikit-learn")

import onnxruntime as ort  # noqa: E402

from fasttrain.export import QuantizationRejected  # noqa: E402
from fasttrain.export import onnx as export_onnx  # noqa: E402
from fasttrain.export._io import read_json_checked  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    """(model, x_train, x_test, y_test): a 64-256-128-10 MLP trained for a few seconds (~96.7% test accuracy)."""
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # One thread: these tiny steps are all overhead, and on a shared 2-core box a second thread only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(12):
            for idx in torch.randperm(len(train), generator=g).split(200):
                loss = nn.functional.cross_entropy(model(x[train[idx]]), y[train[idx]])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), x[train], x[test], y[test]


def accuracy_onnx(path, x, y):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float((torch.from_numpy(out).argmax(1) == y).double().mean())


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_digits_int8_artifact_agrees_with_fp32(digits, tmp_path, mode):
    model, x_train, x_test, y_test = digits
    with torch.no_grad():
        acc_fp32 = float((model(x_test).argmax(1) == y_test).double().mean())
    assert acc_fp32 > 0.93  # the model really learned something, so agreement is not trivial
    path = tmp_path / "digits.onnx"
    report = export_onnx(model, x_train[:8], path, quantize=mode, calibration=x_train.split(100),
                         validation=x_test.split(128), min_sqnr_db=20.0, min_top1_agreement=0.99,
                         latency_rounds=3, verbose=False)
    assert report.passed and report.quantize == mode
    assert report.top1_agreement >= 0.99
    assert report.validation_samples == len(x_test)
    assert report.calibration_batches == (14 if mode == "static" else 0)
    assert report.fp32_max_abs_err < 1e-4  # the fp32 export itself is faithful
    assert report.weight_bytes_int8 < report.weight_bytes_fp32 / 3
    acc_int8 = accuracy_onnx(report.quantized_path, x_test, y_test)
    assert acc_int8 >= acc_fp32 - 0.005  # loses at most 0.5 accuracy points
    assert set(report.latency_ms) == {"fp32", "int8"} and set(report.latency_ms["int8"]) == {"batch_1", "batch_128"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.int8.onnx", "digits.onnx", "digits.report.json"]
    saved = read_json_checked(tmp_path / "digits.report.json")
    assert saved["top1_agreement"] == report.top1_agreement and saved["exporter"] == report.exporter


def test_dynamic_artifact_has_scalar_weight_zero_points(digits, tmp_path):
    """Per-channel int8 weight scales are kept; the all-zero per-channel weight zero points become one
    scalar 0 (ORT's fused kernel is slower with a per-column zero point), with identical outputs."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, x_train, x_test, _ = digits
    report = export_onnx(model, x_train[:8], tmp_path / "d.onnx", quantize="dynamic", weights="per_channel",
                         latency_rounds=0, verbose=False)
    assert report.weight_granularity == "per_channel" and set(report.sqnr_db_candidates) == {"per_channel"}
    graph = onnx.load(str(report.quantized_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    mm = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert len(mm) == 3
    for n in mm:
        assert inits[n.input[3]].shape == () and inits[n.input[3]] == 0
        scale = [v for k, v in inits.items() if k.startswith(n.input[1].removesuffix("_quantized")) and k.endswith("_scale")]
        assert [s.shape for s in scale] == [(inits[n.input[1]].shape[1],)]  # one scale per output channel
    assert not any(k.endswith("zero_point") and v.ndim == 1 and not v.any() for k, v in inits.items())
    # Same outputs as ORT's own per-channel quantize_dynamic of the same fp32 export.
    plain = tmp_path / "plain.onnx"
    quantize_dynamic(str(report.fp32_path), str(plain), weight_type=QuantType.QInt8, per_channel=True)
    outs = []
    for path in (report.quantized_path, plain):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x_test.numpy()})[0])
    np.testing.assert_array_equal(outs[0], outs[1])


def _weight_scale_shapes(path):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[1].removesuffix("_quantized") + "_scale"].shape for n in graph.node if n.op_type == "MatMulInteger"]


def test_weights_auto_keeps_per_tensor_only_within_the_slack(digits, tmp_path, monkeypatch):
    """weights="auto" (dynamic): both granularities are made and verified on the validation data; the
    per-tensor artifact is kept iff its SQNR is within AUTO_SQNR_SLACK_DB of per-channel's. Shown both ways
    by moving the slack, with the scales in the written artifact checked; no candidate file is left."""
    import fasttrain.export.onnx_export as ox

    model, x_train, x_test, _ = digits
    kw = dict(quantize="dynamic", validation=x_test.split(128), latency_rounds=0, verbose=False)
    rep = export_onnx(model, x_train[:8], tmp_path / "a.onnx", **kw)
    pc, pt = rep.sqnr_db_candidates["per_channel"], rep.sqnr_db_candidates["per_tensor"]
    assert pc > 20 and pt > 20
    want = "per_tensor" if pt >= pc - ox.AUTO_SQNR_SLACK_DB else "per_channel"
    assert rep.weight_granularity == want and rep.sqnr_db == rep.sqnr_db_candidates[want]
    for slack, kept in ((pc - pt + 0.5, "per_tensor"), (pc - pt - 0.5, "per_channel")):
        monkeypatch.setattr(ox, "AUTO_SQNR_SLACK_DB", slack)
        rep = export_onnx(model, x_train[:8], tmp_path / f"{kept}.onnx", **kw)
        assert rep.weight_granularity == kept
        shapes = _weight_scale_shapes(rep.quantized_path)
        assert all(s == () for s in shapes) if kept == "per_tensor" else all(len(s) == 1 and s[0] > 1 for s in shapes)
    assert sorted(p.name for p in tmp_path.iterdir() if "int8" in p.name) == [
        "a.int8.onnx", "per_channel.int8.onnx", "per_tensor.int8.onnx"]
    with pytest.raises(ValueError, match="weights must be 'auto', 'per_channel' or 'per_tensor'"):
        export_onnx(model, x_train[:8], tmp_path / "b.onnx", quantize="dynamic", weights="per_row")


def test_exporter_choice_is_recorded(digits, tmp_path):
    model, x_train, *_ = digits
    auto = export_onnx(model, x_train[:4], tmp_path / "a.onnx", latency_rounds=0, verbose=False)
    assert auto.exporter == "dynamo" and auto.exporter_note == "" and auto.quantized_path is None
    legacy = export_onnx(model, x_train[:4], tmp_path / "b.onnx", exporter="torchscript", latency_rounds=0, verbose=False)
    assert legacy.exporter == "torchscript" and legacy.fp32_max_abs_err < 1e-4
    # Both honour the dynamic batch dimension.
    assert accuracy_onnx(tmp_path / "b.onnx", x_train[:33], torch.zeros(33, dtype=torch.long)) >= 0.0


def test_below_threshold_raises_and_keeps_only_fp32(digits, tmp_path, capsys):
    model, x_train, x_test, _ = digits
    path = tmp_path / "strict.onnx"
    with pytest.raises(QuantizationRejected, match="failed verification: SQNR .* \\(min 200.0\\)") as e:
        export_onnx(model, x_train[:8], path, quantize="dynamic", validation=[x_test], min_sqnr_db=200.0,
                    latency_rounds=0)
    assert not e.value.report.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strict.onnx", "strict.report.json"]
    assert read_json_checked(tmp_path / "strict.report.json")["passed"] is False
    assert "REJECTED" in capsys.readouterr().out  # the table is printed even when rejected


def test_report_checksum_detects_tampering(digits, tmp_path):
    model, x_train, *_ = digits
    export_onnx(model, x_train[:4], tmp_path / "m.onnx", latency_rounds=0, verbose=False)
    doc = json.loads((tmp_path / "m.report.json").read_text())
    doc["report"]["fp32_max_abs_err"] = 0.0
    (tmp_path / "m.report.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_json_checked(tmp_path / "m.report.json")


def test_bad_arguments(digits, tmp_path):
    model, x_train, *_ = digits
    with pytest.raises(ValueError, match="quantize must be None, 'dynamic' or 'static'"):
        export_onnx(model, x_train[:4], tmp_path / "m.onnx", quantize="int4")
    with pytest.raises(ValueError, match="needs `calibration`"):
        export_onnx(model, x_train[:4], tmp_path / "m.onnx", quantize="static")
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx(model, x_train[:4], tmp_path / "m.pt")
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx(model, x_train[:4], tmp_path / "missing" / "m.onnx")
    with pytest.raises(TypeError, match="tensor or a non-empty tuple of tensors"):
        export_onnx(model, [1, 2], tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'fasttrain\[onnx\]'"):
        export_onnx(nn.Linear(3, 2), torch.randn(1, 3), tmp_path / "m.onnx")
