"""`fasttrain demo` end to end on a tiny model: tokenize the stdlib, train, sample, checkpoint, PNG,
ONNX export with int8 verification."""

import json

from fasttrain.cli import main
from fasttrain.train import load_checkpoint


def test_demo_small_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--small", "--seconds", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tokens/s" in text and "val loss" in text and "sample:" in text
    state = load_checkpoint(out / "charlm.ckpt")
    assert state["counters"]["global_step"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "charlm.onnx").is_file() and (out / "charlm.int8.onnx").is_file()
    report = json.loads((out / "charlm.report.json").read_text())["report"]
    assert report["exporter"] in ("dynamo", "torchscript")
    assert report["sqnr_db"] >= report["min_sqnr_db"]
