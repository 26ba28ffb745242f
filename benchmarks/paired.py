"""Paired rounds: a candidate call against a baseline call, timed back to back in each round.

On a shared machine the load from other processes drifts over seconds, so a ratio of medians of
separately timed calls is noisy. Here each round times the two calls back to back (their order
alternating between rounds) and the statistic is the distribution of the per-round ratios.
"""

import dataclasses
import statistics
import time
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedRatio:
    """baseline / candidate: median wall seconds per call; ratio: median of the per-round wall
    time ratios candidate / baseline, with their 25 % and 75 % quantiles; of_mins: fastest
    candidate / fastest baseline; cpu_ratio: median of the per-round ratios of process CPU time
    (all threads; it does not count waiting for a core, so it moves less with the load)."""

    baseline: float
    candidate: float
    ratio: float
    low: float
    high: float
    of_mins: float
    cpu_ratio: float

    def cells(self) -> str:
        """'median [25-75 %] | of mins | CPU' for a Markdown table."""
        return (f"{self.ratio:.2f} [{self.low:.2f}-{self.high:.2f}] | {self.of_mins:.2f} | "
                f"{self.cpu_ratio:.2f}")


def paired_ratio(baseline: Callable[[], object], candidate: Callable[[], object], rounds: int,
                 warmup: int = 1) -> PairedRatio:
    """Times the zero-argument calls `warmup` times each untimed (tracing, compiling), then
    `rounds` rounds of one call each, back to back, the order alternating."""
    for call in (baseline, candidate):
        for _ in range(warmup):
            call()
    times = {"baseline": [], "candidate": []}
    cpu = {"baseline": [], "candidate": []}
    order = (("baseline", baseline), ("candidate", candidate))
    for i in range(rounds):
        for label, call in order if i % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - start_cpu)
    ratios = np.asarray(times["candidate"]) / np.asarray(times["baseline"])
    low, high = np.quantile(ratios, [0.25, 0.75])
    cpu_ratios = np.asarray(cpu["candidate"]) / np.asarray(cpu["baseline"])
    return PairedRatio(statistics.median(times["baseline"]), statistics.median(times["candidate"]),
                       float(np.median(ratios)), float(low), float(high),
                       min(times["candidate"]) / min(times["baseline"]), float(np.median(cpu_ratios)))
