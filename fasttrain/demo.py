"""`fasttrain demo`: the end-to-end run on any machine, no downloads.

1. tokenize this Python installation's standard-library source (bytes) into token files;
2. train the byte-level GPT (fasttrain.examples.charlm) for a time budget with the fused TokenLoader,
   fused AdamW and bf16 autocast, printing tokens/s;
3. report validation loss and a few sampled lines, save a checkpoint and a PNG loss curve;
4. export to ONNX, quantize to int8 with onnxruntime and print the verification report.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["run_demo"]


def _loss_curve_png(history: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [h for h in history if "train_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([h["step"] for h in rows], [h["train_loss"] for h in rows], label="train")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title("fasttrain demo: byte-level GPT on the Python stdlib")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True


def run_demo(seconds: float = 120.0, out_dir: str | Path = "fasttrain-demo", small: bool = False,
             export: bool = True) -> dict[str, float]:
    from fasttrain._info import format_info
    from fasttrain.data import TokenLoader, write_tokens
    from fasttrain.examples.charlm import GPT, GPTConfig, flops_per_token, generate, stdlib_bytes
    from fasttrain.train import ThroughputMonitor, Timer, Trainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(format_info())

    # 1. data: the stdlib source as bytes; the last 5% (by position) is held out.
    data = stdlib_bytes(max_bytes=(1 << 20) if small else (8 << 20)).astype(np.uint16)
    n_val = len(data) // 20
    write_tokens(out / "train.tok", data[:-n_val])
    write_tokens(out / "val.tok", data[-n_val:])
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64) if small else GPTConfig()
    batch = 32
    print(f"\ncorpus: {len(data) / 1e6:.1f}M bytes of stdlib source -> {out}/train.tok, val.tok")

    # 2. train
    torch.manual_seed(0)
    model = GPT(cfg)
    train = TokenLoader(out / "train.tok", block_size=cfg.block_size, batch_size=batch, seed=0)
    warmup = 50
    tput = ThroughputMonitor(tokens_per_sample=cfg.block_size, flops_per_sample=flops_per_token(model) * cfg.block_size)
    trainer = Trainer(
        model,
        optimizer="adamw",
        optimizer_kwargs={"lr": 2e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup)),
        precision="bf16-mixed",
        max_steps=10**9,
        clip_grad_norm=1.0,
        callbacks=[Timer(seconds), tput],
        log_every=25,
        checkpoint_dir=out / "ckpt",
        loggers="csv",
    )
    t0 = time.perf_counter()
    trainer.fit(train)
    wall = time.perf_counter() - t0
    tokens_per_s = trainer.samples_seen * cfg.block_size / wall

    # 3. evaluate, sample, save
    val = TokenLoader(out / "val.tok", block_size=cfg.block_size, batch_size=batch, shuffle=False)
    val_batches = [b for _, b in zip(range(8 if small else 32), val)]
    val_loss = trainer.validate(val_batches)["val_loss"]
    print(f"\ntrained {trainer.global_step} steps in {wall:.0f} s: {tokens_per_s:,.0f} tokens/s, "
          f"val loss {val_loss:.3f} nats/byte ({val_loss / math.log(2):.2f} bits/byte)")
    sample = generate(model, b"def ", max_new_tokens=240, seed=0).decode("utf-8", errors="replace")
    print("sample:\n    " + "\n    ".join(sample.splitlines()[:6]))
    ckpt = trainer.save_checkpoint(out / "charlm.ckpt")
    png = out / "loss.png"
    print(f"checkpoint: {ckpt}")
    print(f"loss curve: {png}" if _loss_curve_png(trainer.history, png) else
          "loss curve: skipped (pip install 'fasttrain[demo]' for matplotlib)")

    # 4. export + int8 + verification
    if export:
        try:
            import fasttrain.export

            example = val_batches[0][0][:4]
            fasttrain.export.onnx(model.float().eval(), example, out / "charlm.onnx", quantize="dynamic",
                                  validation=[b[0] for b in val_batches[:4]], min_sqnr_db=15.0,
                                  min_top1_agreement=0.9)
        except ImportError as e:
            print(f"export: skipped ({e})")
    return {"tokens_per_s": tokens_per_s, "val_loss": val_loss, "steps": trainer.global_step}
