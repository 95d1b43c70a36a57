"""What the evidence means, stage by stage: pure functions from runs to a ruling.

The controller gathers the evidence (trials, the reference's estimate, σ, class offsets),
calls one of these and acts on the ruling (enqueue, merge, record); nothing here reads a
store, touches git or remembers anything between calls, so every stage can be tested with
numbers alone and every view that explains a decision reads the same rule.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from farm.config import MergeConfig, TargetConfig
from farm.merge.classes import offset_error, placed
from farm.merge.fidelity import promoted
from farm.merge.noise import Baseline, baseline, runs_of, smallest_delta
from farm.merge.sequential import Verdict, dof_of, judge, sequential, steady
from farm.records import Direction, Outcome, Trial, TrialState
from workers.metric import missing_metric_note

# Baseline runs asked for first: if they agree, the target is deterministic and the rest of
# `repeats` would be spent on nothing (more go in the first wave when slots are free).
FIRST_BASELINE = 3


class Act(enum.StrEnum):
    WAIT = "wait"  # a run it needs is still out
    MORE = "more"  # it needs another run
    PASS = "pass"  # a gate passed (baseline, pre-flight, short screen, measuring runs)
    KEEP = "keep"
    DISCARD = "discard"
    FAIL = "fail"  # its code failed a run: the candidate crashed
    SUPERSEDE = "supersede"  # it no longer applies on the incumbent


@dataclass(frozen=True)
class Ruling:
    act: Act
    reason: str = ""
    verdict: Verdict | None = None
    values: list[float] = field(default_factory=list)  # the runs it stands on (placed)


@dataclass(frozen=True)
class Target:
    """What a ruling's text names: the metric, how it is read, the command."""

    metric: str
    metric_regex: str = ""
    command: str = ""
    direction: Direction = Direction.MINIMIZE

    @classmethod
    def of(cls, cfg: TargetConfig) -> Target:
        return cls(cfg.metric, cfg.metric_regex, cfg.command, cfg.direction)


def failure(trial: Trial, what: str, t: Target) -> str:
    """Why a finished trial failed, for a decision's reason; "" when it ran ok."""
    if trial.state is TrialState.DEAD:
        return f"{what} never completed: the infrastructure failed {trial.deliveries} times"
    r = trial.result
    assert r is not None
    if r.outcome.is_ok():
        return ""
    if r.outcome is Outcome.NO_METRIC:
        note = missing_metric_note(r.output_tail, name=t.metric, regex=t.metric_regex)
        return f"{what} {r.outcome.value} (exit {r.exit_code}): {note}"
    last = next((ln.strip() for ln in reversed(r.output_tail.splitlines()) if ln.strip()), "")
    detail = f"; last output: {last[:300]}" if last else ""
    return f"{what} {r.outcome.value} (exit {r.exit_code}){detail}"


def finished(trials: Sequence[Trial]) -> bool:
    return all(t.state.is_finished() for t in trials)


# -- the baseline -----------------------------------------------------------------------
def first_wave(m: MergeConfig, slots: int | None) -> int:
    """Baseline runs asked for at the start."""
    return min(m.repeats, max(FIRST_BASELINE, slots or 0))


def baseline_ruling(
    trials: Sequence[Trial], m: MergeConfig, t: Target
) -> tuple[Ruling, Baseline | None]:
    """The baseline's runs so far: WAIT, MORE (the rest of `repeats`), FAIL (the target does
    not run as configured: the reason says why) or PASS with its summary. Three runs that
    agree make the target deterministic, and the rest of `repeats` is not asked for."""
    if not finished(trials):
        return Ruling(Act.WAIT), None
    runs = runs_of(trials)
    if not runs:  # none ran: more runs of a broken target would be spent on nothing
        return Ruling(Act.FAIL, baseline_failure(trials, t)), None
    early = len(runs) >= FIRST_BASELINE and baseline(runs, m).noise.deterministic
    if len(trials) < m.repeats and not early:
        return Ruling(Act.MORE), None
    if len(runs) < 2:
        return Ruling(Act.FAIL, baseline_failure(trials, t)), None
    base = baseline(runs, m)
    return Ruling(Act.PASS, base.describe(t.metric), values=base.values), base


