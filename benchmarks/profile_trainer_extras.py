"""Where the Trainer's extras (progress bar, CSV logging, a checkpoint per epoch) spend their time, on the
bench_trainer.py workload (digits MLP, batch 32, DataLoader + torch fused AdamW): the time per fit of 5
epochs with and without the extras (medians of 7, interleaved), then a cProfile of 4 fits with extras
restricted to fasttrain / tqdm / pickle. A script, not a benchmark (pytest does not collect it).

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
