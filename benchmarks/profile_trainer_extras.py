"""Where the Trainer's extras (progress bar, CSV logging, a checkpoint per epoch) spend their time, on the
bench_trainer.py workload (digits MLP, batch 32, DataLoader + torch fused AdamW): the time per fit of 5
epochs with and without the extras (medians of 7, interleaved), then a cProfile of 4 fits with extras
restricted to fasttrain / tqdm / pickle, and what one log point costs the step that carries it (progress bar
redrawn at every log point vs at most every 0.1 s vs no bar and loggers). A script, not a benchmark (pytest
does not collect it).

    python benchmarks/profile_trainer_extras.py
"""

import cProfile
import io
import pstats
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fasttrain
from fasttrain.examples.digits import digits_mlp, load_digits_tensors

CE = nn.functional.cross_entropy
EPOCHS = 5


def log_point_cost(loader, rounds: int = 12) -> dict[str, float]:
    """Median duration of the step that carries a log point minus that of the other steps (us), for a
    Trainer with progress bar + CSV (no checkpoints) redrawing the bar at every log point (a clock that
    jumps 1 s per read: the behaviour before the 0.1 s redraw limit), the same with the limit, and one
    without progress bar and loggers. Interleaved fits of 5 epochs."""
    import fasttrain.train.trainer as trainer_mod

    stamps: dict[str, list[tuple[int, float]]] = {}

    class Stamp(fasttrain.train.Callback):
        def __init__(self, name):
            self.name = name

        def on_train_batch_end(self, trainer):
            stamps[self.name].append((trainer.global_step, time.perf_counter()))

    def make(name, extras):
        stamps[name] = []
        return fasttrain.Trainer(digits_mlp(), optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                                 loss_fn=CE, max_epochs=10**9, log_every=50, loggers="csv" if extras else (),
                                 checkpoint_dir=tempfile.mkdtemp() if extras else None, checkpoint_every=None,
                                 progress=extras, verbose=False, callbacks=[Stamp(name)])

    runs = {"bar redrawn at every log point": make("every", True), "bar redraw limited to 0.1 s": make("limited", True),
            "no progress bar, no loggers": make("none", False)}
    for t in runs.values():
        t.checkpoint_dir = None  # the CSV goes to the directory; no checkpoints here
    real = trainer_mod._monotonic
    jumps = iter(range(10**12))
    for _ in range(rounds):
        for name, t in runs.items():
            trainer_mod._monotonic = (lambda: float(next(jumps))) if name.startswith("bar redrawn") else real
            try:
                t.max_epochs = t.epoch + EPOCHS
                t.fit(loader)
            finally:
                trainer_mod._monotonic = real
    out = {}
    for (name, t), key in zip(runs.items(), stamps):
        with_log, other = [], []
        s = stamps[key]
        for (s0, t0), (s1, t1) in zip(s, s[1:]):
            if s1 == s0 + 1:  # the log point after step s0 runs inside step s1's interval
                (with_log if s0 % 50 == 0 else other).append(t1 - t0)
        out[name] = (statistics.median(with_log) - statistics.median(other)) * 1e6
    return out


def main() -> None:
    (x, y), _ = load_digits_tensors()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp()

    def make(extras: bool) -> fasttrain.Trainer:
        return fasttrain.Trainer(digits_mlp(), optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
                                 loss_fn=CE, max_epochs=10**9, log_every=50, loggers="csv" if extras else (),
                                 checkpoint_dir=tmp if extras else None, progress=extras, verbose=False)

    trainers = {"extras": make(True), "bare": make(False)}

    def fit(t: fasttrain.Trainer) -> None:
        t.max_epochs = t.epoch + EPOCHS
        t.fit(loader)

    for t in trainers.values():
        fit(t)
    times = {k: [] for k in trainers}
    for _ in range(7):
        for k, t in trainers.items():
            t0 = time.perf_counter()
            fit(t)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"ms per fit of {EPOCHS} epochs ({len(loader)} steps each): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
          + f"; extras {(med['extras'] - med['bare']) / EPOCHS:.2f} ms per epoch")
    cost = log_point_cost(loader)
    print("log point cost (us, the step carrying it minus the others): " + ", ".join(f"{k} {v:.0f}" for k, v in cost.items()))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(4):
        fit(trainers["extras"])
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumtime").print_stats("fasttrain|tqdm|pickle", 25)
    print(f"cProfile of 4 fits with extras ({4 * EPOCHS} epochs, {4 * EPOCHS} checkpoints):")
    print(out.getvalue())


if __name__ == "__main__":
    main()
