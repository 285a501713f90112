"""fasttrain.Trainer on sklearn's digits: accuracy, callback order, early stopping, checkpoints,
exact resume after SIGKILL, no host syncs between log points, config errors."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fasttrain
from fasttrain.examples.digits import digits_mlp, load_digits_tensors
from fasttrain.train import Callback, CheckpointError, EarlyStopping, ModelCheckpoint, Precision, load_checkpoint
from _sync import SyncCounter

CE = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def digits():
    return load_digits_tensors()


def adamw(lr=1e-3):
    return lambda ps: torch.optim.AdamW(ps, lr=lr)


def test_digits_reaches_95_percent(digits):
    train, val = digits
    torch.manual_seed(0)
    t = fasttrain.Trainer(digits_mlp(), optimizer=adamw(), loss_fn=CE, max_epochs=15, loggers=None, verbose=False)
    t.fit(train, val_data=val)
    assert t.validate(val)["val_acc"] >= 0.95


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            events = object.__getattribute__(self, "events")
            return lambda trainer, *a: events.append(name)
        return object.__getattribute__(self, name)


def test_callbacks_fire_in_order(digits):
    train, val = digits
    rec = Recorder()
    x, y = train[0][:64], train[1][:64]  # 2 batches per epoch
    fasttrain.Trainer(digits_mlp(16), optimizer=adamw(), loss_fn=CE, max_epochs=2, log_every=2, callbacks=[rec],
                      loggers=None, verbose=False).fit((x, y), val_data=val)
    epoch = ["on_train_epoch_start", "on_train_batch_end", "on_train_batch_end", "on_log", "on_validation_end",
             "on_train_epoch_end"]
    assert rec.events == ["on_fit_start", *epoch, *epoch, "on_fit_end"]


def test_early_stopping_stops(digits):
    train, val = digits
    stop = EarlyStopping(monitor="val_loss", patience=2)
    t = fasttrain.Trainer(digits_mlp(16), optimizer=adamw(lr=0.0), loss_fn=CE, max_epochs=50, callbacks=[stop],
                          loggers=None, verbose=False)
    t.fit(train, val_data=val)
    assert t.epoch == 3  # first validation sets the best, two more without improvement stop
    assert t.should_stop


def test_model_checkpoint_keeps_best_and_last(tmp_path, digits):
    train, val = digits
    mc = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=2)
    t = fasttrain.Trainer(digits_mlp(32), optimizer=adamw(), loss_fn=CE, max_epochs=4, callbacks=[mc],
                          checkpoint_dir=tmp_path, loggers="csv", verbose=False)
    t.fit(train, val_data=val)
    t.wait_for_checkpoint()  # fit() does not wait for the writer thread (writes, and unlinks of worse bests)
    assert (tmp_path / "last.ckpt").is_file()
    assert len(list(tmp_path.glob("best-*.ckpt"))) == 2
    state = load_checkpoint(mc.best_model_path)
    assert set(state) >= {"model", "optimizer", "rng", "counters", "loader"}
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "train_loss", "val_loss", "val_acc"} <= set(header)
    assert len(list(tmp_path.glob("step-*.ckpt"))) == 3  # keep_last_k
    assert not list(tmp_path.glob(".*"))  # the pruned file parked for reuse is deleted at the end of fit


def test_corrupt_and_truncated_checkpoints_are_detected(tmp_path, digits):
    train, _ = digits
    t = fasttrain.Trainer(digits_mlp(16), optimizer=adamw(), loss_fn=CE, max_steps=2, loggers=None, verbose=False)
    t.fit(train)
    path = t.save_checkpoint(tmp_path / "a.ckpt")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / "corrupt.ckpt").write_bytes(bytes(blob))
    (tmp_path / "short.ckpt").write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt.ckpt is corrupt: CRC-32C mismatch"):
        load_checkpoint(tmp_path / "corrupt.ckpt")
    with pytest.raises(CheckpointError, match="not a fasttrain checkpoint"):
        load_checkpoint(tmp_path / "short.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


WORKER = Path(__file__).with_name("_resume_worker.py")


def run_worker(tmp_path, name, max_steps, grad_accum, kill_at, resume):
    ckpt = tmp_path / name
    out = tmp_path / f"{name}.pt"
    r = subprocess.run([sys.executable, str(WORKER), str(ckpt), str(out), str(max_steps), str(grad_accum),
                        str(kill_at), str(int(resume))], capture_output=True, text=True, cwd=tmp_path)
    return r, out


@pytest.mark.parametrize(
    "grad_accum,kill_at",
    [(1, 30), (4, 14)],  # micro-batch 30: mid-epoch; 14 = 3 steps of 4 + 2: mid-accumulation
    ids=["mid-epoch", "mid-accumulation"],
)
def test_exact_resume_after_sigkill(tmp_path, grad_accum, kill_at):
    max_steps = 60 // grad_accum + 8  # crosses an epoch boundary (45 micro-batches per epoch)
    r, full = run_worker(tmp_path, "full", max_steps, grad_accum, kill_at=-1, resume=False)
    assert r.returncode == 0, r.stderr
    r, _ = run_worker(tmp_path, "killed", max_steps, grad_accum, kill_at=kill_at, resume=False)
    assert r.returncode == -9, r.stderr  # SIGKILL
    r, resumed = run_worker(tmp_path, "killed", max_steps, grad_accum, kill_at=-1, resume=True)
    assert r.returncode == 0, r.stderr
    a, b = torch.load(full), torch.load(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # the killed run's unfinished writes were cleaned up


def test_seed_applies_at_step_0_and_a_continued_fit_keeps_the_rng_streams(digits):
    """fit() from step 0 seeds the RNGs with `seed`; calling fit() again to train on does not reseed,
    so a DataLoader's shuffle (and dropout) do not replay the first fit's."""
    train, _ = digits

    class Rng(Callback):
        def __init__(self):
            self.start, self.end = [], []

        def on_fit_start(self, trainer):
            self.start.append(torch.get_rng_state())

        def on_fit_end(self, trainer):
            self.end.append(torch.get_rng_state())

    rng = Rng()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=64, shuffle=True)
    t = fasttrain.Trainer(digits_mlp(16), optimizer=adamw(), loss_fn=CE, max_epochs=1, loggers=None, verbose=False,
                          callbacks=[rng], seed=3)
    t.fit(loader)
    assert torch.equal(rng.start[0], torch.Generator().manual_seed(3).get_state())  # seeded
    t.max_epochs = 2
    t.fit(loader)
    assert torch.equal(rng.start[1], rng.end[0])  # not reseeded
    assert not torch.equal(rng.start[1], rng.start[0])


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-noclip", "torch-sgd"])
def test_no_host_sync_between_log_points(digits, optimizer):
    """adamw: clipping folded into the flat-buffer step; adamw-noclip: the multi-tensor step reading
    autograd's own gradients (zero_grad() leaves them None); torch-sgd: a torch optimizer."""
    train, _ = digits
    steps, log_every = 40, 10
    opt = optimizer.removesuffix("-noclip") if optimizer.startswith("adamw") else (lambda ps: torch.optim.SGD(ps, lr=0.1))
    t = fasttrain.Trainer(digits_mlp(16), optimizer=opt, loss_fn=CE, max_steps=steps, log_every=log_every,
                          clip_grad_norm=None if optimizer == "adamw-noclip" else 1.0, loggers=None, verbose=False)
    with SyncCounter() as counter:
        t.fit(train)
    log_points = steps // log_every
    assert len(t.history) == log_points
    assert counter.count == 2 * log_points  # train_loss and nonfinite_losses, read at log points only
    if optimizer == "adamw-noclip":
        assert all(p.grad is None for p in t.model.parameters())


