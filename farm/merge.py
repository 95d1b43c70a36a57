"""The noise-aware merge rule.

Baseline repeats give the seed noise σ of one trial. A candidate's improvement over the
incumbent is judged against the standard error of a difference of two means,
σ·sqrt(1/n_candidate + 1/n_incumbent). A screening run only earns confirmations (beyond
`screen_z` standard errors); confirmations then run one at a time and `sequential` judges
them after each: an early keep, an early discard, or one more run. The kept metric is the
confirmations' estimate, never the screening run that stood out (the best of many noisy
trials is biased upward).

Real targets are not all Gaussian. Some are deterministic (a fixed `random_state`: every
run prints the same number, σ = 0): they are judged by the smallest improvement worth
keeping alone, with no confirmations. Some have heavy tails (a run that diverges now and
then): a run further than OUTLIER_SIGMAS robust σ (from the median absolute deviation)
from the median is an outlier, named and left out of σ and of the mean, and a
candidate's repeated runs are clipped to WINSOR_SIGMAS around their median, so one wild
run cannot carry a decision either way. A mixed fleet shifts every run of a faster class:
runs are compared on the baseline's scale of their class (`class_offsets`, `placed`). All
arithmetic stays finite-safe: a metric of ±1e308 gives inf somewhere, never an exception.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from farm.config import MergeConfig
from farm.records import Direction, Outcome, Trial, TrialKind

MAD_SIGMAS = 1.4826  # σ of a normal sample per unit of median absolute deviation
OUTLIER_SIGMAS = 5.0  # a Gaussian run lands this far out about once in 3.5 million
OUTLIER_MIN_RUNS = 6  # fewer, and the MAD is one gap between two runs
WINSOR_SIGMAS = 3.0  # a candidate's run counts at most this far from its runs' median
DIVERGED_SIGMAS = 3.0  # a candidate run this much worse than the incumbent is run again
PAIRED_MIN = 10  # screens with a partner run before the spread of their gaps is trusted
PAIRED_GAIN = 0.5  # pair only where it at least halves the variance a screen is gated by
SHORT_TIMEOUTS = 3  # short screens killed at their budget before farm stops screening short


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


@dataclass(frozen=True)
class Noise:
    """What repeated runs of one commit say about its metric and the seed noise."""

    center: float  # mean of the runs that are not outliers
    sigma: float  # their sample standard deviation; 0 for a deterministic target
    low: float
    median: float
    high: float
    outliers: tuple[int, ...]  # indices of the runs left out
    deterministic: bool  # the runs agree to within the smallest improvement kept

    def describe(self, metric: str, runs: int, *, names: Sequence[str] = ()) -> str:
        """One line for the log, `farm status` and the report."""
        if self.deterministic:
            return (
                f"all {runs} baseline runs gave {metric} {self.median:.6g}: the target ignores "
                "FARM_SEED; judging by min_delta, no confirmations"
            )
        text = (
            f"baseline {metric} {self.center:.6g} ± {self.sigma:.3g} over {runs} runs "
            f"(min {self.low:.6g}, median {self.median:.6g}, max {self.high:.6g})"
        )
        if self.outliers:
            named = [names[i] if i < len(names) else f"run {i}" for i in self.outliers]
            text += f"; outliers left out of σ and the mean: {', '.join(named)}"
        return text


def mean(values: Sequence[float]) -> float:
    """Mean that cannot overflow (math.fsum raises on ±1e308 + ±1e308)."""
    return sum(v / len(values) for v in values)


def _stdev(values: Sequence[float]) -> float:
    m = mean(values)
    return math.sqrt(sum((v - m) * (v - m) for v in values) / (len(values) - 1))


def noise(values: Sequence[float], *, tolerance: float) -> Noise:
    """Summarise two or more runs of one commit. `tolerance`: the smallest improvement
    worth keeping; runs that all agree within it make the target deterministic."""
    if len(values) < 2:
        raise ValueError("need at least two runs to estimate noise")
    mid = statistics.median(values)
    outliers = outlying(values)
    kept = [v for i, v in enumerate(values) if i not in outliers]
    deterministic = max(kept) - min(kept) <= tolerance
    return Noise(
        center=mid if deterministic else mean(kept),
        sigma=0.0 if deterministic else _stdev(kept),
        low=min(values),
        median=mid,
        high=max(values),
        outliers=outliers,
        deterministic=deterministic,
    )


@dataclass(frozen=True)
class Baseline:
    """The start commit's runs summarised: noise on the scale of its hardware classes."""

    noise: Noise
    offsets: dict[str, float]  # by hardware class (farm.merge.class_offsets)
    names: list[str]  # the trial ids summarised (runs on a class with an offset)
    values: list[float]  # their metrics, each less its class's offset
    classes: list[str]  # their hardware classes

    @property
    def counts(self) -> dict[str, int]:
        """Runs summarised per hardware class."""
        return dict(collections.Counter(self.classes))

    def describe(self, metric: str) -> str:
        said = self.noise.describe(metric, len(self.names), names=self.names)
        if len(self.offsets) > 1:
            said += "; by hardware class: " + ", ".join(
                f"{c or 'unknown'} {o:+.4g}" for c, o in sorted(self.offsets.items())
            )
        return said