def baseline_failure(trials: Sequence[Trial], t: Target) -> str:
    lines = [f"the baseline did not run: fewer than 2 of {len(trials)} baseline trials were ok"]
    for trial in trials:
        if trial.result is None:
            lines.append(f"  {trial.id}: {trial.state.value} (infrastructure kept failing)")
            continue
        r = trial.result
        lines.append(f"  {trial.id}: {r.outcome.value} (exit {r.exit_code})")
        if r.outcome is Outcome.NO_METRIC:
            lines.append(
                f"    the command exited 0 but printed no `{t.metric}: <value>` line: "
                "check `metric` in farm.toml"
            )
    tail = next((x.result.output_tail for x in trials if x.result and x.result.output_tail), "")
    if tail:
        lines.append("  output tail of the first failure:")
        lines.extend("    " + ln for ln in tail.strip().splitlines()[-15:])
    lines.append(f"fix the target so `{t.command}` runs and prints the metric, then rerun")
    return "\n".join(lines)


def reruns_per_candidate(base: Baseline | None, m: MergeConfig) -> int:
    """Confirmation runs per candidate: `confirm`, none on a deterministic target (σ = 0:
    the same code gives the same number again)."""
    return 0 if base and base.noise.deterministic else m.confirm


# -- gates before a full budget ---------------------------------------------------------
def preflight_ruling(trial: Trial, seconds: float, t: Target) -> Ruling:
    """A pre-flight ([merge] preflight_s) passes unless its run failed."""
    if not trial.state.is_finished():
        return Ruling(Act.WAIT)
    failed = failure(trial, f"failed its {seconds:g} s pre-flight: the run", t)
    return Ruling(Act.FAIL, failed) if failed else Ruling(Act.PASS)


def short_ruling(
    short: Trial, standing: tuple[int, int], m: MergeConfig, t: Target, *, moved: bool, last: bool
) -> Ruling:
    """A short screen ([merge] screen_budget_s) goes on to a full budget when it ranks among
    the best `promote` share of the short screens against the same incumbent (ASHA's rule,
    asked again as more come in). Below the cut at its `last` look it is discarded; before
    that it is held (WAIT) while that incumbent stands, and once it has moved (`moved`) it
    gets another look on the new one (MORE). A short screen killed at its budget says
    nothing of the candidate: it goes on."""
    if not short.state.is_finished():
        return Ruling(Act.WAIT)
    if short.result and short.result.outcome is Outcome.TIMEOUT:
        return Ruling(Act.PASS)
    what = f"short screen ({m.screen_budget_s:g} s)"
    failed = failure(short, what, t)
    if failed:
        return Ruling(Act.FAIL, failed)
    assert short.result is not None and short.result.metric is not None
    value = short.result.metric
    better, n = standing  # (others better than it, screens against its incumbent)
    go, rank, allowed = promoted(better, n, share=m.promote)
    if go:
        return Ruling(Act.PASS)
    said = (
        f"{what}: {t.metric} {value:.6g} ranked {rank} of {n} against "
        f"{short.reference[:10]}; the best {allowed} went on to a full budget"
    )
    if last:
        return Ruling(
            Act.DISCARD, said + (f" (look {m.looks} of {m.looks})" if m.looks > 1 else "")
        )
    if not moved:
        return Ruling(Act.WAIT, said + "; held for another look once the incumbent moves")
    return Ruling(Act.MORE, said + "; the incumbent moved: another look on it")


# -- a candidate's screen and confirmations ---------------------------------------------
@dataclass(frozen=True)
class Reference:
    """What a candidate is judged against: the estimate of the commit it must beat."""

    metric: float
    runs: float  # how many runs the estimate stands on
    sigma: float  # the seed noise at its level
    offsets: dict[str, float]  # hardware class offsets (the baseline's)
    counts: dict[str, int]  # baseline runs per class (the offsets' own error)
    diverging: bool = False  # the baseline's own runs diverged: a diverged screen runs again