def test_nonfinite_losses_are_counted(digits):
    train, _ = digits
    x = train[0][:64].clone()
    x[0, 0] = math.nan
    t = fasttrain.Trainer(digits_mlp(16), optimizer=adamw(), loss_fn=CE, max_steps=2, log_every=2, loggers=None,
                          verbose=False)
    t.fit((x, train[1][:64]))
    assert t.history[-1]["nonfinite_losses"] >= 1


def test_bad_configuration_is_rejected():
    m = digits_mlp(8)
    with pytest.raises(ValueError, match="set max_epochs or max_steps"):
        fasttrain.Trainer(m, optimizer=adamw())
    with pytest.raises(ValueError, match="unknown precision 'bf32'; use one of fp32, bf16-mixed"):
        fasttrain.Trainer(m, optimizer=adamw(), max_steps=1, precision="bf32")
    with pytest.raises(ValueError, match="compile must be False, True or 'auto'"):
        fasttrain.Trainer(m, optimizer=adamw(), max_steps=1, compile="yes")
    with pytest.raises(ValueError, match="fp32 master weights inside fasttrain's optimizers"):
        fasttrain.Trainer(m, optimizer=adamw(), max_steps=1, precision="bf16-true")
    with pytest.raises(ValueError, match="resume='last'.*checkpoint_dir"):
        fasttrain.Trainer(m, optimizer=adamw(), max_steps=1, loggers=None, verbose=False).fit(
            (torch.randn(4, 64), torch.zeros(4, dtype=torch.long)), resume="last")


