"""Trainer overhead: digits MLP (64->256->256->10), batch 32, same data and optimizer, interleaved.

- raw: a hand-written loop (DataLoader + torch AdamW(fused=True) + zero_grad), the idiomatic baseline.
- trainer: fasttrain.Trainer on the same DataLoader and optimizer, with progress bar, CSV logging
  and a checkpoint per epoch. Target: <= 1.03x the raw loop's time per step.
- trainer_fasttrain: the Trainer with its defaults, fed tensors: fasttrain's Loader (resumable batching
  instead of per-sample DataLoader collation) and fasttrain's fused AdamW, same logging and checkpoints.
  Target: faster than the raw loop.
- trainer_bare / trainer_fasttrain_bare: the same two without progress bar, CSV and checkpoints (what the
  loop itself costs, apart from what those write).
- trainer_bare_again: a second, identical trainer_bare; raw_again: a second raw loop on its own model
  (same data and optimizer settings). Their ratios to trainer_bare and raw are the noise floor of this
  measurement on the box (A/A, which includes where each model's tensors happen to land in memory): a
  difference smaller than that is not resolved.

The Trainer tunes glibc malloc process-wide (fasttrain.train.tune_allocator); it is tuned before
anything runs, so the raw loop gets it too (its own gain: benchmarks/bench_allocator.py).

Ratios are reported two ways: median / median ("*_vs_raw") and the median of per-round ratios
("*_vs_raw_paired", fasttrain.bench.paired_ratio).

    pytest benchmarks/bench_trainer.py -s
"""


import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fasttrain
from fasttrain.bench import interleaved, paired_ratio
from fasttrain.examples.digits import digits_mlp, load_digits_tensors
from fasttrain.train import tune_allocator

CE = nn.functional.cross_entropy


EPOCHS = 5  # per timed call: a fit() pays its fixed costs (final log, last checkpoint write) once, as in real use


def raw_epochs(model, opt, loader):
    for _ in range(EPOCHS):
        for x, y in loader:
            loss = CE(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_trainer_overhead(benchmark, smoke, tmp_path):
    tune_allocator()  # both sides alike (see the module doc)
    (x, y), _ = load_digits_tensors()
    if smoke:
        x, y = x[:256], y[:256]
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    steps_per_epoch = len(loader)
    torch.manual_seed(0)
    m_raw, m_tr, m_tt = digits_mlp(), digits_mlp(), digits_mlp()
    o_raw = torch.optim.AdamW(m_raw.parameters(), lr=1e-3, fused=True)
    m_raw2 = digits_mlp()
    o_raw2 = torch.optim.AdamW(m_raw2.parameters(), lr=1e-3, fused=True)

    m_trb, m_ttb, m_trb2 = digits_mlp(), digits_mlp(), digits_mlp()

    def make_trainer(model, ckpt, optimizer, extras=True):
        return fasttrain.Trainer(model, optimizer=optimizer, optimizer_kwargs={"lr": 1e-3} if optimizer == "adamw" else None,
                                 loss_fn=CE, max_epochs=10**9, log_every=50, loggers="csv" if extras else (),
                                 checkpoint_dir=ckpt if extras else None, progress=extras, verbose=False)

    torch_adamw = lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True)  # noqa: E731
    tr = make_trainer(m_tr, tmp_path / "a", torch_adamw)
    tt = make_trainer(m_tt, tmp_path / "b", "adamw")
    trb = make_trainer(m_trb, None, torch_adamw, extras=False)  # the same without progress bar, CSV and checkpoints
    ttb = make_trainer(m_ttb, None, "adamw", extras=False)
    trb2 = make_trainer(m_trb2, None, torch_adamw, extras=False)  # A/A: trb again

    def run_trainer(t, data):
        t.max_epochs = t.epoch + EPOCHS
        t.fit(data)

    t = interleaved(
        {"raw": lambda: raw_epochs(m_raw, o_raw, loader), "raw_again": lambda: raw_epochs(m_raw2, o_raw2, loader),
         "trainer": lambda: run_trainer(tr, loader),
         "trainer_fasttrain": lambda: run_trainer(tt, (x, y)), "trainer_bare": lambda: run_trainer(trb, loader),
         "trainer_fasttrain_bare": lambda: run_trainer(ttb, (x, y)),
         "trainer_bare_again": lambda: run_trainer(trb2, loader)},
        rounds=1 if smoke else 41,
        warmup=0 if smoke else 1,
    )
    per_step = {k: v.median / (EPOCHS * steps_per_epoch) for k, v in t.items()}
    result = {f"{k}_ms_per_step": v * 1e3 for k, v in per_step.items()}
    result["trainer_vs_raw"] = per_step["trainer"] / per_step["raw"]
    result["trainer_fasttrain_vs_raw"] = per_step["trainer_fasttrain"] / per_step["raw"]
    result["trainer_bare_vs_raw"] = per_step["trainer_bare"] / per_step["raw"]
    result["trainer_fasttrain_bare_vs_raw"] = per_step["trainer_fasttrain_bare"] / per_step["raw"]
    for k in ("trainer", "trainer_fasttrain", "trainer_bare", "trainer_fasttrain_bare"):
        result[f"{k}_vs_raw_paired"] = paired_ratio(t[k], t["raw"])
    result["noise_floor_bare_again_vs_bare"] = per_step["trainer_bare_again"] / per_step["trainer_bare"]
    result["noise_floor_bare_again_vs_bare_paired"] = paired_ratio(t["trainer_bare_again"], t["trainer_bare"])
    result["noise_floor_raw_again_vs_raw"] = per_step["raw_again"] / per_step["raw"]
    result["noise_floor_raw_again_vs_raw_paired"] = paired_ratio(t["raw_again"], t["raw"])
    benchmark.extra_info.update(result)
    print("\n" + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    benchmark.pedantic(lambda: raw_epochs(m_raw, o_raw, loader), rounds=1, iterations=1)