def diverging(base: Baseline, direction: Direction) -> bool:
    """Whether the target's own runs diverge now and then: one of the baseline's ended
    DIVERGED_SIGMAS·σ worse than their mean (a Gaussian target's 24 runs do so 1.6% of the
    time). On such a target a candidate's screen that diverged says little of it."""
    values, noise = base.values, base.noise
    return len(
        steady(values, incumbent=noise.center, sigma=noise.sigma, direction=direction)
    ) < len(values)


def runs_behind(ref: Reference, runs: Sequence[Trial]) -> float:
    """How many runs the reference's estimate is worth against these runs: fewer when they
    sit on classes whose offsets the baseline measured from few runs."""
    classes = [c for _, _, c in runs_of(runs) if c in ref.offsets][1:]  # the screen only gates
    extra = offset_error(classes, ref.counts)
    return ref.runs if not extra else 1 / (1 / max(ref.runs, 1) + extra)


def place(runs: Sequence[Trial], offsets: dict[str, float]) -> list[float]:
    """The ok runs' metrics on the baseline's scale (farm.merge.classes.placed)."""
    ok = runs_of(runs)
    return placed([v for _, v, _ in ok], [c for _, _, c in ok], offsets)


def by_class(runs: Sequence[Trial], offsets: dict[str, float]) -> str:
    """What a reason says of a mixed fleet: the runs per class and the offsets used."""
    if len(offsets) < 2:
        return ""
    count = collections.Counter(c for _, _, c in runs_of(runs) if c in offsets)
    said = "; on the baseline's scale: " + ", ".join(
        f"{n} on {c or 'unknown'} ({offsets[c]:+.3g})" for c, n in sorted(count.items())
    )
    prefer = next((x.prefer for x in runs if x.prefer), "")
    return said + (f"; re-runs asked for {prefer}, its reference's class" if prefer else "")


def unplaced(runs: Sequence[Trial], offsets: dict[str, float]) -> str:
    odd = sorted({c for _, _, c in runs_of(runs) if c not in offsets})
    return (
        f"{len(runs)} runs, most on hardware the baseline did not run on twice "
        f"({', '.join(c or 'unknown' for c in odd)}): it cannot be compared there; "
        f"the baseline ran on {', '.join(c or 'unknown' for c in sorted(offsets))}"
    )


def screened_ruling(
    runs: Sequence[Trial],
    ref: Reference | None,
    *,
    stages: int,
    m: MergeConfig,
    t: Target,
    gate: Verdict | None = None,
) -> Ruling:
    """A new candidate's screen, then its confirmations in order (as many as exist), judged
    as they came in: the screen first earns confirmations (its paired `gate`, if any), then
    the sequential test looks after each (farm.merge.sequential). WAIT while the next run
    is out; MORE when one more confirmation is needed (a run on hardware without an offset
    is run again); FAIL at the first failed run; KEEP (values: its confirmations) or
    DISCARD. With no reference yet (the baseline is still running) only a failure rules."""
    for k in range(1, len(runs) + 1):
        seen, last = runs[:k], runs[k - 1]
        if not last.state.is_finished():
            return Ruling(Act.WAIT)
        failed = failure(last, f"confirmation run {k - 1}" if k > 1 else "screening run", t)
        if failed:
            return Ruling(Act.FAIL, failed)
        if ref is None:
            return Ruling(Act.WAIT)
        values = place(seen, ref.offsets)
        if k - len(values) > stages:
            return Ruling(Act.DISCARD, unplaced(seen, ref.offsets))
        if k - len(values) and not place([last], ref.offsets):
            if k == len(runs):  # another run, on comparable hardware
                return Ruling(Act.MORE)
            continue
        if k == 1 and len(runs) > 1:
            continue  # the screen passed its gate when it was judged
        keep, verdict = sequential(
            values,
            m=m,
            stages=stages,
            incumbent=ref.metric,
            incumbent_runs=runs_behind(ref, seen),
            sigma=ref.sigma,
            direction=t.direction,
            gate=gate if k == 1 else None,
            diverging=ref.diverging,
        )
        if keep is None:
            if k == len(runs):
                return Ruling(Act.MORE, verdict=verdict)
            continue
        repeats = values[1:]  # its level, for σ (the screen passed a gate)
        if keep:
            return Ruling(Act.KEEP, verdict=verdict, values=repeats)
        how = f"after {len(repeats)} confirmations" if repeats else "screen"
        if gate and not repeats:
            how += f", paired with {last.partner} (the same seed)"
        reason = f"{how}: " + verdict.describe(t.metric) + by_class(seen, ref.offsets)
        return Ruling(Act.DISCARD, reason, verdict=verdict, values=repeats)
    return Ruling(Act.WAIT)


