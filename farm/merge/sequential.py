"""The sequential test: a candidate's improvement over the incumbent is judged against the
standard error of a difference of two means, σ·sqrt(1/n_candidate + 1/n_incumbent). A
screening run only earns confirmations (beyond `screen_z` standard errors); confirmations
then run one at a time and `sequential` judges them after each: an early keep, an early
discard, or one more run. The kept metric is the confirmations' estimate, never the
screening run that stood out (the best of many noisy trials is biased upward)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from farm.config import MergeConfig
from farm.merge.noise import estimate, smallest_delta
from farm.records import Direction

DIVERGED_SIGMAS = 3.0  # a candidate run this much worse than the incumbent is run again


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


def keep_threshold(m: MergeConfig, *, sigma: float, metric: float | None, runs: float) -> float:
    """What a candidate's confirmations must improve on an incumbent (its estimate `metric`
    from `runs` runs) by at the last stage; one run's worth on a deterministic target."""
    return threshold(
        runs=1 if sigma == 0 else max(m.confirm, 1),
        incumbent_runs=runs,
        sigma=sigma,
        z=m.z,
        min_delta=smallest_delta(m, metric),
    )


def threshold(
    *, runs: int, incumbent_runs: float, sigma: float, z: float, min_delta: float
) -> float:
    """What the improvement of the estimate from `runs` runs must exceed."""
    return max(min_delta, z * sigma * math.sqrt(1 / runs + 1 / max(incumbent_runs, 1)))


def steady(
    values: list[float], *, incumbent: float, sigma: float, direction: Direction
) -> list[float]:
    """The runs that did not diverge: none worse than the incumbent by OUTLIER_SIGMAS·σ."""
    if not sigma > 0:  # a deterministic target has no spread to diverge from
        return list(values)
    limit = -DIVERGED_SIGMAS * sigma
    return [v for v in values if not direction.improvement(old=incumbent, new=v) < limit]


def sequential(
    values: list[float],
    *,
    m: MergeConfig,
    stages: int,
    incumbent: float,
    incumbent_runs: float,
    sigma: float,
    direction: Direction,
    gate: Verdict | None = None,
) -> tuple[bool | None, Verdict]:
    """One look of the sequential test at a candidate's runs so far (the screen first, then
    one confirmation at a time, `stages` runs at most): (True, v) keep, (False, v) discard,
    (None, v) run one more.

    The screen only earns confirmations (beyond `screen_z` standard errors, or as `gate`,
    its paired gate, says): it passed a gate, so it is biased and never judged again. After
    each confirmation the estimate from the confirmations is judged: kept early beyond
    `efficacy_z` (two or more of them), discarded early short of `futility_z`, judged
    against `z` after the last stage. With no confirmations (`stages` 1: confirm = 0, or a
    deterministic target) the screen is judged against `z`. A confirmation that diverged
    (far worse than the incumbent, as the baseline's outliers were) is left out, as they
    were, and run again once; two such are a discard. scripts/bench/merge_quality.py
    measures the error rates all this gives.
    """
    least = smallest_delta(m, incumbent)
    # A screen that diverged is a screen that failed: most such candidates are just bad.
    good = values[:1] + steady(values[1:], incumbent=incumbent, sigma=sigma, direction=direction)

    def at(runs: list[float], z: float, min_delta: float = least) -> Verdict:
        return judge(
            runs,
            incumbent=incumbent,
            incumbent_runs=incumbent_runs,
            sigma=sigma,
            direction=direction,
            z=z,
            min_delta=min_delta,
        )

    last = len(values) >= stages
    if len(values) - len(good) >= 2 or (last and len(good) < min(stages, 2)):
        lost = at(values, m.z)
        return False, dataclasses.replace(lost, passed=False)
    if not last and values[-1] not in good:
        return None, at(values, m.z)  # the last run diverged: once more
    if stages == 1:
        final = at(good, m.z)
        return final.passed, final
    if len(good) == 1:  # the screen: going on needs no smallest gain (paired: `gate`)
        gate = gate or at(good, m.screen_z, -math.inf)
        return (None if gate.passed else False), gate
    confirmed = good[1:]
    if last:
        final = at(confirmed, m.z)
        return final.passed, final
    if len(confirmed) >= 2:
        early = at(confirmed, m.efficacy_z)
        if early.passed:
            return True, early
    going = at(confirmed, m.futility_z, -math.inf)
    return (None if going.passed else False), going


def judge(
    values: list[float],
    *,
    incumbent: float,
    incumbent_runs: float,
    sigma: float,
    direction: Direction,
    z: float,
    min_delta: float,
) -> Verdict:
    """Does the estimate from `values` beat the incumbent beyond noise? A NaN anywhere
    fails (comparisons with NaN are false)."""
    est = estimate(values, sigma)
    delta = direction.improvement(old=incumbent, new=est)
    bar = threshold(
        runs=len(values), incumbent_runs=incumbent_runs, sigma=sigma, z=z, min_delta=min_delta
    )
    return Verdict(passed=delta > bar, estimate=est, delta=delta, threshold=bar)
