"""The sequential test: a candidate's improvement over the incumbent is judged against the
standard error of a difference of two means, σ·sqrt(1/n_candidate + 1/n_incumbent), in
standard errors of a Student t with the baseline's degrees of freedom (σ is itself an
estimate: with few baseline runs its error widens every boundary). A screening run earns
confirmations (beyond `screen_z` standard errors); confirmations then run one at a time
and `sequential` judges all of the candidate's runs after each: an early keep, an early
discard, or one more run. Every look is one stage of one test whose error rates
scripts/bench/merge_quality.py measures, so the screen's run counts as evidence like the
others (its gate is part of the test, not a bias to set aside)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from farm.config import MergeConfig
from farm.merge.noise import estimate, robust_sigma, smallest_delta
from farm.records import Direction

DIVERGED_SIGMAS = 3.0  # a candidate run this much worse than the incumbent is run again
GAINS_MIN = 10  # screens before their spread says how far candidates' gains vary


@dataclass(frozen=True)
class Verdict:
    passed: bool
    estimate: float  # mean of the runs judged
    delta: float  # improvement over the incumbent; positive = better
    threshold: float  # what delta had to exceed
    runs: int = 1  # how many runs the estimate averages

    def describe(self, metric: str) -> str:
        sign = ">" if self.passed else "<="
        return (
            f"{metric} {self.estimate:.6g}, Δ {self.delta:+.4g} {sign} "
            f"threshold {self.threshold:.4g}"
        )


def flattered(verdict: Verdict) -> bool:
    """Whether a keep's estimate sits near enough to its bar that being picked by it
    flatters it (the winner's curse): it cleared the bar by less than the bar again. One
    far beyond it was never near the cut, so the selection barely moves its estimate."""
    return verdict.delta < 2 * verdict.threshold


def lucky(gains: Sequence[float], *, sigma: float, m: MergeConfig) -> bool:
    """Whether a keep near its bar owes its margin mostly to luck, so that it is measured
    afresh (`measure_keeps` says always): where candidates' true gains spread less than
    `measure_spread` σ, a test that picks the best of them picks their luckiest runs. The
    spread is the screens' `gains` (one run each over its reference, before any test
    picked it), robustly (a few far better or far worse would inflate a plain σ), less one
    run's noise; before GAINS_MIN screens it is unknown, and luck is assumed."""
    if m.measure_keeps:
        return True
    if not m.measure_spread > 0:
        return False
    if len(gains) < GAINS_MIN:
        return True
    spread = robust_sigma(gains)
    return spread * spread < sigma * sigma * (1 + m.measure_spread**2)


def keep_threshold(m: MergeConfig, *, sigma: float, metric: float | None, runs: float) -> float:
    """What a candidate's runs (its screen and `confirm` confirmations) must improve on an
    incumbent (its estimate `metric` from `runs` runs) by at the last stage; one run's
    worth on a deterministic target."""
    return threshold(
        runs=1 if sigma == 0 else 1 + m.confirm,
        incumbent_runs=runs,
        sigma=sigma,
        z=m.z,
        dof=dof_of(m),
        min_delta=smallest_delta(m, metric),
    )


def dof_of(m: MergeConfig) -> int:
    """The degrees of freedom of σ: the baseline's `repeats` runs less their mean."""
    return m.repeats - 1


def widened(z: float, dof: float) -> float:
    """The quantile of a Student t with `dof` degrees of freedom at the level of a normal's
    `z`: a boundary of z standard errors where σ is known, when σ is an estimate. Exact for
    1 and 2 degrees of freedom, Abramowitz & Stegun 26.7.5 from 3 (within 0.01 to the
    99.9% level). Beyond 8 (a boundary set to "never") z is left as it is."""
    if abs(z) > 8:
        return z
    if dof < 3:
        p = NormalDist().cdf(z)
        if dof < 2:
            return math.tan(math.pi * (p - 0.5))
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z2 = z * z
    terms = (
        (z2 + 1) / 4,
        ((5 * z2 + 16) * z2 + 3) / 96,
        (((3 * z2 + 19) * z2 + 17) * z2 - 15) / 384,
        ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) / 92160,
    )
    return z * (1 + sum(g / dof ** (k + 1) for k, g in enumerate(terms)))


