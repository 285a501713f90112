"""Flat storage shared by fasttrain's optimizers.

At construction each param group's parameters are packed into one contiguous buffer (each
parameter becomes a view of it, `p.data = flat[o:o + n].view_as(p)`), and `p.grad` is set to a view
of a second flat buffer, which autograd then accumulates into in place. Optimizer states live in
flat buffers too and `self.state[p]` holds views of them, so `state_dict()` looks exactly like
torch.optim's. A step is then one kernel call per group over contiguous memory: C++ for CPU
groups, Triton for CUDA groups (AdamW only), whose step counts then live on the device.

What users can break, and what happens (checked at every step, cheap pointer comparisons):
- `p.grad = t` (a new tensor) or `p.data = t`: detected; the new values are copied into the flat
  slot and `p.grad` / `p.data` pointed back at it (one extra copy of that tensor, then the fused
  path as usual). A new shape or dtype raises ValueError.
- `p.grad = None` (or a group built from params that never got a grad): that parameter is skipped
  this step, as in torch, and the group runs a per-tensor path (still the fused kernel, one call per
  tensor, with per-parameter step counts) until the step counts agree again.
- `zero_grad(set_to_none=False)` zeroes the flat gradient buffer in place and re-attaches the views,
  so the next backward accumulates into it and a parameter that gets no gradient is updated with a
  zero gradient (torch's behaviour for set_to_none=False).
- `zero_grad()` (set_to_none=True, torch's default): where the optimizer can read gradients wherever
  autograd put them (`_keeps_grads`: fasttrain.optim.AdamW with fp32 params and states on CPU, no
  max_grad_norm), gradients are set to None as in torch; the next backward then hands over fresh
  tensors instead of adding into a kept buffer, and the step reads them in place (one multi-tensor
  kernel call): no zeroing pass, no accumulation pass, and the flat gradient buffer is freed until
  something needs it again (set_to_none=False, a swapped grad the kernel cannot read, a configuration
  change), so no gradient memory is held between steps. A parameter without a gradient is skipped, as
  in torch. Elsewhere (bf16/fp16 params, int8 or bf16 states, max_grad_norm, SGD, Lion, CUDA) it
  behaves as set_to_none=False, because those steps read the flat buffer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch

__all__: list[str] = []

# Offsets of each parameter in the flat buffers are rounded up to 16 elements (64 bytes) so every
# tensor starts on a cache line; the padding is zero in every buffer and stays zero under the update.
_ALIGN = 16


_QBLOCK = 256  # elements per scale of 8-bit states (fasttrain.ops.reference.INT8_BLOCK)


# Which kernels run a group's step: "auto" = C++ for CPU tensors, Triton for CUDA tensors; "triton" =
# Triton for CPU tensors too (private, for tests: with TRITON_INTERPRET=1 the CUDA path, device-side
# scalars and all, runs on CPU). Read when a param group is added; tests set this attribute directly.
_BACKEND = os.environ.get("FASTTRAIN_OPTIM_BACKEND", "auto")


def _scalar(x: Any) -> float:
    """A hyperparameter as a Python float (a 1-element tensor lr is read; on CUDA that read is a sync)."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _uses_triton(device: torch.device) -> bool:
    return device.type == "cuda" or _BACKEND == "triton"


def _align(n: int, to: int = _ALIGN) -> int:
    return (n + to - 1) // to * to


