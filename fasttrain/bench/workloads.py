"""Realistic tensor lists for benchmarks: the parameter shapes of a GPT-style transformer."""

from __future__ import annotations

import torch

__all__ = ["gpt_param_shapes", "make_grads"]


def gpt_param_shapes(n_layer: int = 8, d_model: int = 512, vocab: int = 32000, block: int = 1024) -> list[tuple[int, ...]]:
    """Shapes of a GPT-2-style model's parameters (tok/pos embeddings, per layer: 2 LayerNorms,
    qkv + proj attention, 4x MLP, all with biases; final LayerNorm). Defaults: 8 x 512, 41M params.
    """
    d = d_model
    shapes: list[tuple[int, ...]] = [(vocab, d), (block, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def make_grads(
    shapes: list[tuple[int, ...]], dtype: torch.dtype = torch.float32, seed: int = 0, device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """Parameters with random gradients of the given shapes (grads scaled like real ones, ~1e-3)."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, dtype=dtype, device=device))
        p.grad = (torch.randn(s, generator=g) * 1e-3).to(dtype=dtype, device=device)
        params.append(p)
    return params
