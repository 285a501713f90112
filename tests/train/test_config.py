"""`fasttrain train --config run.toml`: a valid file trains; bad files fail with the valid keys listed."""

import pytest

from fasttrain.cli import main

GOOD = """
[model]
name = "digits-mlp"
kwargs = { hidden = 32 }

[data]
name = "digits"

[trainer]
optimizer = "torch.optim:AdamW"
optimizer_kwargs = { lr = 0.003 }
loss_fn = "cross_entropy"
max_epochs = 3
log_every = 20
loggers = "csv"
checkpoint_dir = "{ckpt}"
lr_scheduler = { name = "StepLR", step_size = 30, gamma = 0.5 }
callbacks = [{ name = "EarlyStopping", patience = 5 }]
verbose = false
"""


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text.replace("{ckpt}", str(tmp_path / "ckpt")))
    return path


def test_train_from_config(tmp_path, capsys):
    assert main(["train", "--config", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    assert "val_acc=" in out
    assert (tmp_path / "ckpt" / "metrics.csv").is_file()
    assert list((tmp_path / "ckpt").glob("step-*.ckpt"))


@pytest.mark.parametrize(
    "edit,message",
    [
        (("max_epochs = 3", "max_epoch = 3"), "[trainer]: unknown key(s) max_epoch; valid keys: batch_size, callbacks"),
        (('[data]\nname = "digits"', '[dataset]\nname = "digits"'), "config: unknown key(s) dataset; valid keys: data, model, trainer"),
        (('name = "digits-mlp"', 'name = "resnet"'), "[model]: unknown built-in 'resnet'; built-ins: digits-mlp"),
        (('loss_fn = "cross_entropy"', 'loss_fn = "crossentropy"'), "loss_fn: 'crossentropy' is not in torch.nn.functional"),
        (('optimizer = "torch.optim:AdamW"', 'optimizer = "torch.optim:AdamX"'), "cannot import 'torch.optim:AdamX'"),
        (("max_epochs = 3", "max_epochs = [3"), "invalid TOML"),
    ],
)
def test_bad_config_is_rejected_clearly(tmp_path, capsys, edit, message):
    old, new = edit
    assert old in GOOD
    assert main(["train", "--config", str(write(tmp_path, GOOD.replace(old, new)))]) == 2
    assert message in capsys.readouterr().err
