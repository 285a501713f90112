"""`fasttrain export`: the checkpoint contract (factory + state_dict + input shape + optional inputs),
its checksum sidecar, and the exit codes."""

import pytest
import torch

pytest.importorskip("onnxruntime", reason="export tests need `pip install 'fasttrain[onnx]'`")

from fasttrain.cli import main  # noqa: E402
from fasttrain.export._io import read_json_checked  # noqa: E402
from fasttrain.export.checkpoint import build_model, load_checkpoint, save_checkpoint  # noqa: E402


def linear_checkpoint(path, with_inputs=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    inputs = torch.randn(300, 64) if with_inputs else None
    return save_checkpoint(path, "torch.nn:Linear", model.state_dict(), [1, 64],
                           factory_kwargs={"in_features": 64, "out_features": 10}, inputs=inputs), model


def test_checkpoint_round_trip(tmp_path):
    path, model = linear_checkpoint(tmp_path / "m.pt")
    assert (tmp_path / "m.pt.sha256").is_file()
    rebuilt = build_model(load_checkpoint(path))
    assert torch.equal(rebuilt.weight, model.weight)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_export_command_writes_verified_artifacts(tmp_path, capsys, mode):
    path, _ = linear_checkpoint(tmp_path / "m.pt")
    # An untrained Linear on random inputs has near-tied logits (~99% agreement at 38 dB), so the top-1 bar
    # is lowered here; the trained digits classifier in test_onnx_export.py holds the 99% bar.
    argv = ["export", "--checkpoint", str(path), "--quantize", mode, "--calib", "128", "--min-top1-agreement", "0.95"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "top-1 agreement" in out
    report = read_json_checked(tmp_path / "m.report.json")
    assert report["validation_samples"] == 172 and report["quantize"] == mode
    assert report["exporter"] == "dynamo", report["exporter_note"]  # a batch-1 input_shape still exports dynamically
    assert report["calibration_batches"] == (2 if mode == "static" else 0)
    assert (tmp_path / "m.int8.onnx").is_file()


def test_export_without_inputs_says_so(tmp_path, capsys):
    path, _ = linear_checkpoint(tmp_path / "m.pt", with_inputs=False)
    assert main(["export", "--checkpoint", str(path), "--calib", "8", "--out", str(tmp_path / "x.onnx")]) == 0
    assert "has no `inputs`" in capsys.readouterr().out and (tmp_path / "x.onnx").is_file()


def test_rejection_exits_2(tmp_path, capsys):
    path, _ = linear_checkpoint(tmp_path / "m.pt")
    assert main(["export", "--checkpoint", str(path), "--quantize", "dynamic", "--min-sqnr-db", "300"]) == 2
    assert "failed verification" in capsys.readouterr().err
    assert not (tmp_path / "m.int8.onnx").exists() and (tmp_path / "m.onnx").is_file()


def test_bad_checkpoints(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["export", "--checkpoint", str(tmp_path / "none.pt")])
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a fasttrain checkpoint"):
        main(["export", "--checkpoint", str(tmp_path / "other.pt")])
    path, _ = linear_checkpoint(tmp_path / "m.pt")
    (tmp_path / "m.pt.sha256").write_text("0" * 64 + "  m.pt\n")
    with pytest.raises(SystemExit, match="does not match its checksum"):
        main(["export", "--checkpoint", str(path)])
    with pytest.raises(ValueError, match="cannot be imported"):
        save_checkpoint(tmp_path / "n.pt", "no_such_pkg:make", {}, [1, 3])
    with pytest.raises(SystemExit, match="--calib must be a positive"):
        main(["export", "--checkpoint", str(path), "--calib", "0"])


def test_export_reads_trainer_checkpoints(tmp_path, capsys):
    import fasttrain
    from fasttrain.train.config import build_from_config

    cfg = {"model": {"name": "digits-mlp", "kwargs": {"hidden": 32}}, "data": {"name": "digits"},
           "trainer": {"max_steps": 40, "loss_fn": "cross_entropy", "checkpoint_dir": str(tmp_path / "run"),
                       "loggers": "none", "verbose": False, "progress": False}}
    trainer, train, _ = build_from_config(cfg)
    trainer.fit(train)
    ckpt = tmp_path / "run" / "step-40.ckpt"
    assert main(["export", "--checkpoint", str(ckpt), "--quantize", "dynamic", "--calib", "16",
                 "--min-top1-agreement", "0.9"]) == 0
    assert "PASSED" in capsys.readouterr().out and (tmp_path / "run" / "step-40.int8.onnx").is_file()

    # A Trainer built in Python does not know its factory: --model supplies it; the input shape is recorded.
    torch.manual_seed(0)
    t = fasttrain.Trainer(torch.nn.Linear(64, 10), optimizer="sgd", loss_fn=torch.nn.functional.cross_entropy,
                          max_steps=2, checkpoint_dir=tmp_path / "py", loggers=None, verbose=False, progress=False)
    t.fit((torch.randn(64, 64), torch.randint(0, 10, (64,))))
    path = str(tmp_path / "py" / "step-2.ckpt")
    with pytest.raises(SystemExit, match="does not name its model factory"):
        main(["export", "--checkpoint", path])
    assert main(["export", "--checkpoint", path, "--model", "torch.nn:Linear", "--model-kwargs",
                 '{"in_features": 64, "out_features": 10}', "--calib", "8"]) == 0
    with pytest.raises(SystemExit, match="Expecting property name"):
        main(["export", "--checkpoint", path, "--model", "torch.nn:Linear", "--model-kwargs", "{bad"])


def test_export_rejects_integer_input_trainer_checkpoints(tmp_path):
    import fasttrain

    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Flatten(), torch.nn.Linear(32, 4))
    t = fasttrain.Trainer(model, optimizer="sgd", loss_fn=torch.nn.functional.cross_entropy, max_steps=1,
                          checkpoint_dir=tmp_path, loggers=None, verbose=False, progress=False)
    t.fit((torch.randint(0, 16, (8, 4)), torch.randint(0, 4, (8,))))
    with pytest.raises(SystemExit, match="int64 inputs"):
        main(["export", "--checkpoint", str(tmp_path / "step-1.ckpt"), "--model", "torch.nn:Sequential"])
