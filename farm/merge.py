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
from collections.abc import Callable
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


class NoisePools:
    """Seed noise per incumbent, from repeated runs at its level.

    Noise often scales with the metric (a model at mean rank 1.5 varies far less than one
    at 11), so one σ from the baseline goes stale once a keep moves the metric far. Each
    incumbent pools the within-commit variance of the repeated runs at its level: its own
    runs, and the confirmation runs of candidates judged against it that did not beat it.
    Its σ is its own once that pool has as many degrees of freedom as the baseline had;
    until then, the nearest earlier incumbent's that has (the baseline's in the end).
    """

    def __init__(self, *, start: str, min_dof: int) -> None:
        self.start = start
        self.min_dof = min_dof
        self._ss: dict[str, float] = {}
        self._dof: dict[str, int] = {}
        self._added: set[str] = set()

    def add(self, sha: str, values: list[float], *, key: str) -> None:
        """Runs of one commit at incumbent `sha`'s level; a second add of `key` is ignored."""
        if key in self._added or len(values) < 2:
            return
        self._added.add(key)
        mean = statistics.fmean(values)
        self._ss[sha] = self._ss.get(sha, 0.0) + sum((x - mean) ** 2 for x in values)
        self._dof[sha] = self._dof.get(sha, 0) + len(values) - 1

    def sigma(self, sha: str, parent: Callable[[str], str]) -> float:
        """σ at `sha`; `parent` names the incumbent each keep replaced."""
        while True:
            dof = self._dof.get(sha, 0)
            if (dof >= self.min_dof or sha == self.start) and self._ss.get(sha, 0.0) > 0:
                return math.sqrt(self._ss[sha] / dof)
            if sha == self.start:
                raise ValueError("no baseline runs in the noise pools")
            sha = parent(sha)


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
