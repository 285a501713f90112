"""Self-attention for CPU training: `attention(q, k, v, is_causal=True)`, a drop-in for
`torch.nn.functional.scaled_dot_product_attention` on (B, H, T, D) inputs without a mask or dropout.

Why a kernel of our own: at the shapes a CPU trains (T of a few hundred, head size 32-128) torch's CPU
flash-attention kernel runs its forward + backward at a small fraction of the machine's FMA rate
(benchmarks/bench_attention.py). Here each (batch, head) pair is one task whose Q, K, V are converted to
fp32 tiles that stay in cache; scores are computed 64 query rows at a time with register-blocked FMA
micro-kernels, skipping blocks above the causal diagonal; softmax uses exp2 with the row's whole
max (no online rescaling); the backward recomputes the probabilities from the saved log-normalizers,
as FlashAttention-2 does. All arithmetic is fp32, whatever the input dtype (fp32 / bf16 / fp16).

Other devices (and anything the kernel does not cover) go to `scaled_dot_product_attention`, so a model
written with this function runs everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fasttrain._ext import _C, num_threads
from fasttrain.ops import reference
from fasttrain.ops._checks import DTYPE_CODES
from fasttrain.ops._registry import OpSpec, register

__all__ = ["attention"]

_OP = "fasttrain.ops.attention"


def _st(t: torch.Tensor) -> list[int]:
    return list(t.stride()[:3])


def _forward_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    # (B, T, H, D) memory seen as (B, H, T, D), as torch's CPU flash kernel returns it: the usual next
    # step, out.transpose(1, 2).reshape(B, T, H * D), is then free.
    out = torch.empty(B, T, H, D, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty(B * H, T, dtype=torch.float32)
    _C.attn.forward(q.data_ptr(), _st(q), k.data_ptr(), _st(k), v.data_ptr(), _st(v), out.data_ptr(), _st(out),
                    lse.data_ptr(), B, H, T, D, DTYPE_CODES[q.dtype], scale, is_causal, num_threads())
    return out, lse


_forward_op = torch.library.custom_op("fasttrain::attention", mutates_args=(), device_types="cpu")(_forward_cpu)


@_forward_op.register_fake
def _(q, k, v, is_causal, scale):
    B, H, T, D = q.shape
    return q.new_empty(B, T, H, D).transpose(1, 2), q.new_empty(B * H, T, dtype=torch.float32)


def _backward_cpu(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, is_causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, T, D = q.shape
    dq, dk, dv = (torch.empty(B, H, T, D, dtype=q.dtype) for _ in range(3))
    _C.attn.backward(q.data_ptr(), _st(q), k.data_ptr(), _st(k), v.data_ptr(), _st(v), out.data_ptr(), _st(out),
                     grad_out.data_ptr(), _st(grad_out), lse.data_ptr(), dq.data_ptr(), _st(dq), dk.data_ptr(),
                     _st(dk), dv.data_ptr(), _st(dv), B, H, T, D, DTYPE_CODES[q.dtype], scale, is_causal,
                     num_threads())
    return dq, dk, dv


_backward_op = torch.library.custom_op("fasttrain::attention_backward", mutates_args=(),
                                       device_types="cpu")(_backward_cpu)


@_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, is_causal, scale):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.is_causal, ctx.scale = is_causal, scale


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    dq, dk, dv = _backward_op(grad_out, q, k, v, out, lse, ctx.is_causal, ctx.scale)
    return dq, dk, dv, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = True,
              scale: float | None = None) -> torch.Tensor:
    """softmax(scale * q @ k^T, causal mask if is_causal) @ v, differentiable.

    q, k, v: (B, H, T, D), one dtype (fp32, bf16 or fp16), any strides (a copy is made only when the
    last dimension is not contiguous). scale defaults to 1 / sqrt(D). Returns (B, H, T, D) in q's dtype,
    laid out as (B, T, H, D) in memory. On CPU this is fasttrain's kernel (fp32 arithmetic inside); on
    other devices, and while traced for ONNX or TorchScript, it calls F.scaled_dot_product_attention.
    Self-attention only: q, k, v share a shape.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # Exporters (ONNX, TorchScript tracing) know SDPA, not this op, and trace shapes as tensors (the
        # checks below would record them): hand the call to SDPA untouched.
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(is_causal), scale=scale)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{_OP}: `{name}` must be 4-D (batch, heads, tokens, head_dim), got shape "
                             f"{tuple(t.shape)}; add the missing dimensions with unsqueeze")
        if t.layout != torch.strided:
            raise TypeError(f"{_OP}: `{name}` has layout {t.layout}; pass a dense tensor")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"{_OP}: q, k, v must have one shape (self-attention), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}; use F.scaled_dot_product_attention otherwise")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{_OP}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{_OP}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{_OP}: scale must be finite, got {scale}")
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(is_causal), scale=scale)
    if q.dtype not in DTYPE_CODES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in DTYPE_CODES)
        raise TypeError(f"{_OP}: dtype {q.dtype} is not supported on CPU; supported: {allowed}")
    if q.numel() == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(is_causal), scale=scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out, _ = _forward_op(q, k, v, bool(is_causal), scale)
    return out


def _samples():
    g = torch.Generator().manual_seed(0)
    for shape, dtype, causal in (((1, 1, 1, 1), torch.float32, True), ((2, 3, 7, 5), torch.float32, False),
                                 ((1, 2, 67, 33), torch.bfloat16, True)):
        q, k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
        yield (q, k, v, causal, shape[-1] ** -0.5), {}


def _backward_samples():
    for (q, k, v, causal, scale), _ in _samples():
        out, lse = _forward_cpu(q, k, v, causal, scale)
        yield (torch.randn(q.shape).to(q.dtype), q, k, v, out, lse, causal, scale), {}


register(OpSpec(qualname="fasttrain::attention", public=attention, reference=reference.attention_reference,
                test="tests/ops/test_attention.py", benchmark="benchmarks/bench_attention.py", samples=_samples))
register(OpSpec(qualname="fasttrain::attention_backward", public=attention,
                reference=reference.attention_backward_reference, test="tests/ops/test_attention.py",
                benchmark="benchmarks/bench_attention.py", samples=_backward_samples))
