"""Fused multi-tensor global norm and gradient clipping.

One pass over a list of fp32/bf16/fp16 tensors (any mix) with fp32 accumulation gives the global
norm; clipping then rewrites the tensors only when they actually need scaling. torch's
`clip_grad_norm_` always multiplies every gradient (it cannot look at the norm without a host sync),
so when no clipping happens fasttrain moves a third of the bytes torch does.

CPU tensors run the C++ kernels (fasttrain._C, ISA-dispatched, OpenMP); CUDA tensors run the Triton
kernels in fasttrain.kernels (no host sync); other devices are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from fasttrain._ext import _C, num_threads
from fasttrain.ops import reference
from fasttrain.ops._checks import DTYPE_CODES, check_no_overlap, check_norm_type, check_tensor_list
from fasttrain.ops._registry import OpSpec, register

__all__ = ["get_total_norm", "clip_grad_norm_", "total_norm_host"]

_FUSED_NORMS = (2.0, math.inf)


def _table(tensors: Sequence[torch.Tensor]) -> tuple[list[int], list[int], list[int]]:
    return [t.data_ptr() for t in tensors], [t.numel() for t in tensors], [DTYPE_CODES[t.dtype] for t in tensors]


def _nonfinite_error(norm_type: float) -> RuntimeError:
    return RuntimeError(
        f"The total norm of order {norm_type} for gradients is non-finite, so it cannot be clipped. "
        "To scale the gradients by the non-finite norm anyway (as torch does), set `error_if_nonfinite=False`"
    )


# ---------------------------------------------------------------------------------------------
# torch.library ops. Both take a non-empty list on one device (the public functions handle empty
# lists) and return the norm as a 0-dim fp32 tensor on that device.


@torch.library.custom_op("fasttrain::total_norm", mutates_args=(), device_types="cpu")
def _total_norm_op(tensors: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.get_total_norm", "tensors", tensors)
    norm = _C.multi_tensor_norm(*_table(tensors), norm_type, num_threads())
    return torch.tensor(norm, dtype=torch.float32)


@_total_norm_op.register_fake
def _(tensors: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.get_total_norm", "tensors", tensors)
    return tensors[0].new_empty((), dtype=torch.float32)


@_total_norm_op.register_kernel("cuda")
def _(tensors: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.get_total_norm", "tensors", tensors)
    from fasttrain.kernels import grad_norm as triton_grad_norm

    return triton_grad_norm.total_norm(tensors, norm_type)


@torch.library.custom_op("fasttrain::clip_grad_norm_", mutates_args=("tensors",), device_types="cpu")
def _clip_op(tensors: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.clip_grad_norm_", "grads", tensors)
    check_no_overlap("fasttrain.ops.clip_grad_norm_", "grads", tensors)
    norm = _C.clip_by_total_norm_(*_table(tensors), max_norm, norm_type, error_if_nonfinite, num_threads())
    if error_if_nonfinite and not math.isfinite(norm):
        raise _nonfinite_error(norm_type)
    return torch.tensor(norm, dtype=torch.float32)


@_clip_op.register_fake
def _(tensors: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.clip_grad_norm_", "grads", tensors)
    return tensors[0].new_empty((), dtype=torch.float32)


@_clip_op.register_kernel("cuda")
def _(tensors: list[torch.Tensor], max_norm: float, norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
    check_tensor_list("fasttrain.ops.clip_grad_norm_", "grads", tensors)
    check_no_overlap("fasttrain.ops.clip_grad_norm_", "grads", tensors)
    from fasttrain.kernels import grad_norm as triton_grad_norm

    if error_if_nonfinite:
        # Needs the norm on the host before touching the grads: one sync, as in torch.
        norm = triton_grad_norm.total_norm(tensors, norm_type)
        if not torch.isfinite(norm):
            raise _nonfinite_error(norm_type)
    return triton_grad_norm.clip_grad_norm_(tensors, max_norm, norm_type)


# ---------------------------------------------------------------------------------------------
# Public API: torch.nn.utils names and arguments.


def _as_list(op: str, name: str, tensors: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]  # as torch.nn.utils: a single tensor means a list of one
    try:
        return list(tensors)
    except TypeError:
        raise TypeError(f"{op}: `{name}` must be a tensor or an iterable of tensors, got {type(tensors).__name__}") from None


@torch.no_grad()
def get_total_norm(
    tensors: torch.Tensor | Iterable[torch.Tensor], norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> torch.Tensor:
    """Global norm of all elements of `tensors`, as `torch.nn.utils.get_total_norm`.

    tensors: a tensor or a list of contiguous fp32/bf16/fp16 tensors (any shapes, mixed dtypes) on one device.
    Returns a 0-dim fp32 tensor on that device (torch returns the tensors' dtype; fasttrain always
    accumulates and returns fp32). norm_type 2 and inf are fused; other orders use the pure-torch path.
    """
    op = "fasttrain.ops.get_total_norm"
    p = check_norm_type(op, norm_type)
    tensors = _as_list(op, "tensors", tensors)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    # Checked here as well as inside the op: the dispatcher routes by device and layout first, so a
    # sparse or MPS tensor would otherwise fail with a dispatcher error instead of this message.
    check_tensor_list(op, "tensors", tensors)
    norm = _total_norm_op(tensors, p) if p in _FUSED_NORMS else reference.total_norm_reference(tensors, p)
    if error_if_nonfinite and not torch.isfinite(norm):
        raise _nonfinite_error(p)
    return norm


@torch.no_grad()
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Drop-in for `torch.nn.utils.clip_grad_norm_`: scales the gradients of `parameters` in place so
    their global norm is at most `max_norm`, and returns the norm before clipping (0-dim fp32).

    Same arithmetic as torch (coef = max_norm / (norm + 1e-6), clamped to 1; a non-finite norm scales
    by NaN/0 unless `error_if_nonfinite`). Gradients are rewritten only when coef < 1 or the norm is
    not finite. Gradients must be contiguous fp32/bf16/fp16 on one device; norm_type 2 and inf are
    fused, other orders use the pure-torch path.
    """
    op = "fasttrain.ops.clip_grad_norm_"
    p = check_norm_type(op, norm_type)
    try:
        max_norm = float(max_norm)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: max_norm must be a number, got {max_norm!r}") from None
    grads = [p.grad for p in _as_list(op, "parameters", parameters) if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    check_tensor_list(op, "grads", grads)  # before dispatch, as in get_total_norm
    if p in _FUSED_NORMS:
        return _clip_op(grads, max_norm, p, bool(error_if_nonfinite))
    check_no_overlap(op, "grads", grads)
    return reference.clip_grad_norm_reference(grads, max_norm, p, error_if_nonfinite)


def total_norm_host(tensors: Sequence[torch.Tensor]) -> float:
    """Global 2-norm of CPU tensors as a Python float, computed by the C++ kernel without a tensor
    round trip. For host-side logic that needs the value (the fused optimizers' clip coefficient):
    on CPU tensors this is no device sync, and no `.item()` shows up in the training loop."""
    op = "fasttrain.ops.total_norm_host"
    check_tensor_list(op, "tensors", tensors)
    if tensors and tensors[0].device.type != "cpu":
        raise ValueError(f"{op}: tensors are on {tensors[0].device}; use get_total_norm (it stays on the device)")
    return _C.multi_tensor_norm(*_table(tensors), 2.0, num_threads()) if tensors else 0.0


def _samples():
    g = torch.Generator().manual_seed(0)
    lists = [
        [torch.randn(7, generator=g)],
        [torch.randn(3, 5, generator=g), torch.randn(4099, generator=g).bfloat16(), torch.randn(1).half()],
    ]
    for ts in lists:
        for p in _FUSED_NORMS:
            yield (ts, p), {}


def _clip_samples():
    for (ts, p), _ in _samples():
        for max_norm in (0.5, 1e6):
            yield ([t.clone() for t in ts], max_norm, p, False), {}


register(
    OpSpec(
        qualname="fasttrain::total_norm",
        public=get_total_norm,
        reference=reference.total_norm_reference,
        test="tests/ops/test_grad_norm.py",
        benchmark="benchmarks/bench_grad_norm.py",
        samples=_samples,
    )
)
register(
    OpSpec(
        qualname="fasttrain::clip_grad_norm_",
        public=clip_grad_norm_,
        reference=reference.clip_grad_norm_reference,
        test="tests/ops/test_grad_norm.py",
        benchmark="benchmarks/bench_grad_norm.py",
        samples=_clip_samples,
    )
)
