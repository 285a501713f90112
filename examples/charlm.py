"""Train a byte-level GPT on this Python installation's standard-library source (the demo's model).

    python examples/charlm.py            # ~2 minutes on a 2-core CPU

Fused TokenLoader (exact resume), fused AdamW, bf16 autocast; sample a few lines at the end.
"""

import numpy as np
import torch

import fasttrain
from fasttrain.data import TokenLoader, write_tokens
from fasttrain.examples.charlm import GPT, GPTConfig, generate, stdlib_bytes
from fasttrain.train import Timer

data = stdlib_bytes(8 << 20).astype(np.uint16)  # bytes of the stdlib's .py files
write_tokens("stdlib.tok", data)

torch.manual_seed(0)
config = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128)
model = GPT(config)
train = TokenLoader("stdlib.tok", block_size=config.block_size, batch_size=32, seed=0)

trainer = fasttrain.Trainer(
    model,  # returns the loss for (x, y) batches, so no loss_fn
    optimizer="adamw",
    optimizer_kwargs={"lr": 2e-3, "betas": (0.9, 0.99), "weight_decay": 0.1},
    precision="bf16-mixed",
    max_steps=10**9,
    callbacks=[Timer(seconds=120)],
    clip_grad_norm=1.0,
    log_every=50,
    checkpoint_dir="runs/charlm",
)
trainer.fit(train)
print(generate(model, b"def ", max_new_tokens=300).decode("utf-8", errors="replace"))
