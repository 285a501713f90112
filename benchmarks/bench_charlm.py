"""Char-LM training throughput: fasttrain (the demo GPT with fasttrain.ops.attention, TokenLoader + fused
AdamW + bf16 autocast, in the Trainer) vs the best idiomatic raw PyTorch loop (the same GPT written with
F.scaled_dot_product_attention, i.e. GPTConfig(attention="torch"); nanoGPT-style np.memmap windows +
torch.stack, torch AdamW(fused=True), bf16 autocast), same weights, same steps, interleaved.

A third run, the Trainer on the torch-attention model ("trainer_torch_attention"), splits the gain
into the attention kernel's part and the Trainer's (loader, optimizer, loop) part.

The Trainer tunes glibc malloc for the whole process (fasttrain.train.tune_allocator); here it is
tuned before anything runs, so the raw loop gets it too and the ratio leaves that gain out. Measured on
its own, in separate processes: benchmarks/bench_allocator.py.

Reports tokens/s of both, the ratio (target >= 1.2x), the validation loss of both after the same
number of steps (equal within noise: the two see different random windows; at a few hundred steps the
spread between seeds is about +-0.15 nats), and where a raw step's CPU time goes (torch.profiler self
time by op family: GEMMs, attention, optimizer, other): the share a trainer's loader, optimizer and loop
can touch bounds the speedup it can give.

    pytest benchmarks/bench_charlm.py -s
"""

import dataclasses
import math

import numpy as np
import torch

import fasttrain
from fasttrain.bench import interleaved
from fasttrain.data import TokenLoader, write_tokens
from fasttrain.examples.charlm import GPT, GPTConfig, stdlib_bytes
from fasttrain.train import tune_allocator


def _step_profile(run) -> dict:
    """Self CPU time shares of one call of `run` by op family (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    fam = {"gemm": 0.0, "attention": 0.0, "optimizer": 0.0, "other": 0.0}
    for e in prof.key_averages():
        k = e.key
        name = ("gemm" if k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul") else
                "attention" if "scaled_dot_product" in k else
                "optimizer" if "adamw" in k or "clip_grad" in k or "norm" in k and "layer" not in k else "other")
        fam[name] += e.self_cpu_time_total
    total = sum(fam.values())
    return {f"share_{k}": v / total for k, v in fam.items()}


def test_charlm_tokens_per_second(benchmark, smoke, tmp_path):
    tune_allocator()  # both sides alike (see the module doc)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32) if smoke else GPTConfig()
    batch, steps, rounds = (8, 2, 1) if smoke else (32, 20, 7)
    data = stdlib_bytes(max_bytes=(1 << 18) if smoke else (8 << 20)).astype(np.uint16)
    n_val = len(data) // 20
    write_tokens(tmp_path / "train.tok", data[:-n_val])
    train_mm = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="w+", shape=(len(data) - n_val,))
    train_mm[:] = data[:-n_val]
    val = torch.from_numpy(data[-n_val:].astype(np.int64))

    torch.manual_seed(0)
    cfg_torch = dataclasses.replace(cfg, attention="torch")
    m_raw, m_ft, m_fta = GPT(cfg_torch), GPT(cfg), GPT(cfg_torch)
    m_ft.load_state_dict(m_raw.state_dict())
    m_fta.load_state_dict(m_raw.state_dict())
    opt = torch.optim.AdamW(m_raw.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)
    gen = np.random.default_rng(0)
    T = cfg.block_size

    def get_batch():  # nanoGPT's train.py get_batch, CPU
        ix = gen.integers(0, len(train_mm) - T - 1, size=batch)
        x = torch.stack([torch.from_numpy(train_mm[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train_mm[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    def raw_steps():
        for _ in range(steps):
            x, y = get_batch()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m_raw(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m_raw.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def make_trainer(model):
        t = fasttrain.Trainer(model, optimizer="adamw",
                              optimizer_kwargs={"lr": 2e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
                              precision="bf16-mixed", max_steps=0 + 1, clip_grad_norm=1.0, log_every=50,
                              loggers=None, verbose=False)
        t.max_steps = 0
        return t, TokenLoader(tmp_path / "train.tok", block_size=T, batch_size=batch, seed=0)

    trainer, loader = make_trainer(m_ft)
    trainer_ta, loader_ta = make_trainer(m_fta)

    def ft_steps(trainer=trainer, loader=loader):
        trainer.max_steps += steps
        trainer.fit(loader)

    t = interleaved({"raw": raw_steps, "fasttrain": ft_steps,
                     "trainer_torch_attention": lambda: ft_steps(trainer_ta, loader_ta)},
                    rounds=rounds, warmup=0 if smoke else 1)
    tokens = steps * batch * T
    raw_tps, ft_tps = tokens / t["raw"].median, tokens / t["fasttrain"].median
    ta_tps = tokens / t["trainer_torch_attention"].median

    @torch.no_grad()
    def val_loss(model):
        n = (min(len(val), 64 * T) - 1) // T * T
        x, y = val[:n].view(-1, T), val[1 : n + 1].view(-1, T)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return float(model.eval()(x, y))

    result = {"raw_tokens_per_s": raw_tps, "fasttrain_tokens_per_s": ft_tps, "speedup": ft_tps / raw_tps,
              "trainer_torch_attention_tokens_per_s": ta_tps, "speedup_trainer_only": ta_tps / raw_tps,
              "speedup_attention_kernel": ft_tps / ta_tps, "steps_each": trainer.global_step, "raw_val_loss": val_loss(m_raw), "fasttrain_val_loss": val_loss(m_ft)}
    m_raw.train()
    if not smoke:  # where a raw step's time goes: what a trainer can speed up at all
        result.update(_step_profile(raw_steps))
    benchmark.extra_info.update(result)
    print("\n" + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    assert math.isfinite(result["fasttrain_val_loss"])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
