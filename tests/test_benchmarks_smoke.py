"""Runs every benchmark once on a tiny workload (pytest-benchmark's --benchmark-disable), so the
benchmark files cannot rot between the runs that actually time them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_run_in_smoke_mode():
    # cwd=benchmarks/: `python -m` puts the cwd on sys.path, and from the repository root that would
    # shadow the installed fasttrain (with its compiled _C) by the source folder.
    r = subprocess.run(
        [sys.executable, "-m", "pytest", ".", "--benchmark-disable", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
