"""Pure-torch references for every fasttrain op.

Tests and benchmarks import these same functions (never a private copy), so the definition of
"correct" lives in one place. They favour clarity and accuracy over speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "total_norm_reference",
    "clip_grad_norm_reference",
    # quant
    "quantize_per_token_reference",
    "int8_dynamic_linear_reference",
    "int8_weight_linear_reference",
    "dequantize_int4_reference",
    "int4_weight_linear_reference",
]


@torch.no_grad()
def total_norm_reference(
    tensors: Sequence[torch.Tensor], norm_type: float = 2.0, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Global `norm_type`-norm of all elements of `tensors`, computed in `dtype` (fp32 by default).

    tensors: list of any-shape float tensors on one device. Returns a 0-dim `dtype` tensor.
    Pass dtype=torch.float64 for a ground truth to measure fp32 kernels against.
    """
    # Empty tensors contribute nothing (torch's inf-norm would raise on them: |x| >= 0 gives 0 as identity).
    tensors = [t for t in tensors if t.numel()]
    if len(tensors) == 0:
        return torch.zeros((), dtype=dtype)
    norms = [torch.linalg.vector_norm(t.to(dtype), norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


@torch.no_grad()
def clip_grad_norm_reference(
    tensors: Sequence[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ semantics on a list of tensors, with the norm and the scaling
    computed in `dtype` (fp32 default) and each result rounded once to the tensor's own dtype.

    Mutates `tensors` in place; returns the total norm (0-dim `dtype`).
    """
    total = total_norm_reference(tensors, norm_type, dtype=dtype)
    if error_if_nonfinite and not torch.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients is non-finite, so it cannot be clipped. "
            "To scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for t in tensors:
        t.copy_(t.to(dtype) * coef)
    return total


# ---------------------------------------------------------------------------------------------
# quant: quantized linear layers (fasttrain.ops.quant). Each reference dequantizes the packed weights
# and runs a plain matmul, in fp32 by default (pass dtype=torch.float64 for a ground truth).


def quantize_per_token_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic int8 quantization of each row of x: (M, K) float -> (q (M, K) int8, scale (M,) fp32).

    scale = max|x_row| / 127, q = round_half_even(x * (127 / max|x_row|)) in [-127, 127]; an all-zero row
    gets scale 0 and q = 0. The kernels compute exactly this (same fp32 operations).
    """
    x = x.float()
    amax = x.abs().amax(dim=-1)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(x * inv[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, amax / 127.0


@torch.no_grad()
def int8_dynamic_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, w_sum: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (q_x @ w_q^T) * s_x s_w + bias with per-token int8 activations and an exact integer dot.

    x: (M, K) fp32/bf16; w_q: (N, Kp) int8; w_scale: (N,) fp32; w_sum: (N,) int32 (unused: only the
    VNNI kernel needs it); bias: (N,) fp32 or None. Returns (M, N) in x's dtype.
    """
    del w_sum
    K = x.shape[-1]
    q, sx = quantize_per_token_reference(x)
    acc = q.double() @ w_q[:, :K].double().T  # exact: every partial sum is an integer below 2^53
    y = acc.float() * (sx[:, None] * w_scale[None, :])
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


@torch.no_grad()
def int8_weight_linear_reference(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
    *, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y = x @ (w_q * w_scale)^T + bias, computed in `dtype`. x: (M, K); w_q: (N, Kp) int8; w_scale: (N,) fp32."""
    K = x.shape[-1]
    w = w_q[:, :K].to(dtype) * w_scale.to(dtype)[:, None]
    y = x.to(dtype) @ w.T
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def dequantize_int4_reference(w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, Kp / 2) uint8 packed int4 + (N, Kp / group_size) scales -> (N, Kp) fp32 weights.

    Packing (csrc/quant/quant.h): in each block of 32 values along K, byte j holds value j + 8 in its low
    nibble and value j + 16 (+ 8) in its high nibble.
    """
    N, half = w_packed.shape
    b = w_packed.reshape(N, half // 16, 16).to(torch.int16)
    q = torch.stack([b & 15, b >> 4], dim=2).reshape(N, 2 * half) - 8  # (N, blocks, 2, 16) -> (N, Kp)
    s = w_scale.float().repeat_interleave(group_size, dim=1)
    return q.float() * s


@torch.no_grad()
def int4_weight_linear_reference(
    x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, group_size: int,
    bias: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """y = bf16(x) @ dequant(w)^T + bias in `dtype`. x: (M, K); w_packed: (N, Kp / 2) uint8; w_scale: (N, G)
    fp32/bf16. The activations are rounded to bf16 first, as the kernels do (see fasttrain.ops.quant)."""
    K = x.shape[-1]
    w = dequantize_int4_reference(w_packed, w_scale, group_size)[:, :K].to(dtype)
    y = x.to(torch.bfloat16).to(dtype) @ w.T
    if bias is not None:
        y = y + bias.to(dtype)
    return y
