"""`AdamW(step_in_backward=True).fuse_linear_backward(model)`: Linear weights updated from inside
their own backward, with the weight gradient never materialised.

With plain step_in_backward, autograd still computes each weight gradient (a fresh (out, in) tensor),
then the post-accumulate-grad hook reads it back and frees it. For a Linear layer the optimizer can do
better: the layer's backward hands the update its input x (rows, in) and output gradient dy (rows,
out), and the fused op (fasttrain.ops.adamw_linear_step_) computes dy^T x chunk by chunk inside the
update pass. Measured on this box (benchmarks/bench_adamw.py): for 4096 x 4096 fp32 layers at batch 8
the fresh gradient's page faults alone cost about twice the update itself.

How: each fused nn.Linear's class is switched to `FusedLinear` (a subclass whose forward routes
through `_LinearFn` when the fused path applies and is plain F.linear otherwise); `handle.remove()`
switches it back. The path applies when grad mode is on, the weight needs a gradient, the input is
fp32 on the CPU with at most MAX_ROWS rows after flattening leading dimensions, no autocast, not
under torch.compile, and the weight's param group keeps fp32 params and fp32 states without master
weights. Everything else (bias, other layers, other cases) uses the post-accumulate-grad hook.

A layer called several times in one step (shared weights across calls) is handled: the update
waits until the backward of every call since the last update has arrived and uses all of their rows
at once; a forward whose backward never comes (e.g. a grad-mode evaluation) is settled at the next
opt.step() / opt.zero_grad(). A weight that is a parameter of several modules (tying) is not fused.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fasttrain.ops.fused_linear import MAX_ROWS

__all__ = ["FusedLinear", "FusedLinearHandle"]


class _State:
    """Per-layer bookkeeping between forward and backward (never pickled or deep-copied with the
    model: a copy gets a detached state and runs plain F.linear)."""

    def __init__(self, opt: Any = None):
        self.opt = weakref.ref(opt) if opt is not None else (lambda: None)
        self.count = 0  # grad-mode forwards through the fused path since the last update
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __reduce__(self):
        return (_State, ())

    def arrived(self, weight: torch.Tensor, x: torch.Tensor, dy: torch.Tensor) -> None:
        self.pending.append((x, dy))
        if len(self.pending) >= self.count:
            self.flush(weight)

    def flush(self, weight: torch.Tensor) -> None:
        opt, pending = self.opt(), self.pending
        self.pending, self.count = [], 0
        if opt is None or not pending:
            return
        if len(pending) == 1:
            x, dy = pending[0]
        else:
            x, dy = torch.cat([p[0] for p in pending]), torch.cat([p[1] for p in pending])
        opt._step_linear(weight, x, dy)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: _State):
        ctx.save_for_backward(x, weight)
        ctx.state = state
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight = ctx.saved_tensors
        dy = gy.reshape(-1, gy.shape[-1]).contiguous()
        # The input gradient uses the weight as it was in forward: computed before the update.
        gx = (dy @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        gb = dy.sum(0) if ctx.needs_input_grad[2] else None
        ctx.state.arrived(weight, x.reshape(-1, x.shape[-1]).contiguous(), dy)
        return gx, None, gb, None


class FusedLinear(nn.Linear):
    """An nn.Linear whose weight update runs inside its backward (see the module docstring). Only
    ever made by switching the class of an existing nn.Linear; state_dict and parameters are the
    nn.Linear ones."""

    _ft_state: _State

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        st = getattr(self, "_ft_state", None)
        if (not torch.compiler.is_compiling() and st is not None and torch.is_grad_enabled() and w.requires_grad
                and x.dtype == torch.float32
                and w.dtype == torch.float32 and x.device.type == "cpu" and x.dim() >= 1
                and 0 < x.numel() <= MAX_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
                and st.opt() is not None):
            st.count += 1
            return _LinearFn.apply(x, w, self.bias, st)
        return F.linear(x, w, self.bias)


class FusedLinearHandle:
    """Returned by AdamW.fuse_linear_backward: `.modules` lists the fused layers' names,
    `.remove()` restores their class (like a torch hook handle)."""

    def __init__(self, opt: Any, fused: list[tuple[str, nn.Linear, type]]):
        self._opt = weakref.ref(opt)
        self._fused = fused
        self.modules = [name for name, _, _ in fused]

    def remove(self) -> None:
        opt = self._opt()
        if opt is not None:
            opt._flush_linear()  # updates still waiting for a backward use the fused path one last time
            removed = {id(m) for _, m, _ in self._fused}
            opt._fused_layers = [s for s in opt._fused_layers if id(s[0]) not in removed]
        for _, m, cls in self._fused:
            m.__class__ = cls
            m.__dict__.pop("_ft_state", None)
        self._fused = []


def fuse(opt: Any, model: nn.Module, eligible) -> FusedLinearHandle:
    """Switches every plain nn.Linear of `model` whose weight `eligible(weight)` accepts."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    fused = []
    for name, m in model.named_modules():
        if type(m) is not nn.Linear or uses.get(id(m.weight), 0) != 1 or not eligible(m.weight):
            continue
        m._ft_state = _State(opt)
        m.__class__ = FusedLinear
        opt._fused_layers.append((m, m._ft_state))
        fused.append((name, m, nn.Linear))
    return FusedLinearHandle(opt, fused)
