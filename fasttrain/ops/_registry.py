"""The op registry: every `torch.library` op fasttrain defines, with the places that keep it honest.

tests/ops/test_registry.py walks this table and checks that each op has a pure-torch reference, a
test file and a benchmark file that name it, and that it passes `torch.library.opcheck`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["OpSpec", "REGISTRY", "register"]


@dataclass(frozen=True)
class OpSpec:
    qualname: str  # "fasttrain::total_norm"
    public: Callable[..., Any]  # the user-facing function in fasttrain.ops
    reference: Callable[..., Any]  # pure-torch reference in fasttrain.ops.reference
    test: str  # test file, relative to the repository root
    benchmark: str  # benchmark file, relative to the repository root
    # Yields (args, kwargs) for opcheck: small, varied, valid inputs on CPU.
    samples: Callable[[], Iterator[tuple[tuple[Any, ...], dict[str, Any]]]]


REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.qualname in REGISTRY:
        raise RuntimeError(f"op {spec.qualname} registered twice")
    REGISTRY[spec.qualname] = spec
    return spec
