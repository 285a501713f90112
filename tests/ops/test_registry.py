"""Meta-test: every fasttrain torch.library op is in the registry, has a pure-torch reference, a
test and a benchmark that name it, and passes torch.library.opcheck."""

import inspect
from pathlib import Path

import pytest
import torch

import fasttrain.ops
from fasttrain.ops import REGISTRY, reference

ROOT = Path(__file__).resolve().parents[2]


def test_every_fasttrain_op_is_registered():
    defined = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fasttrain::")}
    assert defined, "no fasttrain ops found in the dispatcher"
    assert defined == set(REGISTRY), f"ops missing from fasttrain.ops.REGISTRY: {defined - set(REGISTRY)}"


@pytest.mark.parametrize("qualname", sorted(REGISTRY))
def test_op_has_reference_test_and_benchmark(qualname):
    spec = REGISTRY[qualname]
    assert inspect.getmodule(spec.reference) is reference, "references live in fasttrain/ops/reference.py"
    assert getattr(fasttrain.ops, spec.public.__name__) is spec.public, "public function exported from fasttrain.ops"
    for kind, rel in (("test", spec.test), ("benchmark", spec.benchmark)):
        path = ROOT / rel
        assert path.is_file(), f"{qualname}: {kind} file {rel} is missing"
        text = path.read_text()
        assert spec.public.__name__ in text, f"{qualname}: {rel} never calls {spec.public.__name__}"
        assert spec.reference.__name__ in text, f"{qualname}: {rel} never uses {spec.reference.__name__}"


@pytest.mark.parametrize("qualname", sorted(REGISTRY))
def test_opcheck(qualname):
    spec = REGISTRY[qualname]
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name)
    samples = list(spec.samples())
    assert samples
    for args, kwargs in samples:
        torch.library.opcheck(op, args, kwargs)
