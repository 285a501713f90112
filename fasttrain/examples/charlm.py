"""Built-in example: a byte-level GPT trained on this Python installation's standard-library source.

Real text every machine has, no download. Used by `fasttrain demo`, examples/charlm.py and the CLI
(`model = "charlm-gpt"`). The model follows nanoGPT's layout (pre-LayerNorm blocks, causal
self-attention, tied input/output embeddings). Attention runs through fasttrain.ops.attention (the CPU
kernel; on other devices it calls scaled_dot_product_attention) unless `attention="torch"` asks for
torch's scaled_dot_product_attention everywhere, as a hand-written nanoGPT would.
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fasttrain.ops import attention

__all__ = ["GPTConfig", "GPT", "stdlib_bytes", "flops_per_token", "generate"]


@dataclass
class GPTConfig:
    vocab_size: int = 256  # bytes
    block_size: int = 128  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256  # width; 4 layers x 256 is ~3.2M parameters
    dropout: float = 0.0
    attention: str = "fasttrain"  # "fasttrain" (fasttrain.ops.attention) | "torch" (F.scaled_dot_product_attention)

    def __post_init__(self):
        if self.attention not in ("fasttrain", "torch"):
            raise ValueError(f"GPTConfig.attention must be 'fasttrain' or 'torch', got {self.attention!r}")


class _Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.mlp = nn.Sequential(nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd))
        self.n_head, self.dropout, self.attention = c.n_head, c.dropout, c.attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C)"""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if self.attention == "fasttrain" and dropout == 0.0:
            y = attention(q, k, v, is_causal=True)
        else:  # torch's kernel (fasttrain.ops.attention has no dropout)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """forward(idx, targets=None): idx (B, T) int64 -> logits (B, T, vocab); with targets returns the
    mean cross-entropy loss instead (so a Trainer can use it with loss_fn=None)."""

    def __init__(self, config: GPTConfig | None = None, **kwargs):
        super().__init__()
        self.config = c = config or GPTConfig(**kwargs)
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layer))  # GPT-2's scaled residual init

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6N + 12 L T C (PaLM, Chowdhery et al. 2022, appendix B; as nanoGPT)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.pos.weight.numel()
    return 6 * n + 12 * c.n_layer * c.block_size * c.n_embd


def stdlib_bytes(max_bytes: int = 8 << 20) -> np.ndarray:
    """The .py files of this Python's standard library (sorted paths, tests excluded), concatenated as
    uint8 bytes, at most `max_bytes`. Deterministic for a given Python installation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idlelib", "site-packages") for p in rel):
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8).copy()


@torch.no_grad()
def generate(model: GPT, prompt: bytes, max_new_tokens: int = 200, temperature: float = 0.8, seed: int = 0) -> bytes:
    """Samples bytes after `prompt`; returns prompt + sample."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor(list(prompt), dtype=torch.long, device=device)[None]
    for _ in range(max_new_tokens):
        logits = model(idx[:, -model.config.block_size :])[:, -1, :].float() / temperature
        nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=g)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was)
    return bytes(idx[0].tolist())