def threshold(
    *, runs: int, incumbent_runs: float, sigma: float, z: float, dof: float, min_delta: float
) -> float:
    """What the improvement of the estimate from `runs` runs must exceed: `z` standard
    errors of the difference, as many of a t with `dof` degrees of freedom (`widened`)."""
    spread = sigma * math.sqrt(1 / runs + 1 / max(incumbent_runs, 1))
    return max(min_delta, widened(z, dof) * spread)


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
    diverging: bool = False,
) -> tuple[bool | None, Verdict]:
    """One look of the sequential test at a candidate's runs so far (the screen first, then
    one confirmation at a time, `stages` runs at most): (True, v) keep, (False, v) discard,
    (None, v) run one more.

    The screen earns confirmations beyond `screen_z` standard errors (or as `gate`, its
    paired gate, says). After each confirmation the estimate from all the runs, the screen
    included, is judged: kept early beyond `efficacy_z`, discarded early short of
    `futility_z`, judged against `z` after the last stage. With no confirmations (`stages`
    1: confirm = 0, or a deterministic target) the screen is judged against `z`. A
    confirmation that diverged (far worse than the incumbent, as the baseline's outliers
    were) is left out, as they were, and run again once; two such are a discard. So is a
    screen that diverged where the target's own runs do (`diverging`: the baseline's).
    scripts/bench/merge_quality.py measures the error rates all this gives.
    """
    least = smallest_delta(m, incumbent)
    # A screen that diverged is a screen that failed (most such candidates are just bad)
    # unless the target's own runs diverge now and then (`diverging`): then it is run again,
    # as a confirmation that diverged is.
    first = [] if diverging else values[:1]
    good = first + steady(
        values[len(first) :], incumbent=incumbent, sigma=sigma, direction=direction
    )

    def at(runs: list[float], z: float, min_delta: float = least) -> Verdict:
        return judge(
            runs,
            incumbent=incumbent,
            incumbent_runs=incumbent_runs,
            sigma=sigma,
            direction=direction,
            z=z,
            dof=dof_of(m),
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
    if last:
        final = at(good, m.z)
        return final.passed, final
    early = at(good, m.efficacy_z)
    if early.passed:
        return True, early
    going = at(good, m.futility_z, -math.inf)
    # Short of a gain of `effect` σ by power_z standard errors: a bar that rises with the runs.
    spread = threshold(
        runs=len(good),
        incumbent_runs=incumbent_runs,
        sigma=sigma,
        z=m.power_z,
        dof=dof_of(m),
        min_delta=-math.inf,
    )
    bar = max(going.threshold, m.effect * sigma - spread)
    going = dataclasses.replace(going, passed=going.delta > bar, threshold=bar)
    return (None if going.passed else False), going


def judge(
    values: list[float],
    *,
    incumbent: float,
    incumbent_runs: float,
    sigma: float,
    direction: Direction,
    z: float,
    dof: float,
    min_delta: float,
) -> Verdict:
    """Does the estimate from `values` beat the incumbent beyond noise (`z` standard errors,
    as a t with `dof` degrees of freedom has them)? A NaN anywhere fails (comparisons with
    NaN are false)."""
    est = estimate(values, sigma)
    delta = direction.improvement(old=incumbent, new=est)
    bar = threshold(
        runs=len(values),
        incumbent_runs=incumbent_runs,
        sigma=sigma,
        z=z,
        dof=dof,
        min_delta=min_delta,
    )
    return Verdict(passed=delta > bar, estimate=est, delta=delta, threshold=bar, runs=len(values))
