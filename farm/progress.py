"""What a person sees of a campaign: a live line while it runs, `farm status` at any time.

Everything is read from the store, so it works from any machine that reaches it.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

from farm.records import (
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Direction,
    Trial,
    TrialKind,
    TrialState,
)
from farm.store import Store
from farm.text import clean_line

DEAD = "dead"  # the outcome of a trial whose infrastructure kept failing


@dataclass
class Point:
    """One finished trial; `n` numbers trials in the order their results came in."""

    n: int
    kind: TrialKind
    outcome: str  # an Outcome value, or DEAD
    metric: float | None
    candidate_id: int | None
    kept: bool  # its candidate was kept


@dataclass
class History:
    """The campaign as a sequence: every finished trial, and the running best."""

    direction: Direction
    points: list[Point]
    # (trial number, the incumbent's estimate from then on): the baseline, then each keep.
    best: list[tuple[int, float]]
    kept: list[tuple[int, Decision]]  # each keep, at the trial number it happened


def history(
    trials: list[Trial], decisions: list[Decision], *, start_sha: str, direction: Direction
) -> History:
    def finished_at(t: Trial) -> float:
        return t.result.finished_at if t.result else t.lease_expires

    done = sorted((t for t in trials if t.result or t.state is TrialState.DEAD), key=finished_at)
    kept_ids = {d.candidate_id for d in decisions if d.kind is DecisionKind.KEPT}
    points = [
        Point(
            n=i,
            kind=t.kind,
            outcome=t.result.outcome.value if t.result else DEAD,
            metric=t.result.metric if t.result else None,
            candidate_id=t.candidate_id,
            kept=t.candidate_id in kept_ids,
        )
        for i, t in enumerate(done, start=1)
    ]
    times = [finished_at(t) for t in done]
    best: list[tuple[int, float]] = []
    base = [
        (p.n, p.metric)
        for p, t in zip(points, done, strict=True)
        if p.kind is TrialKind.BASELINE and t.commit_sha == start_sha and p.metric is not None
    ]
    if base:
        best.append((max(n for n, _ in base), sum(m for _, m in base) / len(base)))
    kept = []
    for d in decisions:
        if d.kind is DecisionKind.KEPT and d.metric is not None:
            n = max(1, bisect.bisect_right(times, d.created_at))
            kept.append((n, d))
            best.append((n, d.metric))
    return History(direction=direction, points=points, best=best, kept=kept)


@dataclass
class Snapshot:
    campaign: str
    metric: str
    trial_states: dict[TrialState, int]
    outcomes: dict[str, int]
    candidates: dict[str, int]
    incumbent_sha: str
    incumbent_metric: float | None
    start_metric: float | None
    sigma: float | None
    decisions: list[Decision]
    titles: dict[int, str]
    history: History
    # A failed candidate's outcome (no_metric, timeout, tampered...): its decision says
    # `crashed` for every way a trial can fail; these say which.
    failures: dict[int, str] = field(default_factory=dict)

    def label(self, d: Decision) -> str:
        """What became of the candidate: its decision, or how its failed trial ended."""
        return self.failures.get(d.candidate_id, d.kind.value)

    def candidate_counts(self) -> str:
        """`crashed 3 (no_metric 2, timeout 1), discarded 4, kept 1`, or `none`."""
        failed = collections.Counter(self.failures.values())
        parts = []
        for state, n in sorted(self.candidates.items()):
            detail = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
            parts.append(
                f"{state} {n} ({detail})"
                if state == DecisionKind.CRASHED.value and failed
                else f"{state} {n}"
            )
        return ", ".join(parts) or "none"


def snapshot(store: Store, campaign: str) -> Snapshot:
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    trials = store.list_trials(campaign)
    outcomes = collections.Counter(t.result.outcome.value for t in trials if t.result)
    cands = store.list_candidates(campaign)
    decisions = store.list_decisions(campaign)
    inc = store.get_incumbent(campaign)
    by_candidate: dict[int | None, list[Trial]] = collections.defaultdict(list)
    for t in trials:
        by_candidate[t.candidate_id].append(t)
    base_ok = [
        t.result.metric
        for t in trials
        if t.commit_sha == camp.start_sha
        and t.candidate_id is None
        and t.result
        and t.result.metric is not None
    ]
    return Snapshot(
        campaign=campaign,
        metric=str(camp.config.get("metric", "metric")),
        trial_states=collections.Counter(t.state for t in trials),
        outcomes=dict(outcomes),
        candidates=dict(collections.Counter(c.state.value for c in cands)),
        incumbent_sha=inc.sha,
        incumbent_metric=inc.metric,
        start_metric=sum(base_ok) / len(base_ok) if base_ok else None,
        sigma=camp.sigma,
        decisions=decisions,
        titles={c.id: clean_line(c.title) for c in cands},
        failures={
            d.candidate_id: failure_outcome(by_candidate.get(d.candidate_id, []))
            for d in decisions
            if d.kind is DecisionKind.CRASHED
        },
        history=history(
            trials,
            decisions,
            start_sha=camp.start_sha,
            direction=Direction(camp.config.get("direction", "minimize")),
        ),
    )


def plural(n: int, word: str) -> str:
    """`1 slot`, `2 slots`, `0 slots`."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.5g}"