Run = tuple[str, float, str]  # an ok trial's id, metric and hardware class


def runs_of(trials: Sequence[Trial]) -> list[Run]:
    """The (id, metric, hardware class) of each trial that ended ok (a metric is set then)."""
    return [
        (t.id, t.result.metric, t.result.hardware)
        for t in trials
        if t.result and t.result.metric is not None
    ]


def baseline(runs: Sequence[Run], m: MergeConfig) -> Baseline:
    """Summarise two or more baseline runs: class offsets out, then `noise` with the
    smallest improvement worth keeping as its tolerance."""
    offsets = class_offsets([v for _, v, _ in runs], [c for _, _, c in runs])
    kept = [(i, v - offsets[c], c) for i, v, c in runs if c in offsets]
    values = [v for _, v, _ in kept]
    found = noise(values, tolerance=smallest_delta(m, statistics.median(values)))
    return Baseline(found, offsets, [i for i, _, _ in kept], values, [c for _, _, c in kept])


def class_offsets(values: Sequence[float], classes: Sequence[str]) -> dict[str, float]:
    """How far each hardware class's runs sit from the mean of all (a faster GPU trains
    more steps in the same budget), for the classes with two or more runs."""
    by: dict[str, list[float]] = {}
    for v, c in zip(values, classes, strict=True):
        by.setdefault(c, []).append(v)
    known = {c: vs for c, vs in by.items() if len(vs) >= 2}
    if len(known) <= 1:  # nothing to compare with: one scale (a lone run's class or none)
        return dict.fromkeys(known or by, 0.0)
    overall = mean([v for vs in known.values() for v in vs])
    return {c: mean(vs) - overall for c, vs in known.items()}


def placed(
    values: Sequence[float], classes: Sequence[str], offsets: dict[str, float]
) -> list[float]:
    """Runs moved onto the reference's scale: each less its class's offset; a run on a
    class without an offset cannot be compared and is left out."""
    return [v - offsets[c] for v, c in zip(values, classes, strict=True) if c in offsets]


def offset_error(classes: Sequence[str], counts: dict[str, int]) -> float:
    """The variance, in units of σ², that class offsets measured on the baseline (`counts`
    runs per class) add to the mean of runs on `classes`: each offset is a class mean less
    the overall mean, off by about σ²·(1/n_c − 1/n)."""
    n = sum(counts.values())
    if len(counts) < 2 or not classes:
        return 0.0
    k = len(classes)
    share = {c: classes.count(c) / k for c in set(classes)}
    return sum(w * w * (1 / counts[c] - 1 / n) for c, w in share.items() if c in counts)


