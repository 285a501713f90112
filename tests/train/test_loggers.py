"""Loggers: CSV metrics + hyperparameters, MLflow runs (metrics, params, end status), missing extras."""

import json
import sys

import pytest
import torch
from torch import nn

import fasttrain
from fasttrain.examples.digits import digits_mlp
from fasttrain.train import Callback, Logger, MLflowLogger
from fasttrain.train.checkpoint import wait_for_writes

CE = nn.functional.cross_entropy


def small_data(n=96):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def trainer(loggers, **kw):
    torch.manual_seed(0)
    kw.setdefault("max_steps", 6)
    return fasttrain.Trainer(digits_mlp(16), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), loss_fn=CE,
                             log_every=2, loggers=loggers, verbose=False, progress=False, **kw)


class Boom(Callback):
    def on_train_batch_end(self, trainer):
        if trainer.global_step == 3:
            raise RuntimeError("boom")


class Recording(Logger):
    def __init__(self):
        self.calls = []

    def log_hyperparams(self, params):
        self.calls.append(("hparams", dict(params)))

    def log(self, step, metrics):
        self.calls.append(("log", step))

    def finalize(self, status):
        self.calls.append(("finalize", status))


def test_logger_protocol_order_and_status():
    rec = Recording()
    trainer([rec]).fit(small_data())
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "hparams" and kinds[-1] == "finalize" and rec.calls[-1][1] == "success"
    assert [c[1] for c in rec.calls if c[0] == "log"] == [2, 4, 6]
    hp = rec.calls[0][1]
    assert hp["max_steps"] == 6 and hp["lr"] == pytest.approx(0.1) and hp["optimizer"] == "torch.optim.sgd.SGD"
    rec = Recording()
    with pytest.raises(RuntimeError, match="boom"):
        trainer([rec], callbacks=[Boom()]).fit(small_data())
    assert rec.calls[-1] == ("finalize", "failed")


def test_csv_logger_writes_metrics_and_hparams(tmp_path):
    trainer("csv", checkpoint_dir=tmp_path).fit(small_data())
    wait_for_writes()  # hparams.json is written by the background writer
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp["max_steps"] == 6 and hp["grad_accum"] == 1
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["step", "epoch"] and len(rows) == 4  # header + steps 2, 4, 6


def test_csv_logger_rows_are_visible_at_once_and_survive_close(tmp_path):
    """The file stays open between rows, but every row is flushed; after close() (the end of a fit)
    logging again appends to the same file; a new metric rewrites it with the new column."""
    import csv as csv_mod

    from fasttrain.train.loggers import CSVLogger

    lg = CSVLogger(tmp_path)
    rows = lambda: list(csv_mod.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))  # noqa: E731
    lg.log(1, {"loss": 2.0})
    lg.log(2, {"loss": 1.5})
    assert [r["loss"] for r in rows()] == ["2.0", "1.5"]  # read while the logger holds the file open
    lg.close()
    lg.log(3, {"loss": 1.0})
    assert [r["step"] for r in rows()] == ["1", "2", "3"]
    lg.log(4, {"loss": 0.5, "val_acc": 0.9})
    assert list(rows()[-1].items()) == [("step", "4"), ("loss", "0.5"), ("val_acc", "0.9")]
    lg.log(5, {"loss": 0.25})
    assert [r["val_acc"] for r in rows()] == ["", "", "", "0.9", ""]
    lg.close()
    lg.close()  # idempotent


