"""AdamW's CUDA step (the Triton groups of fasttrain.optim.AdamW), kept apart from the CPU path in adamw.py.

A group whose parameters live on CUDA (or any group, with the private test switch
fasttrain.optim._flat._BACKEND = "triton") is updated by one Triton launch over its flat buffers. Nothing
in a step reads a device value on the host: the step counts live on the device, the bias corrections,
the GradScaler unscale/skip and the clip coefficient are computed by small device ops into a 5-element
scalar tensor that the kernels read (fasttrain.kernels.optim.adamw_device_scalars_ and the int8 variant).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fasttrain.optim._flat import _FlatGroup, _scalar

__all__: list[str] = []


class _TritonAdamW:
    """Mixin of fasttrain.optim.AdamW: the Triton groups' step (`_step_triton`, called by AdamW.step)."""

    def _step_triton(self, tri: list[tuple[dict[str, Any], _FlatGroup]], found_inf: torch.Tensor | None,
                     grad_scale: torch.Tensor | None) -> None:
        """The Triton groups' step with no device-to-host read: the grad multiplier (1 / loss scale
        times the clip coefficient), the skip flag and the bias corrections are computed by small
        device ops (in fp64, then rounded to fp32 as the host path rounds its Python floats) and the
        update kernel reads them from a 5-element device tensor; one launch per group."""
        from fasttrain.kernels import grad_norm as tgn

        dev = tri[0][1].param_buf.device
        if any(fg.param_buf.device != dev for _, fg in tri) and (self.max_grad_norm is not None or found_inf is not None):
            raise NotImplementedError("AdamW on CUDA: param groups on several GPUs with max_grad_norm or GradScaler "
                                      "are not supported; use one optimizer per device")
        missing = [self._sync(fg) for _, fg in tri]  # before the norm: swapped grads must count in it
        mul = None  # fp64 device scalar, or None for 1
        if grad_scale is not None:
            mul = 1.0 / grad_scale.to(device=dev, dtype=torch.float64).reshape(1)
        if self.max_grad_norm is not None:
            # Same fp32 arithmetic as the host path (and torch.nn.utils.clip_grad_norm_), on the device.
            # one partials + one finish launch, the chunk tables built when the groups were added
            bufs, tables = self._grad_norm_tables()
            norm, _ = tgn._norm_and_coef(bufs, 2.0, math.inf, tables)
            norm = norm.reshape(1)
            if mul is not None:
                norm = (norm.double() * mul).float()
            self.last_grad_norm = norm.reshape(())
            coef = self.max_grad_norm / (norm + 1e-6)
            coef = torch.where(coef >= 1.0, torch.ones_like(coef), coef)  # keeps NaN, like the host path
            mul = coef.double() if mul is None else mul * coef.double()
        skip = None if found_inf is None else (found_inf.to(dev).reshape(1) != 0).to(torch.float64)
        for (group, fg), miss in zip(tri, missing):
            if not miss and fg.uniform_step is not None:
                self._launch(group, fg, None, mul, skip)
                fg.steps.add_(1.0 if skip is None else 1.0 - skip.float())
                fg.tries = [t + 1 for t in fg.tries]
            else:  # per-tensor fallback (params without a gradient are skipped, as in torch)
                skipset = set(miss)
                for i in range(len(fg.params)):
                    if i not in skipset:
                        self._launch(group, fg, i, mul, skip)
                        fg.steps[i : i + 1].add_(1.0 if skip is None else 1.0 - skip.float())
                        fg.tries[i] += 1
                fg.refresh_uniform_step()

    def _grad_norm_tables(self) -> tuple[list[torch.Tensor], Any]:
        """The Triton groups' flat grad buffers and their grad-norm chunk tables (kernels/grad_norm.py),
        cached: the buffers never move, and building the tables reads a host tensor, so it is done once
        when the groups are added rather than inside a step."""
        from fasttrain.kernels import grad_norm as tgn

        bufs = [fg.grad_buf for fg in self._flat if fg is not None and fg.triton]
        key = tuple(b.data_ptr() for b in bufs)
        if self._norm_tables is None or self._norm_tables[0] != key:
            self._norm_tables = (key, tgn._chunk_tables(bufs))
        return bufs, self._norm_tables[1]

    def _launch(self, group: dict[str, Any], fg: _FlatGroup, i: int | None, mul: torch.Tensor | None,
                skip: torch.Tensor | None, grad: torch.Tensor | None = None, counted: bool = False) -> None:
        """One Triton update of group `fg` (i None: the whole flat buffers; else parameter i alone).
        grad: parameter i's gradient when it is not its flat-buffer view (step_in_backward: autograd's own
        tensor, contiguous); counted: fg.steps already holds the count after this update."""
        from fasttrain.kernels import optim as tk

        dev = fg.param_buf.device
        lr = group["lr"]
        lr = lr.to(device=dev, dtype=torch.float64).reshape(1) if isinstance(lr, torch.Tensor) else float(lr)
        if not isinstance(lr, torch.Tensor) and not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        b1, b2 = (_scalar(b) for b in group["betas"])  # betas are host numbers (a CUDA tensor would sync here)
        s = (fg.steps[0:1] if i is None else fg.steps[i : i + 1]).double()
        if not counted:
            s = s + 1.0  # the count after this update
        sc = torch.empty(5, dtype=torch.float64, device=dev)
        sc[0:1] = 1.0 - lr * group["weight_decay"]
        sc[1:2] = -(lr / (1.0 - torch.pow(b1, s)))
        sc[2:3] = 1.0 / torch.sqrt(1.0 - torch.pow(b2, s))
        sc[3:4] = 1.0 if mul is None else mul
        sc[4:5] = 0.0 if skip is None else skip
        sc = sc.float()
        if group["state_dtype"] == "int8":
            return self._launch_int8(fg, i, sc, b1, b2, group, grad)
        sr, seed = bool(group["stochastic_rounding"]), 0
        if sr:  # the C++ path's seed formula, from the host's attempt counts (equal to the steps without skips)
            gi = next(k for k, f in enumerate(self._flat) if f is fg)
            seed = ((fg.tries[0 if i is None else i] + 1) * 0x9E3779B1 + gi * 0x85EBCA77
                    + (0 if i is None else fg.offsets[i] << 8)) & 0xFFFFFFFF
        b = fg.state_bufs
        if i is None:
            bufs = (fg.param_buf, fg.grad_buf, b["exp_avg"], b["exp_avg_sq"], b.get("max_exp_avg_sq"), b.get("master"))
        else:
            v = fg.state_views
            bufs = (fg.param_views[i], grad if grad is not None else fg.grad_views[i], v["exp_avg"][i], v["exp_avg_sq"][i],
                    v["max_exp_avg_sq"][i] if "max_exp_avg_sq" in v else None, v["master"][i] if "master" in v else None)
        if group["amsgrad"] and bufs[4] is None:
            fg.state_buffer("max_exp_avg_sq", self._state_dtype(group, fg, "max_exp_avg_sq"))
            return self._launch(group, fg, i, mul, skip, grad, counted)
        tk.adamw_device_scalars_(*(t.reshape(-1) if t is not None else None for t in bufs), sc, beta1=b1, beta2=b2,
                                 eps=group["eps"], maximize=group["maximize"], amsgrad=group["amsgrad"],
                                 stochastic_rounding=sr, seed=seed)

    def _launch_int8(self, fg: _FlatGroup, i: int | None, sc: torch.Tensor, b1: float, b2: float,
                     group: dict[str, Any], grad: torch.Tensor | None = None) -> None:
        """The Triton update of an int8 group (fasttrain/optim/_int8.py layout): the 8-bit segment and the
        fp32 tail of small tensors, both reading the same device scalars (i: parameter i alone)."""
        from fasttrain.kernels import optim as tk

        st, kw = fg.int8, dict(beta1=b1, beta2=b2, eps=group["eps"], maximize=group["maximize"])
        if i is None:
            if st.n8:
                tk.adamw_int8_device_scalars_(fg.param_buf[: st.n8], fg.grad_buf[: st.n8], st.m, st.v, st.m_scale,
                                              st.v_scale, sc, **kw)
            if fg.total > st.n8:
                tk.adamw_device_scalars_(fg.param_buf[st.n8 :], fg.grad_buf[st.n8 :], st.m32, st.v32, None, None, sc,
                                         amsgrad=False, **kw)
            return
        sv, p = st.views[i], fg.param_views[i].view(-1)
        g = (grad if grad is not None else fg.grad_views[i]).view(-1)
        if st.large[i]:
            tk.adamw_int8_device_scalars_(p, g, sv["exp_avg"].view(-1), sv["exp_avg_sq"].view(-1), sv["exp_avg_scale"],
                                          sv["exp_avg_sq_scale"], sc, **kw)
        else:
            tk.adamw_device_scalars_(p, g, sv["exp_avg"].view(-1), sv["exp_avg_sq"].view(-1), None, None, sc,
                                     amsgrad=False, **kw)