def test_precision_policy_warns_on_fragile_combinations():
    with pytest.warns(UserWarning, match="without master weights lose small updates"):
        Precision(params=torch.bfloat16, compute=torch.bfloat16).check()
    with pytest.warns(UserWarning, match="does nothing"):
        Precision(master_weights=True).check()
    with pytest.raises(ValueError, match="compute=float32 with low-precision params"):
        Precision(params=torch.bfloat16).check()
    assert "autocast" in fasttrain.train.PRESETS["bf16-mixed"].table()


def test_bf16_mixed_trains_digits(digits):
    train, val = digits
    torch.manual_seed(0)
    t = fasttrain.Trainer(digits_mlp(), optimizer=adamw(), loss_fn=CE, max_epochs=15, precision="bf16-mixed",
                          loggers=None, verbose=False)
    t.fit(train, val_data=val)
    assert t.validate(val)["val_acc"] >= 0.94


def test_predict_returns_logits(digits):
    _, val = digits
    t = fasttrain.Trainer(digits_mlp(8), optimizer=adamw(), loss_fn=CE, max_steps=1, loggers=None, verbose=False)
    out = t.predict(val[0])
    assert out.shape == (len(val[0]), 10)


def _digits_acc(digits, **kw):
    train, val = digits
    torch.manual_seed(0)
    t = fasttrain.Trainer(digits_mlp(), loss_fn=CE, max_epochs=15, loggers=None, verbose=False, **kw)
    t.fit(train, val_data=val)
    return t.validate(val)["val_acc"]


def test_default_fused_adamw_trains_digits_and_bf16_true_matches_fp32(digits):
    fp32 = _digits_acc(digits)  # optimizer="adamw": fasttrain's fused AdamW
    bf16_true = _digits_acc(digits, precision="bf16-true")  # bf16 params, fp32 masters in the optimizer
    assert fp32 >= 0.95
    assert abs(bf16_true - fp32) <= 0.01


# torch.compile's own import path touches torch.jit.script_method in torch 2.13, which warns.
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.* is deprecated:DeprecationWarning")
def test_compile_auto_times_both_and_trains_like_eager(digits, capsys):
    train, val = digits
    losses = {}
    for mode in (False, "auto"):
        torch.manual_seed(0)
        t = fasttrain.Trainer(digits_mlp(32), optimizer=adamw(), loss_fn=CE, max_steps=30, compile=mode, loggers=None)
        t.fit(train)
        losses[mode] = t.validate(val)["val_loss"]
    out = capsys.readouterr().out
    assert "compile='auto': eager" in out and "ms/step, compiled" in out
    assert losses["auto"] == pytest.approx(losses[False], rel=1e-5)  # whichever it kept, same training
