"""fasttrain.optim.AdamW: torch.optim.AdamW's algorithm and API, one fused pass per param group.

The update is `fasttrain.ops.adamw_step_` (C++: OpenMP + AVX-512/AVX2/scalar) over the group's flat
buffers (see fasttrain/optim/_flat.py for the storage and what happens when `.grad` or a parameter
is swapped). Results match `torch.optim.AdamW(foreach=False)` to a few ulp per step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from fasttrain.ops.fused_linear import MAX_ROWS, adamw_linear_step_
from fasttrain.ops.grad_norm import total_norm_host
from fasttrain.ops.optim import _MULTI, _call_adamw_multi, _check_hparams, adamw_flat_, adamw_step_
from fasttrain.optim import _int8
from fasttrain.optim._flat import _FlatGroup, _FlatOptimizer, _scalar
from fasttrain.optim._triton_adamw import _TritonAdamW

__all__ = ["AdamW"]


_STATE_DTYPES = {"fp32": torch.float32, "float32": torch.float32, torch.float32: torch.float32,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, torch.bfloat16: torch.bfloat16}


def _state_dtype_name(d: Any) -> str:
    if d in ("int8", torch.int8):
        return "int8"
    if d not in _STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {d!r}; use 'fp32', 'bf16' or 'int8'")
    return "fp32" if _STATE_DTYPES[d] == torch.float32 else "bf16"


class AdamW(_TritonAdamW, _FlatOptimizer):
    # GradScaler protocol: GradScaler.step() checks the grads for inf/NaN itself (one read pass, its
    # own kernel), then sets `self.grad_scale` (the scale, or None if the user already called
    # scaler.unscale_) and `self.found_inf` before calling step(). step() then skips the update if
    # found_inf, and otherwise multiplies the grads by 1/scale inside the fused pass: no unscale pass.
    _step_supports_amp_scaling = True
    _cuda_ok = True

    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019), same arguments as torch.optim.AdamW.

    params: iterable of CPU or CUDA parameters that require grad (fp32, bf16 or fp16; one dtype and one
    device per group), or param-group dicts.
    On CUDA each group's update is one Triton launch over its flat buffers (fasttrain.kernels.optim)
    and a step never syncs with the host: the step counts live on the device (state["step"] is a CUDA
    tensor, as in torch's fused optimizers), GradScaler's found_inf / scale and a tensor lr are read by
    the kernel, and max_grad_norm uses the device-side Triton norm. CUDA supports state_dtype
    "fp32"/"bf16"/"int8", master_weights, amsgrad, stochastic_rounding and step_in_backward
    (fuse_linear_backward is CPU-only: on CUDA the hooks update every parameter).
    master_weights: for bf16/fp16 params, keep fp32 master weights inside the optimizer (state
    "master"); the step updates the master and writes the rounded param in the same pass.
    state_dtype: "fp32" (default) or "bf16" for exp_avg / exp_avg_sq (computed in fp32, stored bf16), or
    "int8": blockwise 8-bit states (block 256, one fp32 absmax scale per block and state; tensors under
    4096 elements keep fp32 states), dequantized, updated and requantized in the same single pass;
    ~2 bytes of state per parameter instead of 8. fp32 params only, no amsgrad. The code maps and the
    state_dict layout: fasttrain/optim/_int8.py. The state_dtype a group is built with stays when a
    state dict is loaded: fp32/bf16 states (e.g. from torch.optim.AdamW) are quantized into an int8
    optimizer, and 8-bit states are dequantized into an fp32/bf16 one.
    stochastic_rounding: bf16 params without masters: round each updated param stochastically
    (unbiased, so updates smaller than a bf16 ulp still move the weights on average).
    max_grad_norm: clip to this global 2-norm over all groups (torch.nn.utils.clip_grad_norm_'s
    arithmetic): one norm pass over the flat grads (fasttrain.ops.get_total_norm), then the clip
    coefficient is folded into the update pass; the grads themselves are left unclipped. The norm
    before clipping is kept in `last_grad_norm` (0-dim fp32 tensor).
    step_in_backward: update each parameter from a post-accumulate-grad hook as soon as backward has
    produced its gradient, then free that gradient (p.grad stays None), so the whole model's
    gradients never exist at once. step() then only marks the end of the iteration; it must be
    called after every backward (a second gradient before it raises: no gradient accumulation).
    Not combinable with max_grad_norm (ValueError) or GradScaler (RuntimeError).
    lr may be a float or a 1-element tensor (read once per step on CPU; on CUDA a CUDA tensor lr is read
    by the device, never by the host). `foreach` and `fused` are accepted
    for drop-in compatibility and ignored (this optimizer is always fused); `capturable` and
    `differentiable` are not supported (ValueError).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        master_weights: bool = False,
        state_dtype: str | torch.dtype = "fp32",
        stochastic_rounding: bool = False,
        max_grad_norm: float | None = None,
        step_in_backward: bool = False,
    ):
        # Same checks and messages as torch.optim.AdamW.
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= _scalar(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if max_grad_norm is not None and not float(max_grad_norm) > 0.0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm}; use a positive number, or None for no clipping")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        if step_in_backward and max_grad_norm is not None:
            raise ValueError("step_in_backward=True cannot clip to a global norm (max_grad_norm): each parameter is "
                             "updated as soon as its own gradient is ready, before the global norm is known")
        self.step_in_backward = bool(step_in_backward)
        self._updated: set[int] = set()  # params updated since the last step()/zero_grad() (step_in_backward)
        self._fused_layers: list[tuple[torch.nn.Module, Any]] = []  # (layer, state): fuse_linear_backward
        self._where: dict[int, tuple[int, int]] = {}
        self.last_grad_norm: torch.Tensor | None = None
        self._grad_mul = 1.0
        self._norm_tables: tuple[tuple[int, ...], Any] | None = None  # Triton path: cached grad-norm chunk tables
        if capturable or differentiable:
            raise ValueError("fasttrain.optim.AdamW: capturable=True and differentiable=True are not supported; "
                             "use torch.optim.AdamW for those modes")
        del foreach, fused  # always fused; the keys are kept (as None) so state dicts load into torch.optim.AdamW
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=None, capturable=False, differentiable=False, fused=None,
                        master_weights=bool(master_weights), state_dtype=_state_dtype_name(state_dtype),
                        stochastic_rounding=bool(stochastic_rounding))
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self.max_grad_norm is not None and self._flat[-1] is not None and self._flat[-1].triton:
            self._grad_norm_tables()
        if getattr(self, "step_in_backward", False) and self._flat[-1] is not None:
            gi = len(self.param_groups) - 1
            for i, p in enumerate(self._flat[-1].params):
                self._where[id(p)] = (gi, i)
                p.register_post_accumulate_grad_hook(self._step_one)

    def fuse_linear_backward(self, model: torch.nn.Module) -> Any:
        """step_in_backward=True: also fuse the weight-gradient computation of `model`'s nn.Linear layers
        into their update, so their weight gradients are never stored at all (not even briefly).

        Each fused layer's backward passes its input (rows, in) and output gradient (rows, out) to
        `fasttrain.ops.adamw_linear_step_`, which computes dy^T x chunk by chunk inside the AdamW pass.
        Applies to plain nn.Linear layers whose weight this optimizer updates in an fp32 group with fp32
        states and no master weights, when the input has at most 64 rows (tokens) and is fp32 on the
        CPU outside autocast and torch.compile; otherwise the layer runs as usual and the post-
        accumulate-grad hook updates it. Tied weights (one tensor in several modules) are left alone.
        Returns a handle: `.modules` names the fused layers, `.remove()` undoes it.
        fasttrain.Trainer calls this for you when the optimizer has step_in_backward=True.
        """
        from fasttrain.optim import _fused_linear

        if not self.step_in_backward:
            raise ValueError("AdamW.fuse_linear_backward needs step_in_backward=True (the update must run inside "
                             "backward for the weight gradient never to be stored)")

        def eligible(w: torch.Tensor) -> bool:
            where = self._where.get(id(w))
            if where is None:
                return False
            fg, group = self._flat[where[0]], self.param_groups[where[0]]
            return (fg.dtype == torch.float32 and not fg.triton and group["state_dtype"] == "fp32"
                    and not group["master_weights"] and w.device.type == "cpu")

        return _fused_linear.fuse(self, model, eligible)

    def _flush_linear(self) -> None:
        """Settles fused layers whose forward count exceeded their backward calls (see _fused_linear)."""
        for m, st in self._fused_layers:
            if st.pending or st.count:
                st.flush(m.weight)

    def _begin_update(self, p: torch.Tensor) -> tuple[int, int]:
        """step_in_backward: checks before updating `p` once (a second gradient, a swapped param)."""
        gi, i = self._where[id(p)]
        if id(p) in self._updated:
            raise RuntimeError(
                "fasttrain.optim.AdamW(step_in_backward=True): a parameter received a second gradient before "
                "opt.step()/opt.zero_grad() was called. Gradient accumulation over several backward passes is not "
                "possible when the update runs inside backward; call opt.step() after every backward, or use "
                "step_in_backward=False to accumulate"
            )
        fg = self._flat[gi]
        if p.data_ptr() != fg.pptrs[i]:  # a swapped param: adopt its values (see _flat.py)
            if p.shape != fg.param_views[i].shape or p.dtype != fg.dtype:
                raise ValueError(f"AdamW: parameter {i} was replaced by a {p.dtype} tensor of shape {tuple(p.shape)}; "
                                 "build a new optimizer after changing parameter shapes or dtypes")
            fg.param_views[i].copy_(p.data)
            p.data = fg.param_views[i]
        fg.steps[i] += 1.0
        fg.uniform_step = None
        self._updated.add(id(p))
        return gi, i

    @torch.no_grad()
    def _step_linear(self, p: torch.Tensor, x: torch.Tensor, dy: torch.Tensor) -> None:
        """A fused Linear's backward (fuse_linear_backward): updates weight p from x (rows, in) and
        dy (rows, out) without a stored gradient; beyond MAX_ROWS rows (several calls) via a matmul."""
        if x.shape[0] > MAX_ROWS:
            p.grad = dy.t() @ x
            return self._step_one(p)
        gi, i = self._begin_update(p)
        fg, group = self._flat[gi], self.param_groups[gi]
        sv = fg.state_views
        adamw_linear_step_(fg.param_views[i], sv["exp_avg"][i], sv["exp_avg_sq"][i], x, dy,
                           sv["max_exp_avg_sq"][i] if group["amsgrad"] else None, step=float(fg.steps[i]),
                           **{k: v for k, v in self._kwargs(group).items() if k != "stochastic_rounding"})

    @torch.no_grad()
    def _step_one(self, p: torch.Tensor) -> None:
        """step_in_backward: the post-accumulate-grad hook of `p`. Updates p from its fresh gradient
        (while it is still in cache) with the same kernel as the flat path, then frees the gradient."""
        grad = p.grad
        if grad is None:  # a fused Linear weight: autograd runs the hook with no gradient (updated already)
            return
        if grad.layout != torch.strided:
            raise TypeError(f"AdamW: parameter {self._where[id(p)][1]} has a {grad.layout} gradient; sparse "
                            "gradients are not supported")
        gi, i = self._begin_update(p)
        fg, group = self._flat[gi], self.param_groups[gi]
        if fg.triton:  # one launch for this parameter, its step count read on the device (no sync)
            self._launch(group, fg, i, None, None, grad=grad.contiguous(), counted=True)
            fg.tries[i] += 1
            p.grad = None
            return
        if group["state_dtype"] == "int8":
            fg.int8.step_one(fg, i, grad, float(fg.steps[i]), self._kwargs(group))
            p.grad = None
            return
        sv = fg.state_views
        adamw_step_(fg.param_views[i], grad.contiguous(), sv["exp_avg"][i], sv["exp_avg_sq"][i],
                    sv["max_exp_avg_sq"][i] if group["amsgrad"] else None, step=float(fg.steps[i]),
                    master=sv["master"][i] if "master" in sv else None,
                    seed=(int(fg.steps[i]) * 0x9E3779B1 + gi * 0x85EBCA77 + (fg.offsets[i] << 8)) & 0xFFFFFFFF,
                    **self._kwargs(group))
        p.grad = None

    # torch.compile runs the step eagerly (one graph break, like torch's own optimizers outside
    # compiled-optimizer mode): it is a few pointer checks and one C++ call per group, so there is
    # nothing for the compiler to fuse, and tracing it would only recompile on every lr change.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if self.step_in_backward:
            return self._end_of_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by torch.amp.GradScaler.step (see _step_supports_amp_scaling). Reading a CPU scalar
        # is not a device sync; the Triton path keeps these on the device.
        found_inf = getattr(self, "found_inf", None)
        tri = [(g, fg) for g, fg in zip(self.param_groups, self._flat) if fg is not None and fg.triton]
        if tri:
            if len(tri) != sum(fg is not None for fg in self._flat) and self.max_grad_norm is not None:
                raise NotImplementedError("AdamW(max_grad_norm=...) with CPU and CUDA param groups in one optimizer: "
                                          "the global norm would span devices; use one optimizer per device, or "
                                          "clip with fasttrain.ops.clip_grad_norm_ per device before step()")
            self._step_triton(tri, found_inf, getattr(self, "grad_scale", None))
            if len(tri) == sum(fg is not None for fg in self._flat):
                return loss
        if found_inf is not None and float(found_inf) != 0.0:
            return loss  # skipped, as torch's fused optimizers do: no state or step count changes
        grad_scale = getattr(self, "grad_scale", None)
        mul = 1.0 / float(grad_scale) if grad_scale is not None else 1.0
        if self.max_grad_norm is not None:
            flats = [fg for fg in self._flat if fg is not None]
            for fg in flats:
                self._sync(fg)  # swapped grads must count in the norm
            # The norm comes back as a host float (C++ kernel): the coefficient is needed on the host
            # anyway, and reading a tensor here would be an .item() per training step.
            norm = np.float32(total_norm_host([fg.grad_buf for fg in flats]) * mul)
            self.last_grad_norm = torch.tensor(norm)
            # torch's clip arithmetic in fp32: coef = max_norm / (norm + 1e-6), clamped to 1 (NaN propagates)
            coef = np.float32(self.max_grad_norm) / (norm + np.float32(1e-6))
            coef = float(coef) if not coef >= 1.0 else 1.0
            mul *= coef
        self._grad_mul = mul
        try:
            self._step_groups()
        finally:
            self._grad_mul = 1.0
        return loss

    def _end_of_step(self, closure=None):
        """step() with step_in_backward=True: the updates already ran during backward; this marks the
        end of the iteration (so a second backward is not taken for gradient accumulation)."""
        if getattr(self, "found_inf", None) is not None:
            raise RuntimeError("AdamW(step_in_backward=True) cannot be used with GradScaler: the parameters were "
                               "updated during backward, before the scaler could check the gradients for inf/NaN")
        loss = None
        self._flush_linear()
        self._updated.clear()
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            self._updated.clear()
        return loss

    @torch.compiler.disable
    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.step_in_backward:
            self._flush_linear()
            self._updated.clear()  # gradients were freed by the hooks already
            return
        super().zero_grad(set_to_none)

    def _kwargs(self, group: dict[str, Any]) -> dict[str, Any]:
        b1, b2 = group["betas"]
        kw = dict(lr=_scalar(group["lr"]), beta1=_scalar(b1), beta2=_scalar(b2), eps=group["eps"],
                  weight_decay=group["weight_decay"], maximize=group["maximize"], amsgrad=group["amsgrad"],
                  grad_scale=self._grad_mul, stochastic_rounding=bool(group["stochastic_rounding"]))
        if not 0.0 <= kw["lr"]:  # a scheduler or a user may have set it since construction
            raise ValueError(f"Invalid learning rate: {kw['lr']}")
        return kw

    def _check_group(self, group: dict[str, Any]) -> None:
        lr, (b1, b2), eps, wd = _scalar(group["lr"]), group["betas"], group["eps"], group["weight_decay"]
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (0.0 <= _scalar(b1) < 1.0 and 0.0 <= _scalar(b2) < 1.0):
            raise ValueError(f"Invalid beta parameters: {group['betas']}; both must be in [0, 1)")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd}")
        group["state_dtype"] = _state_dtype_name(group.get("state_dtype", "fp32"))
        group.setdefault("master_weights", False)
        group.setdefault("stochastic_rounding", False)
        dtype = group["params"][0].dtype if group["params"] else torch.float32
        if group["state_dtype"] == "int8" and (dtype != torch.float32 or group["amsgrad"]):
            what = f"{dtype} params" if dtype != torch.float32 else "amsgrad=True"
            raise ValueError(f"state_dtype='int8' is implemented for float32 params without amsgrad (got {what}); "
                             "use state_dtype='bf16' for low-precision params or amsgrad")
        if group["stochastic_rounding"] and (dtype != torch.bfloat16 or group["master_weights"]):
            raise ValueError(f"stochastic_rounding=True needs bfloat16 params without master weights (got {dtype} params"
                             f"{', master_weights=True' if group['master_weights'] else ''}): with masters the rounding "
                             "error does not accumulate, and fp16/fp32 params round to nearest")

    def _layout(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"int8_min_numel": _int8.INT8_MIN_NUMEL} if group["state_dtype"] == "int8" else {}

    def _attach_state(self, group: dict[str, Any], fg: _FlatGroup) -> None:
        if group["state_dtype"] != "int8":
            return super()._attach_state(group, fg)
        fg.int8 = _int8.Int8States(fg)
        for i, p in enumerate(fg.params):
            self.state[p] = {"step": fg.steps[i], **fg.int8.views[i]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A group keeps the state_dtype it was built with when either side is "int8" (it decides the
        # flat layout); the states are converted in _load_group. A torch.optim.AdamW state dict has no
        # state_dtype: into an int8 group its fp32 states are quantized.
        before = [g["state_dtype"] for g in self.param_groups]
        groups = []
        for saved, mine in zip(state_dict["param_groups"], before):
            if (mine == "int8") != (saved.get("state_dtype") == "int8"):
                saved = dict(saved, state_dtype=mine)
            groups.append(saved)
        super().load_state_dict(dict(state_dict, param_groups=groups + state_dict["param_groups"][len(groups):]))

    def _load_group(self, group: dict[str, Any], fg: _FlatGroup, loaded: list[dict[str, Any]]) -> None:
        if group["state_dtype"] == "int8":
            for i, st in enumerate(loaded):
                fg.int8.load(i, st)
            for i, p in enumerate(fg.params):
                self.state[p] = {"step": fg.steps[i], **fg.int8.views[i]}
            return
        # 8-bit states saved by an int8 optimizer, loaded into fp32/bf16 states: dequantize them
        loaded = [dict(st, **dict(zip(("exp_avg", "exp_avg_sq"), _int8.dequantize_states(st))))
                  if "exp_avg_scale" in st else st for st in loaded]
        super()._load_group(group, fg, loaded)

    def _state_dtype(self, group: dict[str, Any], fg: _FlatGroup, name: str) -> torch.dtype:
        return torch.float32 if name == "master" else _STATE_DTYPES[group["state_dtype"]]

    def _state_names(self, group: dict[str, Any]) -> list[str]:
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        low = group["params"] and group["params"][0].dtype != torch.float32
        return names + (["master"] if group.get("master_weights") and low else [])

    def _keeps_grads(self, group: dict[str, Any], fg: _FlatGroup) -> bool:
        # fp32 params and states on CPU: the multi-tensor kernel reads any fp32 gradient in place. The
        # global norm (max_grad_norm), masters, bf16/int8 states and Triton read the flat buffer.
        return (fg.dtype == torch.float32 and not fg.triton and group["state_dtype"] == "fp32"
                and not group["master_weights"] and self.max_grad_norm is None and fg.flat_grads)

    def _update(self, group: dict[str, Any], fg: _FlatGroup, idx: list[int] | None, steps: list[float]) -> None:
        kw = self._kwargs(group)
        if group["state_dtype"] == "int8":
            if idx is None:
                fg.int8.step_all(fg, steps[0], kw)
            else:
                for i, s in zip(idx, steps):
                    fg.int8.step_one(fg, i, fg.params[i].grad, s, kw)
            return
        amsgrad = group["amsgrad"]
        if amsgrad:
            fg.state_buffer("max_exp_avg_sq", self._state_dtype(group, fg, "max_exp_avg_sq"))
        if idx is None and self._keeps_grads(group, fg):
            grads = [p.grad for p in fg.params]
            if not fg.has_grad_buf or any(g.data_ptr() != q for g, q in zip(grads, fg.gptrs)):
                # autograd's own gradients (after zero_grad()): read in place, one call for the group
                _check_hparams(_MULTI, kw["lr"], kw["beta1"], kw["beta2"], kw["eps"], kw["weight_decay"], steps[0])
                b, sv = fg.state_bufs, fg.state_views
                bases = (fg.param_buf, b["exp_avg"], b["exp_avg_sq"]) + ((b["max_exp_avg_sq"],) if amsgrad else ())
                key = tuple(t.data_ptr() for t in bases)
                if fg.multi_ptrs[0] != key:  # the buffers' own pointers, kept between steps
                    ptrs = [[v.data_ptr() for v in views] for views in (fg.param_views, sv["exp_avg"], sv["exp_avg_sq"],
                                                                       sv["max_exp_avg_sq"] if amsgrad else [])]
                    fg.multi_ptrs = (key, (*ptrs, fg.numels))
                _call_adamw_multi(fg.param_views, grads, sv["exp_avg"], sv["exp_avg_sq"],
                                  sv["max_exp_avg_sq"] if amsgrad else [], bases, kw["lr"], kw["beta1"], kw["beta2"],
                                  kw["eps"], kw["weight_decay"], steps[0], kw["maximize"], amsgrad, kw["grad_scale"],
                                  ptrs=fg.multi_ptrs[1])
                return
        gi = next(i for i, f in enumerate(self._flat) if f is fg)
        if idx is None:
            b = fg.state_bufs
            # A new noise stream per step and group (never reused: the same bits every step would bias).
            seed = (int(steps[0]) * 0x9E3779B1 + gi * 0x85EBCA77) & 0xFFFFFFFF
            # The group's own flat buffers (one dtype and device, contiguous, disjoint by construction):
            # the op's per-call buffer checks would cost more than a small model's whole update.
            adamw_flat_(fg.param_buf, fg.grad_buf, b["exp_avg"], b["exp_avg_sq"], b.get("max_exp_avg_sq"),
                        step=steps[0], master=b.get("master"), seed=seed, **kw)
            return
        sv = fg.state_views
        for i, s in zip(idx, steps):
            p = fg.params[i]
            mx = sv["max_exp_avg_sq"][i] if amsgrad else None
            master = sv["master"][i] if "master" in sv else None
            seed = (int(s) * 0x9E3779B1 + gi * 0x85EBCA77 + (fg.offsets[i] << 8)) & 0xFFFFFFFF
            adamw_step_(fg.param_views[i], p.grad, sv["exp_avg"][i], sv["exp_avg_sq"][i], mx, step=s, master=master,
                        seed=seed, **kw)
