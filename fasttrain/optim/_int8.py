"""Blockwise 8-bit AdamW states of one flat param group: fasttrain.optim.AdamW(state_dtype="int8").

Layout (chosen by _FlatGroup when the group is built, see `int8_min_numel` there): parameters with at
least INT8_MIN_NUMEL elements come first in the flat buffers, each starting at a multiple of 256, so
every 256-element block (one fp32 scale per state) belongs to one tensor; they end at `fg.n8`, a
multiple of 256. The smaller tensors follow and keep fp32 states, as bitsandbytes and torchao do
(their few elements would pay a scale per short block, and biases / norms are the most sensitive).
So one step is one pass: `adamw_int8_step_` over [0, n8) and `adamw_step_` over the fp32 tail.

State per parameter (`optimizer.state[p]`), large tensors:
    exp_avg           int8 codes, p's shape    m = sign(q) * q^2 * exp_avg_scale / 127^2
    exp_avg_sq        uint8 codes, p's shape   v = (q^2 * exp_avg_sq_scale / 255^2)^2  (codes of sqrt(v))
    exp_avg_scale, exp_avg_sq_scale   fp32 (ceil(numel / 256),)   per-block absmax of m and of sqrt(v)
small tensors: exp_avg, exp_avg_sq in fp32, as torch.optim.AdamW. The maps and why they are what
they are: csrc/optim/optim_int8.h; pure torch: fasttrain.ops.reference.quantize_int8_states_reference.
"""

from __future__ import annotations

from typing import Any

import torch

from fasttrain.ops.optim import adamw_int8_step_, adamw_step_
from fasttrain.ops.reference import INT8_BLOCK, dequantize_int8_states_reference, quantize_int8_states_reference

__all__: list[str] = []

# Tensors with fewer elements keep fp32 states (bitsandbytes' min_8bit_size and torchao use 4096).
INT8_MIN_NUMEL = 4096


_INT8_KW = ("lr", "beta1", "beta2", "eps", "weight_decay", "maximize", "grad_scale")


def _int8_kw(kw: dict[str, Any]) -> dict[str, Any]:
    """AdamW's step kwargs minus those the 8-bit op has no use for (amsgrad and stochastic rounding
    are rejected when the group is built)."""
    return {k: kw[k] for k in _INT8_KW}


class Int8States:
    """The 8-bit (and small-tensor fp32) state buffers of one _FlatGroup and their per-parameter views."""

    def __init__(self, fg: Any):
        dev, n8 = fg.param_buf.device, fg.n8
        self.n8 = n8
        self.m = torch.zeros(n8, dtype=torch.int8, device=dev)
        self.v = torch.zeros(n8, dtype=torch.uint8, device=dev)
        self.m_scale = torch.zeros(n8 // INT8_BLOCK, device=dev)
        self.v_scale = torch.zeros(n8 // INT8_BLOCK, device=dev)
        self.m32 = torch.zeros(fg.total - n8, device=dev)  # small tensors' fp32 states
        self.v32 = torch.zeros(fg.total - n8, device=dev)
        self.large = list(fg.large)
        self.views: list[dict[str, torch.Tensor]] = []
        for p, o, n, big in zip(fg.params, fg.offsets, fg.numels, fg.large):
            if big:
                b0, b1 = o // INT8_BLOCK, -(-(o + n) // INT8_BLOCK)
                self.views.append({"exp_avg": self.m[o : o + n].view_as(p), "exp_avg_sq": self.v[o : o + n].view_as(p),
                                   "exp_avg_scale": self.m_scale[b0:b1], "exp_avg_sq_scale": self.v_scale[b0:b1]})
            else:
                t = o - n8
                self.views.append({"exp_avg": self.m32[t : t + n].view_as(p), "exp_avg_sq": self.v32[t : t + n].view_as(p)})

    def nbytes(self) -> int:
        """Bytes of optimizer state held (codes, scales and the small tensors' fp32 states)."""
        return sum(t.numel() * t.element_size() for t in (self.m, self.v, self.m_scale, self.v_scale, self.m32, self.v32))

    # -- the step ------------------------------------------------------------------------------
    def step_all(self, fg: Any, step: float, kw: dict[str, Any]) -> None:
        """The whole group: the 8-bit segment, then the fp32 tail (disjoint memory: still one pass)."""
        n8 = self.n8
        if n8:
            adamw_int8_step_(fg.param_buf[:n8], fg.grad_buf[:n8], self.m, self.v, self.m_scale, self.v_scale,
                             step=step, **_int8_kw(kw))
        if fg.total > n8:
            adamw_step_(fg.param_buf[n8:], fg.grad_buf[n8:], self.m32, self.v32, step=step, **kw)

    def step_one(self, fg: Any, i: int, grad: torch.Tensor, step: float, kw: dict[str, Any]) -> None:
        """Parameter i alone (per-tensor fallback, step_in_backward). Its blocks are its own, and the
        padding after it is zero and stays zero, so the result equals the whole-group pass."""
        sv, p = self.views[i], fg.param_views[i].view(-1)
        g = grad.reshape(-1) if grad.is_contiguous() else grad.contiguous().view(-1)
        if self.large[i]:
            adamw_int8_step_(p, g, sv["exp_avg"].view(-1), sv["exp_avg_sq"].view(-1), sv["exp_avg_scale"],
                             sv["exp_avg_sq_scale"], step=step, **_int8_kw(kw))
        else:
            adamw_step_(p, g, sv["exp_avg"].view(-1), sv["exp_avg_sq"].view(-1), step=step, **kw)

    # -- state dicts ---------------------------------------------------------------------------
    @torch.no_grad()
    def load(self, i: int, st: dict[str, Any]) -> None:
        """Parameter i's states from a saved state entry: 8-bit codes + scales are copied exactly;
        fp32/bf16 states (a torch.optim.AdamW or state_dtype fp32/bf16 state dict) are quantized with
        the kernels' map; missing states start at zero."""
        sv = self.views[i]
        m, v = st.get("exp_avg"), st.get("exp_avg_sq")
        if m is None or v is None:
            for t in sv.values():
                t.zero_()
            return
        quantized = "exp_avg_scale" in st
        if self.large[i]:
            if quantized:
                for k in ("exp_avg", "exp_avg_sq", "exp_avg_scale", "exp_avg_sq_scale"):
                    sv[k].copy_(st[k].reshape(sv[k].shape))
                return
            qm, qv, am, as_ = quantize_int8_states_reference(m.detach().float().cpu(), v.detach().float().cpu())
            for k, t in (("exp_avg", qm), ("exp_avg_sq", qv), ("exp_avg_scale", am), ("exp_avg_sq_scale", as_)):
                sv[k].copy_(t.reshape(sv[k].shape))
            return
        if quantized:  # saved with a lower INT8_MIN_NUMEL: back to fp32
            m, v = dequantize_states(st)
        sv["exp_avg"].copy_(m.reshape(sv["exp_avg"].shape))
        sv["exp_avg_sq"].copy_(v.reshape(sv["exp_avg_sq"].shape))


def dequantize_states(st: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (exp_avg, exp_avg_sq) of a saved 8-bit state entry (loading it into fp32/bf16 states)."""
    return dequantize_int8_states_reference(st["exp_avg"].cpu(), st["exp_avg_sq"].cpu(), st["exp_avg_scale"].cpu(),
                                            st["exp_avg_sq_scale"].cpu())