class _FlatGroup:
    """The flat buffers of one param group. Buffers are 1-D of `total` elements."""

    def __init__(self, params: list[torch.nn.Parameter], flat_grads: bool = True, int8_min_numel: int | None = None,
                 triton_ok: bool = False):
        self.params = params
        self.dtype = params[0].dtype
        self.numels = [p.numel() for p in params]
        self.offsets: list[int] = [0] * len(params)
        # 8-bit states (fasttrain/optim/_int8.py): params of >= int8_min_numel elements go first, each
        # at a multiple of the 256-element quantization block, ending at n8; the rest follow.
        self.large = [int8_min_numel is not None and n >= int8_min_numel for n in self.numels]
        o = 0
        for i, n in enumerate(self.numels):
            if self.large[i]:
                self.offsets[i] = o
                o += _align(n, _QBLOCK)
        self.n8 = o
        for i, n in enumerate(self.numels):
            if not self.large[i]:
                self.offsets[i] = o
                o += _align(n)
        self.total = o
        dev = params[0].device
        self.param_buf = torch.zeros(self.total, dtype=self.dtype, device=dev)
        self.param_views = self.views(self.param_buf)
        # flat_grads=False (step_in_backward): autograd's own per-parameter grads, freed after each update.
        # With flat_grads the gradient buffer can still be released (`release_grads`, when the step reads
        # autograd's tensors in place) and comes back, zeroed, the next time anything asks for it.
        self.flat_grads = flat_grads
        self._grad_buf: torch.Tensor | None = None
        self._grad_views: list[torch.Tensor] | None = None
        self._gptrs: list[int] | None = None
        with torch.no_grad():
            for i, (p, pv) in enumerate(zip(params, self.param_views)):
                pv.copy_(p.detach())
                if flat_grads:
                    if p.grad is not None:
                        self.grad_views[i].copy_(p.grad)
                    p.grad = self.grad_views[i]
                else:
                    p.grad = None
                p.data = pv
        self.pptrs = [v.data_ptr() for v in self.param_views]
        self.state_bufs: dict[str, torch.Tensor] = {}
        self.state_views: dict[str, list[torch.Tensor]] = {}
        # Triton groups (CUDA, or the forced backend) keep the step counts on the params' device, as torch's
        # fused CUDA optimizers do: a GradScaler skip is only known there, so the host never reads them.
        # `tries` counts the step() calls that attempted each parameter (host ints): a skip is all-or-nothing
        # for a step, so the counts agree exactly when the tries do, and uniformity needs no device read.
        self.triton = triton_ok and _uses_triton(dev)
        self.steps = torch.zeros(len(params), dtype=torch.float32, device=dev if self.triton else "cpu")
        self.tries = [0] * len(params)
        # The common step count of every parameter in the group, or None when they differ (then the
        # group runs per tensor, each with its own count).
        self.uniform_step: int | None = 0
        # (pointers of the param/state buffers, their views' pointer lists + numels) for the multi-tensor
        # AdamW call (fasttrain/optim/adamw.py), rebuilt when a state buffer is reallocated
        self.multi_ptrs: tuple[Any, Any] = (None, None)

    # The flat gradient buffer, its per-parameter views and their addresses (None without flat_grads).
    @property
    def grad_buf(self) -> torch.Tensor | None:
        if self._grad_buf is None and self.flat_grads:
            self._grad_buf = torch.zeros(self.total, dtype=self.dtype, device=self.param_buf.device)
            self._grad_views = self.views(self._grad_buf)
            self._gptrs = [v.data_ptr() for v in self._grad_views]
        return self._grad_buf

    @property
    def grad_views(self) -> list[torch.Tensor] | None:
        return self._grad_views if self.grad_buf is not None else None

    @property
    def gptrs(self) -> list[int] | None:
        return self._gptrs if self.grad_buf is not None else None

    @property
    def has_grad_buf(self) -> bool:
        """Whether the flat gradient buffer is allocated now (asking for it allocates it)."""
        return self._grad_buf is not None

    def release_grads(self) -> None:
        """Frees the flat gradient buffer (no parameter's .grad may still be one of its views)."""
        self._grad_buf = self._grad_views = self._gptrs = None

    def views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        return [buf[o : o + n].view_as(p) for p, o, n in zip(self.params, self.offsets, self.numels)]

    def state_buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The flat buffer of state `name` (zeros on first use); reallocated if its dtype changed."""
        buf = self.state_bufs.get(name)
        if buf is None or buf.dtype != dtype:
            new = torch.zeros(self.total, dtype=dtype, device=self.param_buf.device)
            if buf is not None:
                new.copy_(buf)
            self.state_bufs[name] = new
            self.state_views[name] = self.views(new)
        return self.state_bufs[name]

    def refresh_uniform_step(self) -> None:
        if self.triton:  # the value is never used on this path, only whether the counts agree
            self.uniform_step = 0 if len(set(self.tries)) <= 1 else None
            return
        lo, hi = float(self.steps.min()), float(self.steps.max())
        self.uniform_step = int(lo) if lo == hi and lo == int(lo) else None


class _FlatOptimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer over flat per-group buffers. Subclasses define `_state_names(group)`,
    `_check_group(group)` and `_update(group, fg, idx, steps)`."""

    _flat: list[_FlatGroup]
    _cuda_ok = False  # subclasses with a Triton update path accept CUDA parameters
    # Whether _step_groups runs the Triton groups too, through _update (SGD, Lion: no device-side step
    # scalars, so the host's `tries` counts are their step counts); AdamW steps them itself (_step_triton).
    _triton_in_update = False

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]):
        self._flat = []
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        name = type(self).__name__
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif not isinstance(params, set):  # torch raises its own TypeError for sets
            params = list(params)
        devices = {p.device for p in params if isinstance(p, torch.Tensor)} if not isinstance(params, set) else set()
        if len(devices) > 1:
            raise ValueError(f"{name}: one param group holds parameters on {sorted(map(str, devices))}; "
                             "put parameters of different devices in different groups")
        seen: set[int] = set()
        for i, p in enumerate(params if not isinstance(params, set) else []):
            if not isinstance(p, torch.Tensor):
                continue  # torch raises for non-tensors below
            if id(p) in seen:
                raise ValueError(f"{name}: parameter {i} of a param group appears twice; pass each parameter once "
                                 "(deduplicate tied weights, e.g. list(dict.fromkeys(params)))")
            seen.add(id(p))
            if p.is_complex():
                raise TypeError(f"{name}: parameter {i} is complex ({p.dtype}); complex parameters are not supported "
                                "(store them as real views with torch.view_as_real)")
            if p.layout != torch.strided:
                raise TypeError(f"{name}: parameter {i} has layout {p.layout}; only dense parameters are supported")
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"{name}: parameter {i} has dtype {p.dtype}; supported: float32, bfloat16, float16")
            if p.device.type != "cpu" and not (p.device.type == "cuda" and self._cuda_ok):
                where = "CPU and CUDA" if type(self)._cuda_ok else "CPU"
                alt = "" if type(self)._cuda_ok else (" (fasttrain.optim.AdamW runs on CUDA; for this optimizer use "
                                                      f"torch.optim.{name}(fused=True) there)")
                raise ValueError(f"{name}: parameter {i} is on {p.device}; {name} supports {where} parameters{alt}")
            if not p.requires_grad:
                raise ValueError(f"{name}: parameter {i} has requires_grad=False; pass only trainable parameters "
                                 "(e.g. [p for p in model.parameters() if p.requires_grad])")
            if p.grad is not None and p.grad.layout != torch.strided:
                raise TypeError(f"{name}: parameter {i} has a sparse gradient; sparse gradients are not supported")
        dtypes = {p.dtype for p in params if isinstance(p, torch.Tensor)} if not isinstance(params, set) else set()
        if len(dtypes) > 1:
            raise ValueError(f"{name}: one param group mixes dtypes {sorted(map(str, dtypes))}; put parameters of "
                             "different dtypes in different groups (each group is one flat buffer)")
        param_group = dict(param_group, params=params)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        flat_grads = not getattr(self, "step_in_backward", False)
        fg = (_FlatGroup(group["params"], flat_grads=flat_grads, triton_ok=self._cuda_ok, **self._layout(group))
              if group["params"] else None)
        self._flat.append(fg)
        if fg is not None:
            self._attach_state(group, fg)

    def _attach_state(self, group: dict[str, Any], fg: _FlatGroup) -> None:
        for name in self._state_names(group):
            fg.state_buffer(name, self._state_dtype(group, fg, name))
        if "master" in self._state_names(group):  # masters start as the params' values
            fg.state_bufs["master"].copy_(fg.param_buf)
        for i, p in enumerate(fg.params):
            st: dict[str, Any] = {"step": fg.steps[i]}
            for name in self._state_names(group):
                st[name] = fg.state_views[name][i]
            self.state[p] = st

    # -- hooks for subclasses ----------------------------------------------------------------
    def _state_names(self, group: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def _state_dtype(self, group: dict[str, Any], fg: _FlatGroup, name: str) -> torch.dtype:
        return torch.float32

    def _check_group(self, group: dict[str, Any]) -> None:
        pass

    def _keeps_grads(self, group: dict[str, Any], fg: _FlatGroup) -> bool:
        """Whether this group's step can read autograd's own gradient tensors in place (so zero_grad
        may set them to None). Subclasses that can say so override this."""
        return False

    def _layout(self, group: dict[str, Any]) -> dict[str, Any]:
        """Extra _FlatGroup arguments for this group (AdamW's 8-bit states ask for int8_min_numel)."""
        return {}

    def _load_group(self, group: dict[str, Any], fg: _FlatGroup, loaded: list[dict[str, Any]]) -> None:
        """Copies each parameter's saved states (`loaded[i]`, not yet cast by torch) into the buffers."""
        for name in self._state_names(group):
            fg.state_buffer(name, self._state_dtype(group, fg, name))
            for i, st in enumerate(loaded):
                v = st.get(name)
                view = fg.state_views[name][i]
                if v is not None:
                    view.copy_(v.reshape(view.shape))
                elif name == "master":
                    view.copy_(fg.param_views[i])
                else:
                    view.zero_()
        names = self._state_names(group)
        for i, p in enumerate(fg.params):
            self.state[p] = {"step": fg.steps[i], **{n: fg.state_views[n][i] for n in names}}

    def _update(self, group: dict[str, Any], fg: _FlatGroup, idx: list[int] | None, steps: list[float]) -> None:
        """idx None: the whole flat group at steps[0]; else the listed parameters at their own steps."""
        raise NotImplementedError

    # -- the step ----------------------------------------------------------------------------
    def _sync(self, fg: _FlatGroup, keep_grads: bool = False) -> list[int]:
        """Re-adopts swapped params/grads into the flat buffers; returns indices of params with no grad.
        keep_grads: gradients that are not views of the flat buffer stay where they are when the
        multi-tensor kernel can read them (fp32, contiguous, the param's shape, same device)."""
        name = type(self).__name__
        missing = []
        for i, p in enumerate(fg.params):
            if p.data_ptr() != fg.pptrs[i] or p.shape != fg.param_views[i].shape:
                d = p.data
                if d.shape != fg.param_views[i].shape or d.dtype != fg.dtype or d.device != fg.param_buf.device:
                    raise ValueError(f"{name}: parameter {i} was replaced by a tensor of shape {tuple(d.shape)}, {d.dtype} "
                                     f"on {d.device}; the optimizer holds {tuple(fg.param_views[i].shape)} {fg.dtype}: "
                                     "build a new optimizer after changing parameter shapes or dtypes")
                fg.param_views[i].copy_(d)
                p.data = fg.param_views[i]
                if "master" in fg.state_bufs:  # a user-set value wins over the master
                    fg.state_views["master"][i].copy_(d)
            gr = p.grad
            if gr is None:
                missing.append(i)
                if not keep_grads:  # a skipped parameter must not count in a global grad norm
                    fg.grad_views[i].zero_()
            elif gr.layout != torch.strided:
                raise TypeError(f"{name}: parameter {i} has a {gr.layout} gradient; sparse gradients are not supported "
                                "(use dense embeddings: nn.Embedding(sparse=False))")
            elif (keep_grads and gr.dtype == fg.dtype and gr.shape == p.shape and gr.device == p.device
                    and gr.is_contiguous()):
                continue  # read where it is (a view of the flat buffer, or autograd's own tensor)
            elif gr.data_ptr() != fg.gptrs[i] or gr.shape != fg.grad_views[i].shape:
                if gr.shape != p.shape or gr.is_complex():
                    raise ValueError(f"{name}: the gradient of parameter {i} has shape {tuple(gr.shape)} ({gr.dtype}); "
                                     f"expected {tuple(p.shape)}")
                fg.grad_views[i].copy_(gr)
                p.grad = fg.grad_views[i]
        return missing

    @torch.compiler.disable  # see AdamW.step
    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_groups()
        return loss

    def _step_groups(self) -> None:
        """The CPU groups' update (under no_grad: step's decorators). A subclass's step calls this
        directly: a second pass through the decorators costs more than a small model's update."""
        for group, fg in zip(self.param_groups, self._flat):
            if fg is None or (fg.triton and not self._triton_in_update):  # stepped by the subclass (AdamW)
                continue
            missing = self._sync(fg, self._keeps_grads(group, fg))
            if not missing and fg.uniform_step is not None:
                if fg.triton:  # counts from the host's tries: the device steps are never read in a step
                    self._update(group, fg, None, [float(fg.tries[0] + 1)])
                    fg.tries = [t + 1 for t in fg.tries]
                    fg.steps.add_(1.0)
                    continue
                step = fg.uniform_step + 1
                self._update(group, fg, None, [float(step)])
                fg.steps.add_(1.0)
                fg.uniform_step = step
            else:  # per-tensor fallback: torch semantics for params without a gradient
                skip = set(missing)
                idx = [i for i in range(len(fg.params)) if i not in skip]
                if fg.triton:
                    for i in idx:
                        fg.tries[i] += 1
                        fg.steps[i : i + 1].add_(1.0)
                    self._update(group, fg, idx, [float(fg.tries[i]) for i in idx])
                else:
                    for i in idx:
                        fg.steps[i] += 1.0
                    steps = fg.steps.tolist()
                    self._update(group, fg, idx, [steps[i] for i in idx])
                fg.refresh_uniform_step()

    @torch.compiler.disable
    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        """set_to_none=True: gradients become None where the step reads autograd's tensors in place
        (`_keeps_grads`); everywhere else, and with set_to_none=False, the flat gradient buffers are
        zeroed in place and every gradient is re-attached to its view (see the module docstring)."""
        for group, fg in zip(self.param_groups, self._flat):
            if fg is None or not fg.flat_grads:
                continue
            if set_to_none and self._keeps_grads(group, fg):
                for p in fg.params:
                    p.grad = None
                fg.release_grads()  # as with torch, no gradient memory is held between steps
                continue
            fg.grad_buf.zero_()
            for i, p in enumerate(fg.params):
                if p.grad is None or p.grad.data_ptr() != fg.gptrs[i]:
                    p.grad = fg.grad_views[i]

    # -- state dicts -------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim semantics; the loaded values are copied into the flat buffers (so the result
        is identical to the saved optimizer's), and a torch.optim state dict of the same algorithm
        loads too (missing states start at zero, as in a fresh optimizer). Saved values are taken
        before torch's load casts them to the parameter dtype, so fp32 masters of bf16 params survive."""
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        ours = [p for g in self.param_groups for p in g["params"]]
        raw = {p: state_dict["state"].get(pid, {}) for pid, p in zip(saved_ids, ours)}
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for group, fg in zip(self.param_groups, self._flat):
                if fg is None:
                    continue
                self._check_group(group)
                loaded = [raw.get(p, {}) for p in fg.params]
                for i, st in enumerate(loaded):
                    s = st.get("step")
                    if s is None:  # torch.optim.SGD keeps no step count: a saved buffer means "not the first step"
                        s = 1.0 if any(isinstance(v, torch.Tensor) for v in st.values()) else 0.0
                    fg.steps[i] = float(s)
                if fg.triton:  # a one-off read at load time (never per step)
                    fg.tries = [int(x) for x in fg.steps.tolist()]
                self._load_group(group, fg, loaded)
                fg.refresh_uniform_step()