def outlying(values: Sequence[float]) -> tuple[int, ...]:
    """Indices of the runs further than OUTLIER_SIGMAS robust σ (from the median absolute
    deviation) from the median; none among fewer than OUTLIER_MIN_RUNS (the MAD of three
    runs is the smaller of two gaps: it would call an ordinary run an outlier)."""
    if len(values) < OUTLIER_MIN_RUNS:
        return ()
    mid = statistics.median(values)
    scale = MAD_SIGMAS * statistics.median(abs(v - mid) for v in values)
    if scale <= 0:
        return ()
    return tuple(i for i, v in enumerate(values) if abs(v - mid) > OUTLIER_SIGMAS * scale)


def smallest_delta(m: MergeConfig, metric: float | None) -> float:
    """The smallest improvement worth keeping: `min_delta`, or `min_rel_delta` of the
    metric's scale where that is more."""
    scale = abs(metric) if metric is not None and math.isfinite(metric) else 0.0
    return max(m.min_delta, m.min_rel_delta * scale)


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


def estimate(values: Sequence[float], sigma: float) -> float:
    """A candidate's metric from its runs: their mean, three or more clipped to
    WINSOR_SIGMAS·σ around their median first (one wild run cannot decide)."""
    if sigma <= 0 or len(values) < 3:
        return mean(values)
    mid = statistics.median(values)
    lo, hi = mid - WINSOR_SIGMAS * sigma, mid + WINSOR_SIGMAS * sigma
    return mean([min(max(v, lo), hi) for v in values])


