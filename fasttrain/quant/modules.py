"""Quantized replacements for nn.Linear, backed by the fasttrain.ops quantized linear ops.

Each module keeps its packed weights as buffers (saved by state_dict) and accepts x: (..., in_features)
in fp32, bf16 or fp16 (fp16 is computed in fp32 and rounded back), returning (..., out_features) in x's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from fasttrain._ext import _C, num_threads
from fasttrain.ops import quant as qops

__all__ = ["QuantizedLinear", "Int8DynamicLinear", "Int8WeightLinear", "Int4WeightLinear"]


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class QuantizedLinear(nn.Module):
    """Base class: in/out features, an optional fp32 bias buffer and the dtype plumbing."""

    scheme = ""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    # The eager CPU fast path (forward): the buffers' (data_ptr, version, is_cpu) key when they last passed
    # the op layer's checks, and the kernel bound to their addresses then.
    _fast: tuple | None = None

    def _compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bind_cpu(self):  # pragma: no cover - abstract
        """The CPU kernel bound to the (checked) buffers: a function x2 (M, in_features) contiguous fp32/bf16
        -> (M, out_features) fp32."""
        raise NotImplementedError

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_fast", None)  # a closure over addresses: not picklable, and rebuilt on the next call anyway
        return state

    def _buffers_key(self) -> tuple:
        return tuple((b.data_ptr(), b._version, b.is_cpu) for b in self._buffers.values() if b is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # Eager CPU fast path: at batch 1 a layer's kernel takes ~50-100 us, and the torch.library dispatch,
        # per-call argument checks and attribute lookups cost ~15 us of it. The buffers are checked (through
        # the op) on the first call and again whenever one is replaced or modified in place (data_ptr /
        # version change); in between the kernel runs bound to their addresses. Traced or compiled code,
        # autograd inputs and CUDA take the op.
        if (x.is_cpu and x.dim() >= 1 and x.shape[-1] == self.in_features and not torch.compiler.is_compiling()
                and not (x.requires_grad and torch.is_grad_enabled())):
            if dtype is not torch.float32 and dtype is not torch.bfloat16:
                x = x.float()
            x = x.contiguous()
            key = self._buffers_key()
            fast = self._fast
            if fast is not None and fast[0] == key:
                if x.dim() == 2:
                    y = fast[1](x)
                else:
                    y = fast[1](x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
                return y if dtype is torch.float32 else y.to(dtype)
            y = self._compute(x)
            self._fast = (key, self._bind_cpu())
        else:
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
    # nn.Module's state_dict versioning: version 2 stores w_q VNNI-blocked (fasttrain.ops.quant); version 1
    # (or a checkpoint without metadata) stored it row-major (N, Kp) and is repacked on load.
    _version = qops.INT8_LAYOUT_VERSION

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        kp = qops._round_up(in_features, qops.ALIGN_K)
        npad = qops._round_up(out_features, qops.BLOCK_N)
        self.register_buffer("w_q", torch.zeros(npad // qops.BLOCK_N, kp // 4, qops.BLOCK_N, 4, dtype=torch.int8))
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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "w_q"
        w_q = state_dict.get(key)
        # The shape decides, not only the metadata version: state dicts re-saved through formats that drop
        # torch's metadata (safetensors) still carry a 2-D version-1 tensor.
        if isinstance(w_q, torch.Tensor) and w_q.dim() == 2:
            expected = (self.out_features, qops._round_up(self.in_features, qops.ALIGN_K))
            if tuple(w_q.shape) != expected:
                raise RuntimeError(f"{type(self).__name__}: {key} has the version-1 (N, Kp) int8 layout but shape "
                                   f"{tuple(w_q.shape)}; this layer needs {expected} (in_features={self.in_features}, "
                                   f"out_features={self.out_features})")
            state_dict[key] = qops.repack_int8_weight(w_q.contiguous())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class Int8DynamicLinear(_Int8):
    """int8 weights (per output channel) x int8 activations (per token, at run time), int32 accumulation."""

    scheme = "int8-dynamic"

    def _compute(self, x):
        return qops.int8_dynamic_linear(x, self.w_q, self.w_scale, self.w_sum, self.bias)

    def _bind_cpu(self):
        f, w, s, ws, b = _C.quant.int8_dynamic_linear, self.w_q.data_ptr(), self.w_scale.data_ptr(), \
            self.w_sum.data_ptr(), _ptr(self.bias)
        N, Kp = self.out_features, 4 * self.w_q.shape[1]

        def run(x2):
            M, K = x2.shape
            y = torch.empty((M, N), dtype=torch.float32)
            f(x2.data_ptr(), x2.dtype is torch.bfloat16, M, K, w, s, ws, b, y.data_ptr(), N, Kp, num_threads())
            return y

        return run


class Int8WeightLinear(_Int8):
    """int8 weights (per output channel), fp32 arithmetic."""

    scheme = "int8-weight"

    def _compute(self, x):
        return qops.int8_weight_linear(x, self.w_q, self.w_scale, self.bias)

    def _bind_cpu(self):
        f, w, s, b = _C.quant.int8_weight_linear, self.w_q.data_ptr(), self.w_scale.data_ptr(), _ptr(self.bias)
        N, Kp = self.out_features, 4 * self.w_q.shape[1]

        def run(x2):
            M, K = x2.shape
            y = torch.empty((M, N), dtype=torch.float32)
            f(x2.data_ptr(), x2.dtype is torch.bfloat16, M, K, w, s, b, y.data_ptr(), N, Kp, num_threads())
            return y

        return run


class Int4WeightLinear(QuantizedLinear):
    """int4 weights in groups of `group_size` inputs with fp32 or bf16 scales; activations quantized per token
    to 16 bits, exact integer group sums, fp32 scaling (fasttrain.ops.int4_weight_linear)."""

    scheme = "int4-weight"
    # 3: blocked w_packed and w_scale (Np / 16, G, 16); older state dicts are repacked on load (version 2:
    # (G, N) scales; version 1: also (N, Kp / 2) weights and (N, G) scales).
    _version = qops.INT4_LAYOUT_VERSION

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128,
                 scale_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = qops._check_group_size("fasttrain.quant.Int4WeightLinear", group_size)
        kp = qops._round_up(in_features, group_size)
        nblocks = qops._round_up(out_features, qops.BLOCK_N) // qops.BLOCK_N
        self.register_buffer("w_packed", torch.full((nblocks, kp // 8, qops.BLOCK_N, 4), 0x88, dtype=torch.uint8))
        self.register_buffer("w_scale", torch.ones(nblocks, kp // group_size, qops.BLOCK_N, dtype=scale_dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, scale_dtype: torch.dtype = torch.float32):
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, scale_dtype)
        m.w_packed, m.w_scale = qops.quantize_int4_weight(linear.weight, group_size, scale_dtype)
        if linear.bias is not None:
            m.bias = linear.bias.detach().float().clone()
        return m.to(linear.weight.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "w_packed"
        w = state_dict.get(key)
        if isinstance(w, torch.Tensor) and w.dim() == 2:  # layout version 1 (see _Int8._load_from_state_dict)
            expected = (self.out_features, qops._round_up(self.in_features, self.group_size) // 2)
            if tuple(w.shape) != expected:
                raise RuntimeError(f"{type(self).__name__}: {key} has the version-1 (N, Kp / 2) int4 layout but shape "
                                   f"{tuple(w.shape)}; this layer needs {expected} (in_features={self.in_features}, "
                                   f"out_features={self.out_features}, group_size={self.group_size})")
            state_dict[key] = qops.repack_int4_weight(w.contiguous())
        skey = prefix + "w_scale"
        scale = state_dict.get(skey)
        if isinstance(scale, torch.Tensor) and scale.dim() == 2:  # versions 1 (N, G) and 2 (G, N)
            # The weight's rank tells the versions apart (a version-1 w_packed is 2-D), also for state dicts
            # whose metadata was dropped; a square (N = G) version-2 scale needs the weight to be 4-D.
            version = 1 if isinstance(w, torch.Tensor) and w.dim() == 2 else 2
            groups = qops._round_up(self.in_features, self.group_size) // self.group_size
            expected = (self.out_features, groups) if version == 1 else (groups, self.out_features)
            if tuple(scale.shape) != expected:
                raise RuntimeError(f"{type(self).__name__}: {skey} has the version-{version} int4 scale layout but "
                                   f"shape {tuple(scale.shape)}; this layer needs {expected}")
            state_dict[skey] = qops.repack_int4_scale(scale, self.out_features, version=version)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _compute(self, x):
        return qops.int4_weight_linear(x, self.w_packed, self.w_scale, self.group_size, self.bias, self.out_features)

    def _bind_cpu(self):
        f, w, s, b = _C.quant.int4_weight_linear, self.w_packed.data_ptr(), self.w_scale.data_ptr(), _ptr(self.bias)
        s_bf16, group, N, Kp = self.w_scale.dtype is torch.bfloat16, self.group_size, self.out_features, 8 * self.w_packed.shape[1]

        def run(x2):
            M, K = x2.shape
            y = torch.empty((M, N), dtype=torch.float32)
            f(x2.data_ptr(), x2.dtype is torch.bfloat16, M, K, w, s, s_bf16, group, b, y.data_ptr(), N, Kp, num_threads())
            return y

        return run

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}, scale_dtype={self.w_scale.dtype}"
