"""Quantized replacements for nn.Linear, backed by the fasttrain.ops quantized linear ops.

Each module keeps its packed weights as buffers (saved by state_dict) and accepts x: (..., in_features)
in fp32, bf16 or fp16 (fp16 is computed in fp32 and rounded back), returning (..., out_features) in x's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from fasttrain.ops import quant as qops

__all__ = ["QuantizedLinear", "Int8DynamicLinear", "Int8WeightLinear", "Int4WeightLinear"]


class QuantizedLinear(nn.Module):
    """Base class: in/out features, an optional fp32 bias buffer and the dtype plumbing."""

    scheme = ""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype not in (torch.float32, torch.bfloat16):
            x = x.float()
        y = self._compute(x.contiguous())
        return y if y.dtype == dtype else y.to(dtype)

    def weight_bytes(self) -> int:
        """Bytes of the packed weights and scales (what a batch-1 forward reads)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _Int8(QuantizedLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        kp = qops._round_up(in_features, qops.ALIGN_K)
        self.register_buffer("w_q", torch.zeros(out_features, kp, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("w_sum", torch.zeros(out_features, dtype=torch.int32))

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        w_q, w_scale, w_sum = qops.quantize_int8_weight(linear.weight)
        m.w_q, m.w_scale, m.w_sum = w_q, w_scale, w_sum
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m.to(linear.weight.device)


class Int8DynamicLinear(_Int8):
    """int8 weights (per output channel) x int8 activations (per token, at run time), int32 accumulation."""

    scheme = "int8-dynamic"

    def _compute(self, x):
        return qops.int8_dynamic_linear(x, self.w_q, self.w_scale, self.w_sum, self.bias)


class Int8WeightLinear(_Int8):
    """int8 weights (per output channel), fp32 arithmetic."""

    scheme = "int8-weight"

    def _compute(self, x):
        return qops.int8_weight_linear(x, self.w_q, self.w_scale, self.bias)


class Int4WeightLinear(QuantizedLinear):
    """int4 weights in groups of `group_size` inputs with fp32 or bf16 scales, fp32 arithmetic."""

    scheme = "int4-weight"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128,
                 scale_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = qops._check_group_size("fasttrain.quant.Int4WeightLinear", group_size)
        kp = qops._round_up(in_features, group_size)
        self.register_buffer("w_packed", torch.full((out_features, kp // 2), 0x88, dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones(out_features, kp // group_size, dtype=scale_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, scale_dtype: torch.dtype = torch.float32):
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, scale_dtype)
        m.w_packed, m.w_scale = qops.quantize_int4_weight(linear.weight, group_size, scale_dtype)
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m.to(linear.weight.device)

    def _compute(self, x):
        return qops.int4_weight_linear(x, self.w_packed, self.w_scale, self.group_size, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}, scale_dtype={self.w_scale.dtype}"
