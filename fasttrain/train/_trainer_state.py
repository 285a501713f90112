"""fasttrain.Trainer's training state: what a checkpoint holds, periodic atomic checkpoints written
without stalling the loop, and exact resume (kept apart from the loop in trainer.py)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttrain.train.checkpoint import (
    commit_checkpoint,
    list_checkpoints,
    load_checkpoint,
    raise_failed_writes,
    serialize_checkpoint,
    stage_checkpoint,
    wait_for_writes,
    write_checkpoint_bytes,
    write_in_background,
)

__all__ = ["is_resumable"]


def is_resumable(loader: Any) -> bool:
    """Whether `loader` restores its position (a fasttrain Loader, or anything with state_dict/load_state_dict)."""
    return all(hasattr(loader, a) for a in ("state_dict", "load_state_dict"))


class _TrainerState:
    """Mixin of fasttrain.Trainer: state_dict, save_checkpoint / the periodic checkpoint, resume."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loader": self.train_loader.state_dict() if is_resumable(self.train_loader) else None,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "counters": {"global_step": self.global_step, "epoch": self.epoch, "samples_seen": self.samples_seen},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "config": {"precision": repr(self.precision), "grad_accum": self.grad_accum, "seed": self.seed,
                       "model_factory": self.model_factory[0] if self.model_factory else None,
                       "model_kwargs": dict(self.model_factory[1]) if self.model_factory else {},
                       "input": self._input_spec},
        }
        self._call("on_save_checkpoint", state)
        return state

    def save_checkpoint(self, path: str | os.PathLike, blocking: bool = True) -> Path:
        """Writes the full training state to `path` (atomic, checksummed). blocking=False returns once
        the state is serialized; the checksum, write and fsync finish on fasttrain's writer thread
        (`wait_for_checkpoint()` waits; readers in fasttrain and interpreter exit wait by themselves)."""
        payload = serialize_checkpoint(self.state_dict())
        if blocking:
            return write_checkpoint_bytes(path, payload)
        write_in_background(write_checkpoint_bytes, path, payload)
        return Path(path)

    def _save_step_checkpoint(self) -> None:
        """Periodic checkpoint. Serializing, checksumming and writing into the page cache run on the
        training thread (pickling holds the GIL, and CPU work on another thread preempts torch's
        OpenMP workers: see checkpoint.stage_checkpoint); the fsync and rename run on the writer
        thread while training goes on.
        Training never waits for an fsync (~10 ms here, longer than a short epoch): while one write
        runs, a newer periodic checkpoint replaces any that is still queued (at most one running and
        one waiting, so memory stays bounded and the newest state always lands). fit() returns without
        waiting for the last one. A crash during a write leaves the previous checkpoint, from which
        resuming is just as exact."""
        if self.checkpoint_dir is None:
            return
        raise_failed_writes()
        path = self.checkpoint_dir / f"step-{self.global_step}.ckpt"
        staged = stage_checkpoint(path, self.state_dict(), recycle=True)
        self._saved_step = self.global_step
        with self._ckpt_lock:
            job = self._pending_ckpt
            if job is not None and job[0] is not None:  # queued, not started: take its place
                replaced, job[0] = job[0], staged
                replaced.discard(recycle=True)
                return
            job = self._pending_ckpt = [staged]
        keep, lock = self.keep_last_k, self._ckpt_lock

        def write():
            with lock:  # taken: a newer checkpoint now queues a job of its own
                item, job[0] = job[0], None
            commit_checkpoint(item, prune_keep=keep, recycle=True)  # one call, GIL released

        write_in_background(write)

    def wait_for_checkpoint(self) -> None:
        """Blocks until queued checkpoint writes are on disk; re-raises the first failed one."""
        wait_for_writes()

    def _resume(self, resume) -> None:
        if resume == "last":
            if self.checkpoint_dir is None:
                raise ValueError("fit(resume='last') needs Trainer(checkpoint_dir=...)")
            found = list_checkpoints(self.checkpoint_dir)
            if not found:
                raise FileNotFoundError(f"fit(resume='last'): no step-*.ckpt in {self.checkpoint_dir}")
            resume = found[-1]
        state = load_checkpoint(resume, map_location="cpu")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state["loader"] is not None and is_resumable(self.train_loader):
            self.train_loader.load_state_dict(state["loader"])
        elif state["counters"]["global_step"]:
            raise ValueError("fit(resume=...): this training data cannot restore its position; pass tensors or a "
                             "fasttrain.data.Loader (both resume exactly) instead of a plain iterable")
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        c = state["counters"]
        self.global_step, self.epoch, self.samples_seen = c["global_step"], c["epoch"], c["samples_seen"]
        for cb, s in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(s)
        self._call("on_load_checkpoint", state)
