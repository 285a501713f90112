"""Where the Trainer's per-epoch checkpoint cost goes: the digits MLP Trainer (torch fused AdamW,
DataLoader, batch 32) with a checkpoint at every epoch end vs the same Trainer without checkpoints,
interleaved, with the checkpoint directory on disk and on tmpfs (/dev/shm: no writeback I/O), and an
A/A pair (two identical Trainers without checkpoints) for the noise floor.

    python benchmarks/profile_trainer_checkpoint_io.py [--rounds 25] [--repeats 2] [--inside 8]

--inside also times each part of the checkpoint on the training thread inside real fits.
"""

import argparse
import shutil
import statistics
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fasttrain
from fasttrain.bench import interleaved, paired_ratio
from fasttrain.examples.digits import digits_mlp, load_digits_tensors
from fasttrain.train.checkpoint import wait_for_writes

CE = nn.functional.cross_entropy


def measure(ckpt_root: str | None, rounds: int) -> tuple[float, float]:
    (x, y), _ = load_digits_tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    tmp = tempfile.mkdtemp(dir=ckpt_root) if ckpt_root else None

    def make(ckpt):
        return fasttrain.Trainer(digits_mlp(), optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                                 loss_fn=CE, max_epochs=10**9, loggers=(), checkpoint_dir=ckpt, progress=False,
                                 verbose=False)

    a, b = make(tmp), make(None)

    def run(t):
        t.max_epochs = t.epoch + 5
        t.fit(loader)

    t = interleaved({"a": lambda: run(a), "b": lambda: run(b)}, rounds=rounds, warmup=1)
    wait_for_writes()
    if tmp:
        shutil.rmtree(tmp)
    return paired_ratio(t["a"], t["b"]), t["a"].median / t["b"].median


def inside(fits: int) -> dict[str, float]:
    """Training-thread time of each part of the periodic checkpoint, measured inside real fits
    (digits Trainer, checkpoint per epoch, on disk): median microseconds per checkpoint."""
    import time

    import fasttrain.train._trainer_state as ts
    from fasttrain.train import _serial

    times: dict[str, list[float]] = {}

    def timed(owner, name, key):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times.setdefault(key, []).append(time.perf_counter() - t0)

        setattr(owner, name, wrapper)
        return fn

    saved = [(fasttrain.Trainer, "state_dict"), (fasttrain.Trainer, "_save_step_checkpoint"),
             (_serial, "dumps_parts"), (ts, "stage_checkpoint"), (ts, "write_in_background")]
    keys = ["state_dict", "whole checkpoint", "serialize (pickle, tensors by address)",
            "stage (serialize + CRC + write into the page cache)", "queue the fsync/rename job"]
    originals = [timed(o, n, k) for (o, n), k in zip(saved, keys)]
    try:
        (x, y), _ = load_digits_tensors()
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        tmp = tempfile.mkdtemp()
        t = fasttrain.Trainer(digits_mlp(), optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                              loss_fn=CE, max_epochs=10**9, loggers=(), checkpoint_dir=tmp, progress=False, verbose=False)
        for _ in range(fits):
            t.max_epochs = t.epoch + 5
            t.fit(loader)
        wait_for_writes()
        shutil.rmtree(tmp)
    finally:
        for (o, n), fn in zip(saved, originals):
            setattr(o, n, fn)
    return {k: statistics.median(times[k]) * 1e6 for k in keys if k in times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--inside", type=int, default=8, help="fits of 5 epochs for the training-thread breakdown (0: skip)")
    args = ap.parse_args()
    if args.inside:
        parts = inside(args.inside)
        print("training-thread time per checkpoint (median us): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
    rows = {"disk (tempdir)": tempfile.gettempdir(), "tmpfs (/dev/shm)": "/dev/shm", "A/A, no checkpoints": None}
    for name, root in rows.items():
        got = [measure(root, args.rounds) for _ in range(args.repeats)]
        paired = ", ".join(f"{p:.3f}" for p, _ in got)
        unpaired = ", ".join(f"{u:.3f}" for _, u in got)
        print(f"{name}: with / without checkpoints, paired {paired} (median {statistics.median(p for p, _ in got):.3f}); "
              f"median/median {unpaired}")


if __name__ == "__main__":
    main()