def test_csv_logger_rewrites_hparams_only_when_they_change(tmp_path):
    from fasttrain.train.loggers import CSVLogger

    lg = CSVLogger(tmp_path)
    lg.log_hyperparams({"lr": 0.1})
    wait_for_writes()
    first = (tmp_path / "hparams.json").stat().st_ino  # each write renames a new file into place
    lg.log_hyperparams({"lr": 0.1})  # a second fit() with the same configuration
    wait_for_writes()
    assert (tmp_path / "hparams.json").stat().st_ino == first
    lg.log_hyperparams({"lr": 0.2})
    wait_for_writes()
    assert json.loads((tmp_path / "hparams.json").read_text()) == {"lr": 0.2}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    # MLflow 3 keeps the file store in maintenance mode behind this switch; it needs no server or database.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def test_mlflow_logger_records_run(mlflow_store):
    from mlflow.tracking import MlflowClient

    lg = MLflowLogger(experiment_name="digits", run_name="r1", tracking_uri=mlflow_store, tags={"team": "ft"})
    trainer([lg]).fit(small_data())
    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(lg.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1" and run.data.tags["team"] == "ft"
    assert run.data.params["max_steps"] == "6"
    hist = client.get_metric_history(lg.run_id, "train_loss")
    assert [m.step for m in hist] == [2, 4, 6] and all(m.value > 0 for m in hist)
    assert client.get_experiment(run.info.experiment_id).name == "digits"


def test_mlflow_logger_marks_failed_run_and_continues_run_id(mlflow_store):
    from mlflow.tracking import MlflowClient

    lg = MLflowLogger(tracking_uri=mlflow_store, prefix="train/")
    with pytest.raises(RuntimeError, match="boom"):
        trainer([lg], callbacks=[Boom()]).fit(small_data())
    client = MlflowClient(tracking_uri=mlflow_store)
    assert client.get_run(lg.run_id).info.status == "FAILED"
    again = MLflowLogger(tracking_uri=mlflow_store, run_id=lg.run_id, prefix="train/")
    again.log(10, {"train_loss": 0.5})
    again.close()
    assert [m.step for m in client.get_metric_history(lg.run_id, "train/train_loss")] == [2, 10]


def test_missing_mlflow_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    with pytest.raises(ImportError, match="mlflow-skinny"):
        MLflowLogger()


def test_unknown_logger_lists_choices():
    with pytest.raises(ValueError, match="'csv', 'tensorboard', 'mlflow'"):
        trainer("wandb")


def test_background_checkpoint_write_is_read_back_and_errors_surface(tmp_path):
    from fasttrain.train import load_checkpoint
    from fasttrain.train.checkpoint import list_checkpoints

    t = trainer(None, max_steps=None, max_epochs=2, checkpoint_dir=tmp_path / "ok", keep_last_k=1)
    t.fit(small_data())  # returns without waiting for the last write
    found = list_checkpoints(tmp_path / "ok")  # readers wait for queued writes
    assert [p.name for p in found] == [f"step-{t.global_step}.ckpt"]
    assert load_checkpoint(found[0])["counters"]["global_step"] == t.global_step

    (tmp_path / "file").write_text("x")  # a checkpoint_dir below a file cannot be created
    t = trainer(None, max_steps=None, max_epochs=1, checkpoint_dir=tmp_path / "file" / "ckpts")
    with pytest.raises(OSError):  # raised at the end of fit if the write already failed, else by the wait
        t.fit(small_data())
        t.wait_for_checkpoint()
    t.wait_for_checkpoint()  # reported once


def test_slow_checkpoint_writes_never_block_training(tmp_path, monkeypatch):
    """While one periodic write runs, newer checkpoints replace the queued one: fit finishes with the
    writer stuck, and the newest state lands once the writer moves on."""
    import threading

    from fasttrain.train import _trainer_state as trainer_mod  # where the Trainer commits its checkpoints

    gate, written = threading.Event(), []
    real = trainer_mod.commit_checkpoint

    def slow(staged, **kwargs):
        assert gate.wait(timeout=60)
        written.append(staged.path.name)
        return real(staged, **kwargs)

    monkeypatch.setattr(trainer_mod, "commit_checkpoint", slow)
    trainer_mod.wait_for_writes()  # earlier tests' writes: the first checkpoint must find the writer idle
    t = trainer(None, max_steps=None, max_epochs=6, checkpoint_dir=tmp_path, keep_last_k=10)
    t.fit(small_data())  # 6 epoch-end checkpoints while the first write is blocked
    assert written == []
    gate.set()
    t.wait_for_checkpoint()
    # One write that started (whichever checkpoint was queued when the writer thread got the GIL) and
    # the newest; every other one was replaced while queued.
    assert written[-1] == f"step-{t.global_step}.ckpt" and 1 <= len(written) <= 2
    assert not list(tmp_path.glob(".*.tmp"))  # the replaced checkpoints' temp files were removed


def test_progress_bar_ends_on_the_final_step_and_loss(capsys, monkeypatch):
    """Redraws are rate-limited (tqdm's 0.1 s), so the final state is drawn when fit() ends: the last
    line shows every step and the last logged loss."""
    pytest.importorskip("tqdm")
    clock = iter(range(0, 10**6, 1))  # log points 1 ms apart (fake monotonic seconds / 1000)
    monkeypatch.setattr("fasttrain.train.trainer._monotonic", lambda: next(clock) / 1000)
    t = fasttrain.Trainer(digits_mlp(16), optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), loss_fn=CE,
                          max_steps=20, log_every=1, loggers=(), verbose=False, progress=True)
    t.fit(small_data())
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "20/20" in last and f"loss={t.history[-1]['train_loss']:.4f}" in last
    assert err.count("loss=") < 20  # not one redraw per log point
