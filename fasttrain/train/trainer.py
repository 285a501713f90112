"""fasttrain.Trainer: one readable training loop with Lightning's conveniences and no hidden syncs.

Hot loop contract: between log points nothing reads a tensor on the host. Loss sums and the count of
non-finite losses accumulate on the device and are read every `log_every` optimizer steps.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fasttrain.ops import clip_grad_norm_
from fasttrain.train.allocator import tune_allocator
from fasttrain.train.callbacks import Callback
from fasttrain.train._trainer_state import _TrainerState, is_resumable
from fasttrain.train.checkpoint import prune_checkpoints, raise_failed_writes, write_in_background
from fasttrain.train.loggers import make_loggers
from fasttrain.train.precision import Precision, resolve_precision

__all__ = ["Trainer"]


class _Timers:
    """Host-side wall-time accumulators for the step-time breakdown (data / forward_backward / optimizer)."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)

    def reset(self):
        self.totals = defaultdict(float)


class Trainer(_TrainerState):
    """Trains `model` on batches; see README "Trainer" for the full argument list.

    model: returns a loss for a batch (loss_fn=None; called as model(*batch)), or is scored by
        loss_fn(model(x), y) for batches (x, y).
    optimizer: "adamw" | "sgd" | "lion" (fasttrain's fused optimizers, built with optimizer_kwargs and
        the precision policy), a torch Optimizer, or a callable(params) -> Optimizer.
    lr_scheduler: an LRScheduler or a callable(optimizer) -> LRScheduler, stepped every optimizer step.
    max_epochs / max_steps: whichever is reached first (optimizer steps; at least one must be set).
    grad_accum: micro-batches per optimizer step. clip_grad_norm: global-norm clipping (fused op).
    log_every: optimizer steps between log points (the only host syncs of the loop).
    checkpoint_dir: where step-N.ckpt files go (every `checkpoint_every` steps, at each epoch end and
        when fit stops mid-epoch; the newest `keep_last_k` are kept). Also the default directory of the
        CSV log.
    compile: False | True | "auto" (times eager and compiled for a few steps and keeps the faster).
    seed: python, numpy and torch RNGs are seeded with it when fit() starts at step 0; a later fit() that
        continues training keeps the RNG streams going (shuffles and dropout do not repeat), and
        fit(resume=...) restores the checkpoint's.
    batch_size: used when fit() gets tensors instead of a loader.
    tune_allocator: at fit() start, raise glibc malloc's mmap/trim thresholds for the whole process, so
        each step's activations reuse mapped pages instead of faulting them in again (the heap keeps its
        high-water mark; see fasttrain.train.allocator). False leaves malloc alone.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] = "adamw",
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        precision: str | Precision = "fp32",
        max_epochs: int | None = None,
        max_steps: int | None = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        lr_scheduler: Any = None,
        callbacks: Iterable[Callback] = (),
        loggers: Any = "csv",
        log_every: int = 50,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        keep_last_k: int = 3,
        compile: bool | str = False,
        seed: int = 0,
        device: str | torch.device = "auto",
        optimizer_kwargs: dict[str, Any] | None = None,
        batch_size: int = 32,
        progress: bool | None = None,
        verbose: bool = True,
        tune_allocator: bool = True,
    ):
        if max_epochs is None and max_steps is None:
            raise ValueError("Trainer: set max_epochs or max_steps (or both)")
        for name, v in (("max_epochs", max_epochs), ("max_steps", max_steps)):
            if v is not None and v < 1:
                raise ValueError(f"Trainer: {name} must be >= 1, got {v}")
        if grad_accum < 1 or log_every < 1 or keep_last_k < 1:
            raise ValueError("Trainer: grad_accum, log_every and keep_last_k must be >= 1")
        if compile not in (False, True, "auto"):
            raise ValueError(f"Trainer: compile must be False, True or 'auto', got {compile!r}")
        self.precision = resolve_precision(precision)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.model = model.to(device=self.device, dtype=self.precision.params)
        self.loss_fn, self.max_epochs, self.max_steps = loss_fn, max_epochs, max_steps
        self.grad_accum, self.clip_grad_norm, self.log_every = grad_accum, clip_grad_norm, log_every
        self._clip_in_optimizer = False
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_last_k, self.compile, self.seed = checkpoint_every, keep_last_k, compile, seed
        self.batch_size, self.verbose, self.tune_allocator = batch_size, verbose, tune_allocator
        self.progress = progress if progress is not None else (sys.stderr.isatty() and not os.environ.get("CI"))
        self.callbacks = list(callbacks)
        self.loggers = make_loggers(loggers, self.checkpoint_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        self.optimizer = self._build_optimizer(optimizer, optimizer_kwargs or {})
        if getattr(self.optimizer, "step_in_backward", False):
            self._setup_step_in_backward()
        self.lr_scheduler = lr_scheduler(self.optimizer) if callable(lr_scheduler) and not hasattr(lr_scheduler, "step") else lr_scheduler
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.loss_scaling else None
        self.global_step = self.epoch = self.samples_seen = 0
        self.should_stop = False
        self.timers = _Timers()
        self.history: list[dict[str, float]] = []
        self.train_loader: Any = None
        self._step_fn = self.model
        # ("pkg.module:function", kwargs) that rebuilds the model, when known (`fasttrain train --config`
        # sets it; set it yourself for `fasttrain export --checkpoint` to work without --model).
        self.model_factory: tuple[str, dict[str, Any]] | None = None
        self._input_spec: dict[str, Any] | None = None  # shape/dtype of one example input, from the first batch
        self._saved_step = -1
        self._pending_ckpt: list | None = None  # [(path, payload) | None]: the queued periodic write
        self._ckpt_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ setup

    def _build_optimizer(self, optimizer, kwargs) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        # fasttrain's optimizers run on CUDA (one Triton launch per group, no host sync): AdamW for every
        # precision, SGD/Lion for fp32 params and states. Elsewhere (other accelerators, or those
        # combinations) torch's fused implementation runs, or a clear error says what to pass instead.
        cuda_ok = self.device.type == "cuda" and (
            optimizer == "adamw" or (optimizer in ("sgd", "lion") and self.precision.params == torch.float32
                                     and self.precision.optimizer_state == torch.float32))
        if isinstance(optimizer, str) and self.device.type != "cpu" and not cuda_ok:
            if self.precision.master_weights or optimizer not in ("adamw", "sgd"):
                raise ValueError(f"Trainer: optimizer={optimizer!r} with precision {self.precision} is CPU-only for "
                                 f"now; on {self.device.type} pass a torch optimizer or use precision='bf16-mixed'")
            cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.SGD
            if self.verbose:
                print(f"Trainer: optimizer={optimizer!r} on {self.device.type} uses torch.optim.{cls.__name__}(fused=True)")
            return cls(params, fused=True, **kwargs)
        if isinstance(optimizer, str):
            from fasttrain import optim as ft_optim

            classes = {"adamw": ft_optim.AdamW, "sgd": ft_optim.SGD, "lion": ft_optim.Lion}
            if optimizer not in classes:
                raise ValueError(f"Trainer: unknown optimizer {optimizer!r}; use one of {', '.join(classes)}, "
                                 "a torch.optim.Optimizer or a callable(params)")
            kw = dict(kwargs)
            if self.clip_grad_norm is not None and optimizer == "adamw":
                # Folded into the fused update: one norm pass, no separate rescale pass.
                kw.setdefault("max_grad_norm", self.clip_grad_norm)
                self._clip_in_optimizer = True
            if self.precision.master_weights:
                kw.setdefault("master_weights", True)
            if self.precision.optimizer_state != torch.float32:
                kw.setdefault("state_dtype", self.precision.optimizer_state)
            return classes[optimizer](params, **kw)
        if callable(optimizer):
            if self.precision.master_weights:
                raise ValueError("Trainer: this precision keeps fp32 master weights inside fasttrain's optimizers; "
                                 "pass optimizer='adamw' (or 'sgd'/'lion'), or a Precision with master_weights=False")
            return optimizer(params)
        raise TypeError(f"Trainer: optimizer must be a name, an Optimizer or a callable, got {type(optimizer).__name__}")

    def _setup_step_in_backward(self) -> None:
        """optimizer_kwargs={"step_in_backward": True}: the update runs inside backward, so refuse what
        needs the whole gradient first, and fuse the Linear layers' weight gradients into their update."""
        if self.grad_accum > 1:
            raise ValueError("Trainer: step_in_backward=True updates each parameter during backward, so it cannot "
                             f"accumulate gradients over grad_accum={self.grad_accum} micro-batches; use grad_accum=1")
        if self.precision.loss_scaling:
            raise ValueError(f"Trainer: step_in_backward=True cannot be combined with loss scaling ({self.precision}): "
                             "the update runs before the scaler can check the gradients; use bf16 precisions")
        if hasattr(self.optimizer, "fuse_linear_backward"):
            fused = self.optimizer.fuse_linear_backward(self.model).modules
            if self.verbose and fused:
                print(f"Trainer: step_in_backward: {len(fused)} Linear layer(s) compute their weight gradient inside "
                      "the update (never stored)")

    def _as_loader(self, data, shuffle: bool) -> Any:
        if isinstance(data, torch.Tensor):
            data = (data,)
        if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
            from fasttrain.data import Loader  # the fused loader: exact resume, order a pure function of the seed

            # On CUDA the loader fills pinned buffers and copies each batch asynchronously (no host wait).
            device = self.device if self.device.type == "cuda" else None
            return Loader(data, self.batch_size, shuffle=shuffle, seed=self.seed, device=device)
        if not hasattr(data, "__iter__"):
            raise TypeError(f"Trainer: data must be a loader, an iterable of batches or a tuple of tensors, got {type(data).__name__}")
        return data

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            # "true" low precision: float inputs take the params' dtype (no autocast converts them)
            dtype = self.precision.params if batch.is_floating_point() and not self.precision.autocast else batch.dtype
            if batch.device == self.device and batch.dtype == dtype:
                return batch  # the common case on CPU: skip a dispatcher round trip per tensor
            return batch.to(self.device, dtype=dtype, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        return batch

    def _autocast(self):
        if not self.precision.autocast:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.compute)

    def _forward_loss(self, batch, fn=None) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        fn = fn or self._step_fn
        if not self.precision.autocast:  # no context manager to enter and leave on every step
            return self._call_model(fn, batch)
        with self._autocast():
            return self._call_model(fn, batch)

    def _call_model(self, fn, batch) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        if self.loss_fn is None:
            out = fn(**batch) if isinstance(batch, dict) else fn(*batch) if isinstance(batch, (list, tuple)) else fn(batch)
            return out, None, None
        x, y = batch[0], batch[1]
        out = fn(x)
        return self.loss_fn(out, y), out, y

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------------------------------ fit

    def fit(self, train_data, val_data=None, resume: str | os.PathLike | None = None) -> "Trainer":
        """Trains until max_epochs/max_steps or a callback sets `should_stop`. resume: "last" or a path.
        Loggers are finalized in every case: "success", "failed" (an exception) or "interrupted"."""
        try:
            self._fit(train_data, val_data, resume)
        except KeyboardInterrupt:
            self._finalize_loggers("interrupted")
            raise
        except BaseException:
            self._finalize_loggers("failed")
            raise
        self._finalize_loggers("success")
        return self

    def _finalize_loggers(self, status: str) -> None:
        for lg in self.loggers:
            lg.finalize(status)

    def hparams(self) -> dict[str, Any]:
        """The run's configuration as a flat dict, given to every logger's `log_hyperparams` at fit start."""
        group = self.optimizer.param_groups[0] if self.optimizer.param_groups else {}
        lr = group.get("lr")
        out = {
            "model": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "optimizer": type(self.optimizer).__module__ + "." + type(self.optimizer).__qualname__,
            "lr": float(lr) if lr is not None else None,  # a tensor lr is read once here, at fit start
            "weight_decay": group.get("weight_decay"),
            "precision": repr(self.precision),
            "max_epochs": self.max_epochs, "max_steps": self.max_steps, "grad_accum": self.grad_accum,
            "clip_grad_norm": self.clip_grad_norm, "batch_size": getattr(self.train_loader, "batch_size", None),
            "log_every": self.log_every, "compile": self.compile, "seed": self.seed, "device": str(self.device),
        }
        return {k: v for k, v in out.items() if v is not None}

    def _fit(self, train_data, val_data, resume) -> None:
        if self.tune_allocator:
            tune_allocator()  # process-wide, once: freed activations stay mapped (fasttrain/train/allocator.py)
        self.train_loader = self._as_loader(train_data, shuffle=True)
        if self.global_step == 0:  # a fit that continues training keeps the RNG streams going
            self._seed_everything()
        if resume is not None:
            self._resume(resume)
        if self.verbose:
            n = sum(p.numel() for p in self.model.parameters())
            print(f"fasttrain.Trainer: {n / 1e6:.2f}M parameters on {self.device}, precision:\n{self.precision.table()}")
        if self.compile:
            self._setup_compile()
        bar = self._progress_bar()
        self._bar_drawn = -math.inf  # when _log_train last redrew the bar (_monotonic)
        self._bar_loss: float | None = None  # the last logged train_loss, for the bar
        hp = self.hparams() if self.loggers else {}
        for lg in self.loggers:
            lg.log_hyperparams(hp)
        self._call("on_fit_start")
        # Detached per-micro-batch losses since the last log point. Keeping references costs nothing per
        # step (no extra tensor ops); they are summed and checked for NaN/Inf only at the log point.
        losses: list[torch.Tensor] = []
        micro, steps_since_log = 0, 0
        clock, timers = time.perf_counter, self.timers.totals
        # Batches need moving/casting unless they are CPU tensors and float inputs keep their dtype
        # (decided once: the per-step walk over the batch costs a few microseconds).
        move = self.device.type != "cpu" or (not self.precision.autocast and self.precision.params != torch.float32)
        self.model.train()
        while not self._done():
            self._call("on_train_epoch_start")
            if not is_resumable(self.train_loader) and hasattr(self.train_loader, "set_epoch"):
                self.train_loader.set_epoch(self.epoch)
            it = iter(self.train_loader)
            while True:
                t0 = clock()
                batch = next(it, None)
                t1 = clock()
                timers["data"] += t1 - t0
                if batch is None:
                    break
                if self._input_spec is None:
                    self._input_spec = _input_spec(batch)
                if move:
                    batch = self._to_device(batch)
                loss, _, _ = self._forward_loss(batch)
                losses.append(loss.detach())
                scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                timers["forward_backward"] += clock() - t1
                self.samples_seen += _batch_len(batch)
                micro += 1
                if micro < self.grad_accum:
                    continue
                micro = 0
                self._optimizer_step()
                steps_since_log += 1
                self._call("on_train_batch_end")
                if self.global_step % self.log_every == 0:
                    self._log_train(losses, bar)
                    losses, steps_since_log = [], 0
                if self.checkpoint_every and self.global_step % self.checkpoint_every == 0:
                    self._save_step_checkpoint()
                if self._done():
                    break
            if batch is None:  # the epoch ran out (not stopped by max_steps / should_stop)
                if micro:  # a partial accumulation at the end of an epoch still takes its step
                    micro = 0
                    self._optimizer_step()
                self.epoch += 1
                if val_data is not None:
                    self._validate_and_call(val_data)
                self._call("on_train_epoch_end")
                if self.checkpoint_dir is not None:
                    self._save_step_checkpoint()
        if losses:
            self._log_train(losses, bar)
        if self.checkpoint_dir is not None and self._saved_step != self.global_step:
            self._save_step_checkpoint()  # stopped mid-epoch (max_steps, should_stop): keep the final state too
        if self.checkpoint_dir is not None:
            # After the last write (FIFO): delete the pruned checkpoint parked for reuse.
            write_in_background(prune_checkpoints, self.checkpoint_dir, self.keep_last_k)
        raise_failed_writes()  # a write still in flight is waited for by readers and at exit
        if bar is not None:
            if self._bar_loss is not None:  # the last logged loss, maybe not drawn yet: close() draws it
                bar.set_postfix(loss=f"{self._bar_loss:.4f}", refresh=False)
            bar.close()
        self._call("on_fit_end")

    def _done(self) -> bool:
        return (
            self.should_stop
            or (self.max_steps is not None and self.global_step >= self.max_steps)
            or (self.max_epochs is not None and self.epoch >= self.max_epochs)
        )

    def _optimizer_step(self) -> None:
        t0 = time.perf_counter()  # timed inline like the micro-batch timers (a context manager costs ~1 us)
        if self.clip_grad_norm is not None and not self._clip_in_optimizer:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients
            clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.timers.totals["optimizer"] += time.perf_counter() - t0
        self.global_step += 1

    def _log_train(self, losses: list[torch.Tensor], bar) -> None:
        # The log point: the only place the loop reads device values (two reads).
        stacked = torch.stack(losses).float()
        finite = torch.isfinite(stacked)
        metrics = {"epoch": float(self.epoch), "train_loss": stacked.mean().item(),
                   "nonfinite_losses": float((~finite).sum().item())}
        self._call("on_log", metrics)
        self._emit(metrics)
        if bar is not None:
            bar.n = self.global_step
            # Redrawn at most every bar.mininterval (tqdm's own 0.1 s default): a redraw at every log point
            # cost the step carrying it 40-80 us more (benchmarks/profile_trainer_extras.py). close()
            # draws the final state.
            self._bar_loss = metrics["train_loss"]
            now = _monotonic()
            if now - self._bar_drawn >= bar.mininterval:
                self._bar_drawn = now
                bar.set_postfix(loss=f"{self._bar_loss:.4f}", refresh=True)

    def _emit(self, metrics: dict[str, float]) -> None:
        self.history.append({"step": self.global_step, **metrics})
        for lg in self.loggers:
            lg.log(self.global_step, metrics)

    def _progress_bar(self):
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        total = self.max_steps
        if total is None and hasattr(self.train_loader, "__len__"):
            total = self.max_epochs * -(-len(self.train_loader) // self.grad_accum)
        return tqdm(total=total, initial=self.global_step, unit="step", mininterval=0.1, dynamic_ncols=True)

    # ------------------------------------------------------------------------------------------ eval

    @torch.no_grad()
    def validate(self, data) -> dict[str, float]:
        """Mean loss over `data` (and top-1 accuracy when the model returns class logits)."""
        metrics = self._evaluate(data)
        self._emit(metrics)
        return metrics

    def _validate_and_call(self, data) -> None:
        metrics = self.validate(data)
        self._call("on_validation_end", metrics)

    @torch.no_grad()
    def _evaluate(self, data) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n, have_acc = 0, False
        for batch in self._as_loader(data, shuffle=False):
            batch = self._to_device(batch)
            loss, out, y = self._forward_loss(batch, fn=self.model)
            b = _batch_len(batch)
            loss_sum += loss.double() * b
            n += b
            if out is not None and out.ndim == 2 and y is not None and not y.is_floating_point():
                correct += (out.argmax(1) == y).sum()
                have_acc = True
        self.model.train(was_training)
        metrics = {"val_loss": loss_sum.item() / max(n, 1)}
        if have_acc:
            metrics["val_acc"] = correct.item() / max(n, 1)
        return metrics

    @torch.no_grad()
    def predict(self, data) -> torch.Tensor:
        """Model outputs for every batch of `data` (x, or (x, ...) tuples), concatenated."""
        was_training = self.model.training
        self.model.eval()
        outs = []
        for batch in self._as_loader(data, shuffle=False):
            batch = self._to_device(batch)
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            with self._autocast():
                outs.append(self.model(x))
        self.model.train(was_training)
        return torch.cat(outs)

    # ------------------------------------------------------------------------------------------ state

    def _seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

    # ------------------------------------------------------------------------------------------ compile

    def _setup_compile(self) -> None:
        compiled = torch.compile(self.model)
        if self.compile is True:
            self._step_fn = compiled
            return
        # "auto": time forward+backward on the first batch, eager vs compiled; keep the faster.
        batch = self._to_device(next(iter(self._as_loader(_peek(self.train_loader), shuffle=False))))
        times = {}
        for name, fn in (("eager", self.model), ("compiled", compiled)):
            for i in range(4):  # the first compiled call compiles: not timed
                t0 = time.perf_counter()
                loss, _, _ = self._forward_loss(batch, fn=fn)
                loss.backward()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.setdefault(name, []).append(time.perf_counter() - t0)
            self.optimizer.zero_grad(set_to_none=True)
        eager, comp = (float(np.median(times[k])) for k in ("eager", "compiled"))
        self._step_fn = compiled if comp < eager else self.model
        if self.verbose:
            print(f"compile='auto': eager {eager * 1e3:.2f} ms/step, compiled {comp * 1e3:.2f} ms/step -> "
                  f"{'compiled' if comp < eager else 'eager'}")


def _input_spec(batch) -> dict[str, Any] | None:
    """{"shape": [1, ...], "dtype": "float32"} of the model input of a batch (x of (x, y), or the tensor)."""
    x = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if not isinstance(x, torch.Tensor) or x.ndim == 0:
        return None
    return {"shape": [1, *x.shape[1:]], "dtype": str(x.dtype).removeprefix("torch.")}


_monotonic = time.monotonic  # the progress bar's clock (tests replace it)


def _batch_len(batch) -> int:
    if type(batch) is tuple and type(batch[0]) is torch.Tensor:  # the common (x, y) case, checked first
        return batch[0].shape[0]
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    return _batch_len(batch[0])


def _peek(loader):
    """The loader's next batch, without advancing a resumable loader (its state is put back)."""
    state = loader.state_dict() if is_resumable(loader) else None
    batch = next(iter(loader))
    if state is not None:
        loader.load_state_dict(state)
    return tuple(t.clone() for t in batch) if isinstance(batch, (list, tuple)) else (batch.clone(),)
