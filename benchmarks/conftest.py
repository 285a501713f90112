"""Benchmarks run with `pytest benchmarks` (full) or `pytest benchmarks --benchmark-disable` (smoke:
each case once on a small workload, which is what CI does so the files cannot rot)."""

import pytest


@pytest.fixture
def smoke(benchmark) -> bool:
    """True under --benchmark-disable: use tiny workloads and a single round."""
    return bool(benchmark.disabled)
