import json
import math

import pytest
from _subprocess import run_python

from fasttrain.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["isa"] in d["isa_available"]


def test_bench_small_prints_ratios(capsys):
    assert main(["bench", "--small", "--seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "isa" in out
    rows = [line for line in out.splitlines() if line.startswith(("float32", "bfloat16"))]
    assert len(rows) == 4
    for row in rows:
        speedup = float(row.split()[4].rstrip("x"))
        assert speedup > 0 or math.isnan(speedup)  # NaN: the box's noise exceeded the op time (reported as such)


@pytest.mark.parametrize("cmd", ["demo", "bench"])
def test_rejects_bad_seconds(cmd):
    with pytest.raises(SystemExit, match="--seconds must be positive"):
        main([cmd, "--seconds", "0"])


def test_unknown_command_fails_with_usage():
    r = run_python("-m", "fasttrain.cli", "trian")
    assert r.returncode == 2
    assert "invalid choice: 'trian'" in r.stderr
