"""Seed noise: a commit's repeated runs summarised (outliers named and left out), the
baseline on its hardware classes' scale, and the noise pooled per incumbent.

Real targets are not all Gaussian. Some are deterministic (a fixed `random_state`: every
run prints the same number, σ = 0): they are judged by the smallest improvement worth
keeping alone, with no confirmations. Some have heavy tails (a run that diverges now and
then): a run further than OUTLIER_SIGMAS robust σ (from the median absolute deviation)
from the median is an outlier, named and left out of σ and of the mean, and a
candidate's repeated runs are clipped to WINSOR_SIGMAS around their median, so one wild
run cannot carry a decision either way. All arithmetic stays finite-safe: a metric of
±1e308 gives inf somewhere, never an exception.
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from farm.config import MergeConfig
from farm.merge.arith import mean
from farm.merge.classes import class_offsets
from farm.records import Trial

MAD_SIGMAS = 1.4826  # σ of a normal sample per unit of median absolute deviation
OUTLIER_SIGMAS = 5.0  # a Gaussian run lands this far out about once in 3.5 million
OUTLIER_MIN_RUNS = 6  # fewer, and the MAD is one gap between two runs
WINSOR_SIGMAS = 3.0  # a candidate's run counts at most this far from its runs' median


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

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        """Runs summarised per hardware class (asked for every candidate at every step)."""
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


def robust_sigma(values: Sequence[float]) -> float:
    """σ from the median absolute deviation: a few values far off do not inflate it."""
    mid = statistics.median(values)
    return MAD_SIGMAS * statistics.median(abs(v - mid) for v in values)


def outlying(values: Sequence[float]) -> tuple[int, ...]:
    """Indices of the runs further than OUTLIER_SIGMAS robust σ (from the median absolute
    deviation) from the median; none among fewer than OUTLIER_MIN_RUNS (the MAD of three
    runs is the smaller of two gaps: it would call an ordinary run an outlier)."""
    if len(values) < OUTLIER_MIN_RUNS:
        return ()
    mid = statistics.median(values)
    scale = robust_sigma(values)
    if scale <= 0:
        return ()
    return tuple(i for i, v in enumerate(values) if abs(v - mid) > OUTLIER_SIGMAS * scale)


def smallest_delta(m: MergeConfig, metric: float | None) -> float:
    """The smallest improvement worth keeping: `min_delta`, or `min_rel_delta` of the
    metric's scale where that is more."""
    scale = abs(metric) if metric is not None and math.isfinite(metric) else 0.0
    return max(m.min_delta, m.min_rel_delta * scale)


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
        # σ by incumbent, asked for every candidate at every step: a walk down the lineage
        # each (keeps rarely have the baseline's degrees of freedom), so kept until a run
        # is added.
        self._sigmas: dict[str, float] = {}

    def add(self, sha: str, values: list[float], *, key: str) -> None:
        """Runs of one commit at incumbent `sha`'s level; a second add of `key` is ignored."""
        if key in self._added or len(values) < 2:
            return
        self._added.add(key)
        self._sigmas.clear()
        out = outlying(values)
        values = [v for i, v in enumerate(values) if i not in out]
        m = mean(values)
        self._ss[sha] = self._ss.get(sha, 0.0) + sum((v - m) * (v - m) for v in values)
        self._dof[sha] = self._dof.get(sha, 0) + len(values) - 1

    def sigma(self, sha: str, parent: Callable[[str], str]) -> float:
        """σ at `sha`; `parent` names the incumbent each keep replaced. The baseline's may
        be 0 (a deterministic target). Walks the lineage without recursion (a campaign may
        chain thousands of keeps); a lineage that loops is refused."""
        if sha not in self._sigmas:
            self._sigmas[sha] = self._walk(sha, parent)
        return self._sigmas[sha]

    def _walk(self, sha: str, parent: Callable[[str], str]) -> float:
        chain: list[str] = []
        seen: set[str] = set()
        while sha != self.start and not self._own(sha):
            if sha in seen:
                raise ValueError(f"the incumbents' lineage loops at {sha[:10]}")
            seen.add(sha)
            chain.append(sha)
            sha = parent(sha)
        dof = self._dof.get(sha, 0)
        found = math.sqrt(self._ss[sha] / dof) if dof else 0.0
        # Short of min_dof: its own runs count for what they have, the earlier incumbent's
        # σ fills the degrees of freedom missing (noise that shrank is seen sooner).
        for below in reversed(chain):
            missing = self.min_dof - self._dof.get(below, 0)
            found = math.sqrt((self._ss.get(below, 0.0) + missing * found * found) / self.min_dof)
        return found

    def _own(self, sha: str) -> bool:
        """Whether `sha`'s own runs have the degrees of freedom to give its σ alone."""
        return self._dof.get(sha, 0) >= self.min_dof and self._ss.get(sha, 0.0) > 0
