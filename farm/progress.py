"""What a person sees of a campaign: a live line while it runs, `farm status` at any time.

Everything is read from the store, so it works from any machine that reaches it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from farm.records import Candidate, CandidateState, Decision, DecisionKind, TrialState
from farm.store import Store


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


def snapshot(store: Store, campaign: str) -> Snapshot:
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    trials = store.list_trials(campaign)
    outcomes = collections.Counter(t.result.outcome.value for t in trials if t.result)
    cands = store.list_candidates(campaign)
    decisions = store.list_decisions(campaign)
    inc = store.get_incumbent(campaign)
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
        titles={c.id: c.title for c in cands},
    )


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


def decision_line(d: Decision, cand: Candidate | None, metric: str) -> str:
    title = cand.title if cand else ""
    detail = ""
    if d.kind is DecisionKind.KEPT and d.metric is not None:
        detail = f" -> {metric} {d.metric:.5g}"
    return f"  c{d.candidate_id:<4} {d.kind.value.upper():<10} {title}{detail}\n         {d.reason}"


def status_report(s: Snapshot, *, last: int = 10) -> str:
    lines = [
        f"campaign {s.campaign}",
        f"  incumbent {s.incumbent_sha[:10]}  {s.metric} {_num(s.incumbent_metric)} "
        f"(start {_num(s.start_metric)}, baseline σ {_num(s.sigma)})",
        "  trials: "
        + ", ".join(f"{st.value} {s.trial_states.get(st, 0)}" for st in TrialState)
        + " | outcomes: "
        + (", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items())) or "none"),
        "  candidates: "
        + (", ".join(f"{k} {v}" for k, v in sorted(s.candidates.items())) or "none"),
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
                f"    c{d.candidate_id:<4} {d.kind.value:<10} "
                f"{s.titles.get(d.candidate_id, '')[:50]:<50} {d.reason[:90]}"
            )
    return "\n".join(lines)
