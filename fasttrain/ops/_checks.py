"""Input checks for the op layer: one place, messages that name the argument and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Dtype codes understood by fasttrain._C (csrc/common.h: enum class DType).
DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FLOAT_DTYPES = tuple(DTYPE_CODES)


def check_tensor_list(
    op: str, name: str, tensors: Sequence[torch.Tensor], *, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
) -> None:
    """Checks a non-empty list of dense, contiguous tensors of allowed dtypes on one device.

    Works on fake/meta tensors too (no data access), so torch.compile reports bad input at trace time.
    """
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: `{name}` must be a list of tensors, got {type(tensors).__name__}")
    device = None
    for i, t in enumerate(tensors):
        where = f"{op}: {name}[{i}]"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where} is a {type(t).__name__}, expected a torch.Tensor")
        if t.layout != torch.strided:
            raise TypeError(f"{where} has layout {t.layout}; only dense tensors are supported (call .to_dense())")
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{where} has dtype {t.dtype}; supported dtypes: {allowed}")
        if not t.is_contiguous():
            raise ValueError(
                f"{where} is not contiguous (shape {tuple(t.shape)}, stride {t.stride()}); "
                "pass t.contiguous() or keep gradients contiguous"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(
                f"{where} is on {t.device} but {name}[0] is on {device}; all tensors must be on one device "
                "(call the op once per device)"
            )


def check_no_overlap(op: str, name: str, tensors: Sequence[torch.Tensor]) -> None:
    """Raises if two tensors of an in-place op share memory (each would be updated twice)."""
    spans = []
    for i, t in enumerate(tensors):
        if t.numel():
            start = t.data_ptr()
            spans.append((start, start + t.numel() * t.element_size(), i))
    spans.sort()
    for (s0, e0, i0), (s1, _e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            a, b = sorted((i0, i1))
            raise ValueError(
                f"{op}: {name}[{a}] and {name}[{b}] overlap in memory, so the in-place update would apply "
                "twice; pass each tensor once (deduplicate shared/tied parameters)"
            )


def check_norm_type(op: str, norm_type: float) -> float:
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: norm_type must be a number (e.g. 2.0 or float('inf')), got {norm_type!r}") from None
    if p != p:
        raise ValueError(f"{op}: norm_type must not be NaN")
    return p
