"""Callbacks with Lightning's hook names. Every hook receives the Trainer first.

Hooks run on the host at the points named; `on_train_batch_end` runs every optimizer step, so a
callback that reads tensors there (`.item()`) adds a host sync per step: read at `on_log` instead.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasttrain.train.checkpoint import write_in_background

if TYPE_CHECKING:
    from fasttrain.train.trainer import Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "LearningRateMonitor",
    "ThroughputMonitor",
    "Timer",
]


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_train_epoch_start(self, trainer: Trainer) -> None: ...
    def on_train_epoch_end(self, trainer: Trainer) -> None: ...
    def on_train_batch_end(self, trainer: Trainer) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_save_checkpoint(self, trainer: Trainer, state: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, trainer: Trainer, state: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _better(mode: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta


def _check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


class EarlyStopping(Callback):
    """Stops fit() when `monitor` (a validation metric) has not improved for `patience` validations."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        _check_mode(mode)
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise KeyError(f"EarlyStopping: metric {self.monitor!r} not in validation metrics {sorted(metrics)}")
        value = metrics[self.monitor]
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class ModelCheckpoint(Callback):
    """Keeps the best `save_top_k` checkpoints by a validation metric (`best-<step>.ckpt`) and, with
    save_last, `last.ckpt` after every validation. Needs the Trainer's checkpoint_dir (or `dirpath`)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", save_top_k: int = 1, save_last: bool = True,
                 dirpath: str | None = None):
        _check_mode(mode)
        self.monitor, self.mode, self.save_top_k, self.save_last, self.dirpath = monitor, mode, save_top_k, save_last, dirpath
        self.best: list[tuple[float, str]] = []  # (value, path), best first

    def _dir(self, trainer: Trainer) -> Path:
        d = self.dirpath or trainer.checkpoint_dir
        if d is None:
            raise ValueError("ModelCheckpoint needs Trainer(checkpoint_dir=...) or ModelCheckpoint(dirpath=...)")
        return Path(d)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        d = self._dir(trainer)
        # Written by the background writer (FIFO: the deletions below land after the files they replace).
        if self.save_last:
            trainer.save_checkpoint(d / "last.ckpt", blocking=False)
        if self.save_top_k <= 0 or self.monitor not in metrics:
            return
        value = metrics[self.monitor]
        if len(self.best) < self.save_top_k or _better(self.mode, value, self.best[-1][0]):
            path = d / f"best-{trainer.global_step}.ckpt"
            trainer.save_checkpoint(path, blocking=False)
            self.best.append((value, str(path)))
            self.best.sort(key=lambda vp: vp[0], reverse=self.mode == "max")
            for _, old in self.best[self.save_top_k:]:
                write_in_background(Path(old).unlink, missing_ok=True)
            self.best = self.best[: self.save_top_k]

    @property
    def best_model_path(self) -> str | None:
        return self.best[0][1] if self.best else None

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = [tuple(x) for x in state["best"]]


class LearningRateMonitor(Callback):
    """Adds `lr` (or `lr-group<i>` for several param groups) to every log."""

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        groups = trainer.optimizer.param_groups
        for i, g in enumerate(groups):
            lr = g["lr"]
            metrics["lr" if len(groups) == 1 else f"lr-group{i}"] = float(lr)


class ThroughputMonitor(Callback):
    """samples/s (and tokens/s, MFU when given) between log points, plus the share of wall time spent
    waiting for data, in forward+backward and in the optimizer step (host-side timers: on CUDA they
    measure launch time unless the step syncs).

    flops_per_sample: model FLOPs per training sample (forward + backward, e.g. 6 * params * tokens
    for a transformer, the PaLM appendix-B estimate); peak_flops: the device's peak FLOP/s for MFU.
    """

    def __init__(self, tokens_per_sample: int | None = None, flops_per_sample: float | None = None,
                 peak_flops: float | None = None):
        self.tokens_per_sample, self.flops_per_sample, self.peak_flops = tokens_per_sample, flops_per_sample, peak_flops
        self._t0 = None
        self._samples0 = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._t0, self._samples0 = time.perf_counter(), trainer.samples_seen
        trainer.timers.reset()

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        dt = now - self._t0
        samples = trainer.samples_seen - self._samples0
        if dt > 0 and samples > 0:
            metrics["samples_per_s"] = samples / dt
            if self.tokens_per_sample:
                metrics["tokens_per_s"] = samples * self.tokens_per_sample / dt
            if self.flops_per_sample and self.peak_flops:
                metrics["mfu"] = samples * self.flops_per_sample / dt / self.peak_flops
            for name, seconds in trainer.timers.totals.items():
                metrics[f"time_{name}"] = seconds / dt
        self._t0, self._samples0 = now, trainer.samples_seen
        trainer.timers.reset()


class Timer(Callback):
    """Stops fit() once `seconds` of wall time have passed since it started (checked every step,
    host clock only)."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"Timer: seconds must be positive, got {seconds}")
        self.seconds = seconds
        self._start = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer) -> None:
        if time.perf_counter() - self._start >= self.seconds:
            trainer.should_stop = True