def rebased_ruling(runs: Sequence[Trial], ref: Reference, m: MergeConfig, t: Target) -> Ruling:
    """A winner re-applied on a newer incumbent: all its re-runs there, judged against `z`."""
    if not finished(runs):
        return Ruling(Act.WAIT)
    for i, trial in enumerate(runs):
        failed = failure(trial, f"confirmation run {i + 1}", t)
        if failed:
            return Ruling(Act.FAIL, failed)
    values = place(runs, ref.offsets)
    verdict = judge(
        values,
        incumbent=ref.metric,
        incumbent_runs=ref.runs,
        sigma=ref.sigma,
        direction=t.direction,
        z=m.z,
        dof=dof_of(m),
        min_delta=smallest_delta(m, ref.metric),
    )
    if verdict.passed:
        return Ruling(Act.KEEP, verdict=verdict, values=values)
    reason = "rebased, its re-runs did not hold up: " + verdict.describe(t.metric)
    return Ruling(Act.DISCARD, reason, verdict=verdict, values=values)


# -- a keep merged untried --------------------------------------------------------------
def measured_ruling(runs: Sequence[Trial], offsets: dict[str, float], t: Target) -> Ruling:
    """The runs measuring a keep merged onto the incumbent on the evidence it had. PASS with
    their mean once they are in and at least half of them gave a metric; FAIL when more
    than half failed: a commit that does not run within its budget is no incumbent, and an
    estimate from one lucky run would raise the bar for everything after it."""
    if not finished(runs):
        return Ruling(Act.WAIT)
    values = place(runs, offsets)
    if 2 * len(values) < len(runs) or not values:
        failed = [failure(x, f"measuring run {i}", t) for i, x in enumerate(runs)]
        said = "; ".join(f for f in failed if f) or "its runs ran on hardware without an offset"
        return Ruling(
            Act.FAIL, f"{len(runs) - len(values)} of {len(runs)} measuring runs failed: {said}"
        )
    return Ruling(Act.PASS, values=values)


def few_runs(runs: float, wanted: int) -> str:
    """What a decision says of a reference that stands on too little: an estimate not yet
    measured, or one run where the campaign asks for more (`wanted`)."""
    if runs == 0:
        return "; its reference is an estimate, not yet measured"
    if runs >= min(2, wanted):
        return ""
    return f"; its reference stands on {runs:g} run (the campaign asks for {wanted})"


# -- a store behind the best branch -----------------------------------------------------
def lost_keeps(ahead: Sequence[tuple[int | None, bool]]) -> list[int] | None:
    """The best branch is ahead of the store's incumbent by these commits, oldest first:
    each the candidate whose farm commit it is (None: not farm's) and whether the store has
    a decision for that candidate. Farm's own commits of candidates the store has not
    decided mean the store lost writes (rolled back: a Redis restarted from an old
    snapshot, a restored backup): they were kept, and are to be recorded kept again, never
    thrown away. Anything else (None) was not farm's doing."""
    if not ahead or any(cand is None or decided for cand, decided in ahead):
        return None
    return [cand for cand, _ in ahead if cand is not None]
