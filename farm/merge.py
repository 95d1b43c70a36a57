"""The noise-aware merge rule.

Baseline repeats give the seed noise σ of one trial. A candidate's improvement over the
incumbent is judged against the standard error of a difference of two means,
σ·sqrt(1/n_candidate + 1/n_incumbent): it passes only beyond max(min_delta, z·that).
A screening run uses the milder `screen_z` and only earns confirmation runs; the kept
metric is the mean of the confirmation runs, never the screening run that stood out
(the best of many noisy trials is biased upward).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from farm.records import Direction


@dataclass(frozen=True)
class Verdict:
    passed: bool
    estimate: float  # mean of the runs judged
    delta: float  # improvement over the incumbent; positive = better
    threshold: float  # what delta had to exceed

    def describe(self, metric: str) -> str:
        sign = ">" if self.passed else "<="
        return (
            f"{metric} {self.estimate:.6g}, Δ {self.delta:+.4g} {sign} "
            f"threshold {self.threshold:.4g}"
        )


def noise_sigma(values: list[float]) -> float:
    """Sample standard deviation of repeated runs of one commit (needs two or more)."""
    if len(values) < 2:
        raise ValueError("need at least two runs to estimate noise")
    return statistics.stdev(values)


def judge(
    values: list[float],
    *,
    incumbent: float,
    incumbent_runs: int,
    sigma: float,
    direction: Direction,
    z: float,
    min_delta: float,
) -> Verdict:
    """Does the mean of `values` beat the incumbent beyond noise?"""
    estimate = statistics.fmean(values)
    delta = direction.improvement(old=incumbent, new=estimate)
    stderr = sigma * math.sqrt(1 / len(values) + 1 / max(incumbent_runs, 1))
    threshold = max(min_delta, z * stderr)
    return Verdict(passed=delta > threshold, estimate=estimate, delta=delta, threshold=threshold)
