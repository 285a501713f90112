"""Interleaved timing: candidates alternate inside every round, so the 2-3x drift of a shared box
hits all of them alike and their ratio stays meaningful. Report medians, never means."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Timing", "interleaved", "paired_ratio"]


@dataclass
class Timing:
    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 15,
    warmup: int = 2,
    min_seconds: float = 0.0,
    sync: Callable[[], object] | None = None,
) -> dict[str, Timing]:
    """Times each callable once per round, rotating the order every round.

    rounds: minimum number of rounds; more run until `min_seconds` of wall time have passed.
    sync: called after each call (e.g. torch.cuda.synchronize) so asynchronous work is counted.
    """
    names = list(fns)
    out = {n: Timing(n) for n in names}
    for _ in range(warmup):
        for n in names:
            fns[n]()
        if sync:
            sync()
    start = time.perf_counter()
    r = 0
    while r < rounds or time.perf_counter() - start < min_seconds:
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            if sync:
                sync()
            out[n].seconds.append(time.perf_counter() - t0)
        r += 1
    return out


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of num / den, each pair timed in the same round of `interleaved`.

    Less sensitive than median(num) / median(den) to drift that moves whole rounds (on the 2-core box
    a round of ~1 s can run 5% slower than the next). Both must come from one interleaved() call.
    """
    if len(num.seconds) != len(den.seconds) or not num.seconds:
        raise ValueError(f"paired_ratio: {num.name} has {len(num.seconds)} rounds and {den.name} "
                         f"{len(den.seconds)}; time both in one interleaved() call")
    return statistics.median(a / b for a, b in zip(num.seconds, den.seconds))