class NoisePools:
    """Seed noise per incumbent, from repeated runs at its level.

    Noise often scales with the metric (a model at mean rank 1.5 varies far less than one
    at 11), so one σ from the baseline goes stale once a keep moves the metric far. Each
    incumbent pools the within-commit variance of the repeated runs at its level: its own
    runs, and the confirmation runs of candidates judged against it that did not beat it.
    Its σ is its own once that pool has as many degrees of freedom as the baseline had;
    until then its runs count for the degrees of freedom they have and the previous
    incumbent's σ for the rest.
    Outlying runs (as `noise` finds them) stay out.
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
        out = outlying(values)
        values = [v for i, v in enumerate(values) if i not in out]
        m = mean(values)
        self._ss[sha] = self._ss.get(sha, 0.0) + sum((v - m) * (v - m) for v in values)
        self._dof[sha] = self._dof.get(sha, 0) + len(values) - 1

    def sigma(self, sha: str, parent: Callable[[str], str]) -> float:
        """σ at `sha`; `parent` names the incumbent each keep replaced. The baseline's may
        be 0 (a deterministic target)."""
        dof = self._dof.get(sha, 0)
        if sha == self.start:
            return math.sqrt(self._ss[sha] / dof) if dof else 0.0
        if dof >= self.min_dof and self._ss.get(sha, 0.0) > 0:
            return math.sqrt(self._ss[sha] / dof)
        # Short of min_dof: its own runs count for what they have, the earlier incumbent's
        # σ fills the degrees of freedom missing (noise that shrank is seen sooner).
        inherited = self.sigma(parent(sha), parent)
        missing = self.min_dof - dof
        return math.sqrt((self._ss.get(sha, 0.0) + missing * inherited * inherited) / self.min_dof)


def paired_spread(gaps: Sequence[float]) -> float | None:
    """σ of a screen's gap to its partner (the reference's run with the same seed), robustly
    from the gaps of the screens so far: most candidates change little, and the few that
    gain or lose much would inflate a plain σ. None before PAIRED_MIN of them."""
    if len(gaps) < PAIRED_MIN:
        return None
    mid = statistics.median(gaps)
    return MAD_SIGMAS * statistics.median(abs(g - mid) for g in gaps)


def paired_bar(
    spread: float | None, *, sigma: float, incumbent_runs: float, m: MergeConfig
) -> float | None:
    """What a screen's paired gap (its improvement over its partner run) must exceed, where
    pairing at least halves the variance the unpaired gate has (σ²·(1 + 1/n)); else None.
    Pairing pays as far as the seed drives a run alike on both commits: on examples/eclip a
    small change keeps ρ 0.76–0.98 with its parent, a large one loses it."""
    unpaired = sigma * sigma * (1 + 1 / max(incumbent_runs, 1))
    if spread is None or not spread * spread <= PAIRED_GAIN * unpaired:
        return None
    return m.paired_z * spread


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


def promoted(
    value: float, others: Sequence[float], *, share: float, direction: Direction
) -> tuple[bool, int, int]:
    """ASHA's promotion rule for a short screen: (promoted, its rank, how many go on) among
    itself and the short screens already in against the same incumbent, the best
    ceil(share·n) of n going on (the first always does: there is nothing to rank it by)."""
    rank = 1 + sum(direction.improvement(old=value, new=o) > 0 for o in others)
    allowed = math.ceil(share * (len(others) + 1) - 1e-9)
    return rank <= allowed, rank, allowed


def fidelity_pairs(trials: Sequence[Trial]) -> list[tuple[str, float, float]]:
    """(the incumbent it was ranked against, short screen, full screen) of each candidate
    whose screens at both budgets gave a metric."""
    short = {
        t.candidate_id: (t.reference, t.result.metric)
        for t in trials
        if t.kind is TrialKind.SHORT and t.result and t.result.metric is not None
    }
    return [
        (*short[t.candidate_id], t.result.metric)
        for t in trials
        if t.kind is TrialKind.CANDIDATE
        and t.candidate_id in short
        and t.result
        and t.result.metric is not None
    ]


@dataclass(frozen=True)
class Fidelity:
    """How short screens rank candidates against full budgets (`rank_agreement`)."""

    tau: float | None  # Kendall's τ; None before any pair
    pairs: int
    timeouts: int  # short screens killed at screen_budget_s: the target ignores FARM_BUDGET_S
    apart: bool  # τ below min_rank_agreement over rank_pairs or more: stop screening short

    def describe(self, m: MergeConfig) -> str:
        if self.timeouts >= SHORT_TIMEOUTS:
            return (
                f"{self.timeouts} short screens ran past {m.screen_budget_s:g} s: the target "
                "does not train within FARM_BUDGET_S; stopped, new candidates screen in full"
            )
        if self.tau is None:
            return f"no candidate has run at both budgets yet (τ needs {m.rank_pairs} pairs)"
        said = f"Kendall's τ {self.tau:+.2f} over {self.pairs} pairs"
        if self.apart:
            return said + f" < {m.min_rank_agreement:g}: stopped, new candidates screen in full"
        if self.pairs < m.rank_pairs:
            return said + f" (judged from {m.rank_pairs} pairs)"
        return said + f" (short screens stop below {m.min_rank_agreement:g})"


def fidelity(trials: Sequence[Trial], m: MergeConfig) -> Fidelity:
    """The rank monitor of short screens over these trials."""
    tau, n = rank_agreement(fidelity_pairs(trials))
    late = sum(
        t.kind is TrialKind.SHORT and t.result is not None and t.result.outcome is Outcome.TIMEOUT
        for t in trials
    )
    apart = tau is not None and n >= m.rank_pairs and tau < m.min_rank_agreement
    return Fidelity(tau, n, late, apart or late >= SHORT_TIMEOUTS)


def rank_agreement(pairs: Sequence[tuple[str, float, float]]) -> tuple[float | None, int]:
    """Kendall's τ of short against full-budget screens, and the pairs it is over: of every
    two candidates ranked against the same incumbent (levels move with the incumbent), the
    share both budgets order alike less the share they order apart; ties count for neither.
    None without a pair."""
    by: dict[str, list[tuple[float, float]]] = {}
    for ref, short, full in pairs:
        by.setdefault(ref, []).append((short, full))
    alike = apart = 0
    for runs in by.values():
        for (s1, f1), (s2, f2) in itertools.combinations(runs, 2):
            sign = (s1 - s2) * (f1 - f2)
            alike += sign > 0
            apart += sign < 0
    n = alike + apart
    return ((alike - apart) / n if n else None), n


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