def status_line(s: Snapshot, *, slots: int, busy: int, elapsed_s: float) -> str:
    m, sec = divmod(int(elapsed_s), 60)
    h, m = divmod(m, 60)
    done = s.trial_states.get(TrialState.DONE, 0)
    outcome = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())) or "none yet"
    cand = ", ".join(
        f"{s.candidates.get(state.value, 0)} {state.value}"
        for state in (
            CandidateState.KEPT,
            CandidateState.DISCARDED,
            CandidateState.CRASHED,
            CandidateState.REJECTED,
            CandidateState.RUNNING,
            CandidateState.QUEUED,
        )
        if s.candidates.get(state.value)
    )
    return (
        f"[{h:d}:{m:02d}:{sec:02d}] slots {busy}/{slots} busy | trials {done} done ({outcome}), "
        f"{s.trial_states.get(TrialState.QUEUED, 0)} queued | candidates: {cand or 'none yet'} | "
        f"{s.metric} {_num(s.incumbent_metric)} (start {_num(s.start_metric)}, σ {_num(s.sigma)})"
    )


def failure_outcome(trials: list[Trial]) -> str:
    """How the first failed trial of a candidate ended (an Outcome value, or `dead`)."""
    for t in trials:
        if t.state is TrialState.DEAD:
            return DEAD
        if t.result is not None and not t.result.outcome.is_ok():
            return t.result.outcome.value
    return DecisionKind.CRASHED.value


def decision_line(d: Decision, cand: Candidate | None, metric: str, *, label: str = "") -> str:
    title = clean_line(cand.title) if cand else ""
    detail = ""
    if d.kind is DecisionKind.KEPT and d.metric is not None:
        detail = f" -> {metric} {d.metric:.5g}"
    label = label or d.kind.value
    reason = clean_line(d.reason)
    return f"  c{d.candidate_id:<4} {label.upper():<10} {title}{detail}\n         {reason}"


def decision_text(store: Store, campaign: str, d: Decision, metric: str) -> str:
    """The decision as `farm run` prints it when it is made, naming a failure's outcome."""
    label = ""
    if d.kind is DecisionKind.CRASHED:
        label = failure_outcome(store.list_trials(campaign, candidate_id=d.candidate_id))
    return decision_line(d, store.get_candidate(campaign, d.candidate_id), metric, label=label)


def status_report(s: Snapshot, *, last: int = 10) -> str:
    lines = [
        f"campaign {s.campaign}",
        f"  incumbent {s.incumbent_sha[:10]}  {s.metric} {_num(s.incumbent_metric)} "
        f"(start {_num(s.start_metric)}, baseline σ {_num(s.sigma)})",
        "  trials: "
        + ", ".join(f"{st.value} {s.trial_states.get(st, 0)}" for st in TrialState)
        + " | outcomes: "
        + (", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())) or "none"),
        "  candidates: " + s.candidate_counts(),
        *picture(s.history, s.metric),
    ]
    kept = [d for d in s.decisions if d.kind is DecisionKind.KEPT]
    if kept:
        lines.append("  kept, in order:")
        for d in kept:
            delta = f"Δ {d.delta:+.4g}" if d.delta is not None else ""
            lines.append(
                f"    c{d.candidate_id} {s.titles.get(d.candidate_id, '')}: "
                f"{s.metric} {_num(d.metric)} {delta}"
            )
    if s.decisions:
        lines.append(f"  last {min(last, len(s.decisions))} decisions:")
        for d in s.decisions[-last:]:
            lines.append(
                f"    c{d.candidate_id:<4} {s.label(d):<14} "
                f"{s.titles.get(d.candidate_id, '')[:50]:<50} {clean_line(d.reason)[:90]}"
            )
    return "\n".join(lines)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[round((v - lo) / span * (len(SPARK) - 1))] for v in values)


def picture(h: History, metric: str, *, width: int = 40) -> list[str]:
    """The running best as a sparkline, and the latest trials one character each."""
    if not h.points:
        return []
    lines = []
    if h.best:
        first, last = h.best[0][0], h.points[-1].n
        # The best sampled at `width` evenly spaced trial numbers, from the baseline on.
        xs = [first + (last - first) * i / (width - 1) for i in range(width)]
        values = [[v for n, v in h.best if n <= x][-1] for x in xs]
        better = "lower" if h.direction is Direction.MINIMIZE else "higher"
        lines.append(
            f"  best {metric}: {_num(h.best[0][1])} {sparkline(values)} {_num(h.best[-1][1])} "
            f"(trials {first}–{last}, {len(h.kept)} kept, {better} is better)"
        )
    recent = h.points[-width:]
    lines.append(
        f"  last {len(recent)} trials: {''.join(_mark(p) for p in recent)} "
        "(b baseline, · ok, ✓ kept candidate, ✗ failed)"
    )
    return lines


def _mark(p: Point) -> str:
    if p.outcome != "ok":
        return "✗"
    if p.kind is TrialKind.BASELINE:
        return "b"
    return "✓" if p.kept else "·"
