"""fasttrain.bench timing helpers: interleaved rounds and paired ratios."""

import pytest

from fasttrain.bench import Timing, interleaved, paired_ratio


def test_paired_ratio_is_median_of_per_round_ratios():
    num = Timing("a", [2.0, 3.0, 10.0])
    den = Timing("b", [1.0, 1.0, 10.0])  # a slow third round hits both: its ratio is 1
    assert paired_ratio(num, den) == 2.0
    assert num.median / den.median == 3.0  # what the unpaired ratio would say


def test_paired_ratio_needs_one_interleaved_call():
    with pytest.raises(ValueError, match="one interleaved"):
        paired_ratio(Timing("a", [1.0, 2.0]), Timing("b", [1.0]))
    with pytest.raises(ValueError, match="one interleaved"):
        paired_ratio(Timing("a", []), Timing("b", []))


def test_interleaved_times_every_candidate_every_round():
    calls = []
    t = interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, rounds=3, warmup=1)
    assert len(t["x"].seconds) == len(t["y"].seconds) == 3
    assert calls.count("x") == calls.count("y") == 4
    assert calls[2:4] == ["x", "y"] and calls[4:6] == ["y", "x"]  # the order rotates each round
    assert paired_ratio(t["x"], t["y"]) > 0
