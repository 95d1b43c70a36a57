"""Reports from the ledger: autoresearch's results.tsv (farm's columns after its own), the
per-proposer comparison of `farm report --by proposer`, and report.md of `farm report --out`."""

from __future__ import annotations

import collections
import csv
import difflib
import io
from dataclasses import dataclass

from farm.config import stored_config
from farm.progress import plural
from farm.records import (
    Candidate,
    CandidateState,
    DecisionKind,
    Direction,
    ProposerCall,
    Trial,
    TrialKind,
)
from farm.store import Store
from farm.store.stats import ProposerTally, llm_spend
from farm.text import clean_line
from proposer.base import usd

# autoresearch's results.tsv: commit, <metric>, memory_gb, status, description.
_STATUS = {
    DecisionKind.KEPT: "keep",
    DecisionKind.DISCARDED: "discard",
    DecisionKind.CRASHED: "crash",
    DecisionKind.REJECTED: "rejected",
    DecisionKind.SUPERSEDED: "superseded",
}
FARM_COLUMNS = [
    "candidate",
    "trial",
    "kind",
    "seed",
    "outcome",
    "duration_s",
    "hardware",
    "delta",
    "sigma",
    "reason",
]


def export_tsv(store: Store, campaign: str) -> str:
    """One row per trial (a rejected draft: one row with no trial), oldest first. A metric or
    memory that was not measured is left empty, never written as 0."""
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    metric = stored_config(camp.config).metric
    decisions = {d.candidate_id: d for d in store.list_decisions(campaign)}
    cands = {c.id: c for c in store.list_candidates(campaign)}
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["commit", metric, "memory_gb", "status", "description", *FARM_COLUMNS])
    for t in store.list_trials(campaign):
        r = t.result
        d = decisions.get(t.candidate_id) if t.candidate_id is not None else None
        cand = cands.get(t.candidate_id) if t.candidate_id is not None else None
        if t.kind is TrialKind.BASELINE:
            status, description = "baseline", "baseline"
        else:
            status = _STATUS[d.kind] if d else "running"
            if cand and cand.state is CandidateState.REVERTED:
                status = "discard"  # kept, then undone: its own runs could not measure it
            description = clean_line(cand.title) if cand else ""
        # No number where nothing was measured (a queued or failed trial, no memory line).
        mem_mb = r.summary.get("peak_vram_mb") if r else None
        w.writerow(
            [
                t.commit_sha[:7],
                f"{r.metric:.6f}" if r and r.metric is not None else "",
                f"{mem_mb / 1024:.1f}" if mem_mb is not None else "",
                status,
                description,
                t.candidate_id if t.candidate_id is not None else "",
                t.id,
                t.kind.value,
                t.seed,
                r.outcome.value if r else t.state.value,
                f"{r.duration_s:.1f}" if r else "",
                r.hardware if r else "",
                f"{d.delta:.6g}" if d and d.delta is not None else "",
                f"{d.sigma:.6g}" if d and d.sigma is not None else "",
                clean_line(d.reason) if d else "",
            ]
        )
    for c in cands.values():
        d = decisions.get(c.id)
        if d is not None and d.kind is DecisionKind.REJECTED:
            w.writerow(
                [
                    c.base_sha[:7],
                    "",
                    "",
                    "extra" if c.extra else "rejected",  # an extra was never a failure
                    clean_line(c.title),
                    c.id,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    clean_line(d.reason),
                ]
            )
    return buf.getvalue()


@dataclass
class ProposerRow:
    """One group of candidates of `farm report --by ...`: its key cells, then the measures."""

    key: list[str]  # proposer, strategy, model (--by proposer) or as KEY_COLUMNS says
    drafts: int = 0
    valid: int = 0
    kept: int = 0
    trials: int = 0
    slot_hours: float = 0.0  # training time of its trials (GPU-hours on a GPU farm)
    gain: float = 0.0  # sum of kept improvements, in metric units (positive = better)
    best_delta: float | None = None
    cost_usd: float = 0.0

    def cells(self) -> list[str]:
        def pct(n: int, d: int) -> str:
            return f"{100 * n / d:.0f}%" if d else "—"

        def per(x: float, d: float) -> str:
            return f"{x / d:.4g}" if d else "—"

        return [
            *(k or "—" for k in self.key),
            str(self.drafts),
            pct(self.valid, self.drafts),
            pct(self.kept, self.valid),
            "—" if self.best_delta is None else f"{self.best_delta:+.4g}",
            per(self.gain, self.trials),
            per(self.gain, self.slot_hours),
            f"${self.cost_usd:.2f}",
            f"${self.cost_usd / self.kept:.2f}" if self.kept else "—",
            per(self.gain, self.cost_usd),
        ]


# The grouping of `farm report --by <key>`: which strategy or batch size gave more gain per
# slot-hour and per dollar is what `farm simulate` and a campaign's [proposer] tune.
KEY_COLUMNS = {
    "proposer": ["proposer", "strategy", "model"],
    "strategy": ["proposer", "strategy"],
    "batch": ["proposer", "batch size"],
}
MEASURE_COLUMNS = [
    "drafts",
    "valid",
    "kept",
    "best Δ",
    "gain/trial",
    "gain/slot-hour",
    "cost",
    "cost/kept",
    "gain/$",
]
PROPOSER_COLUMNS = KEY_COLUMNS["proposer"] + MEASURE_COLUMNS


def _key(by: str, proposer: str, strategy: str, model: str, batch: str) -> list[str]:
    proposer = proposer or "unknown"
    if by == "strategy":
        return [proposer, strategy]
    if by == "batch":
        return [proposer, batch]
    return [proposer, strategy, model]


def _keys(cands: list[Candidate], by: str) -> dict[int, list[str]]:
    """Each candidate's group under `by`. A batch's size is what its call asked for (rows
    from before it was recorded: how many drafts share its batch id)."""
    shared = collections.Counter(c.batch_id for c in cands)
    return {
        c.id: _key(by, c.proposer, c.strategy, c.model, str(c.batch_size or shared[c.batch_id]))
        for c in cands
    }


def attributed_costs(cands: list[Candidate], calls: list[ProposerCall]) -> dict[int, float]:
    """What each candidate cost in LLM spend: its share of the call that brought it, and a
    structural change's cost (hybrid) shared with the tuning candidates it spawned, which
    no call brought. A call that brought no candidate is in no candidate's cost."""
    paid = {call.id: call.cost_usd for call in calls}
    brought = collections.Counter(c.call for c in cands if c.call)
    cost = {c.id: paid.get(c.call, 0.0) / brought[c.call] if c.call else 0.0 for c in cands}
    family: dict[int, list[int]] = collections.defaultdict(list)
    for c in cands:
        if c.parent is not None and c.parent in cost:
            family[c.parent].append(c.id)
    for parent, children in family.items():
        share = cost[parent] / (len(children) + 1)
        for cid in [parent, *children]:
            cost[cid] = share if cid == parent else cost[cid] + share
    return cost


def proposer_rows(store: Store, campaign: str, *, by: str = "proposer") -> list[ProposerRow]:
    """Per group (`by`: proposer, strategy or batch): how many drafts, how good, how costly.
    The costs add up to the campaign's LLM spend: a call that brought no draft (a failure)
    counts in its group's cost."""
    decisions = {d.candidate_id: d for d in store.list_decisions(campaign)}
    trials_of: dict[int, list[Trial]] = {}
    for t in store.list_trials(campaign):
        if t.candidate_id is not None:
            trials_of.setdefault(t.candidate_id, []).append(t)
    cands = store.list_candidates(campaign)
    calls = store.list_calls(campaign)
    keys = _keys(cands, by)
    cost = attributed_costs(cands, calls)
    rows: dict[tuple[str, ...], ProposerRow] = {}
    brought = {c.call for c in cands}
    for call in calls:
        if call.id not in brought:
            key = _key(by, call.proposer, call.strategy, call.model, str(call.batch_size))
            rows.setdefault(tuple(key), ProposerRow(key)).cost_usd += call.cost_usd
    for c in cands:
        row = rows.setdefault(tuple(keys[c.id]), ProposerRow(keys[c.id]))
        row.drafts += 1
        row.cost_usd += cost[c.id]
        if c.state is not CandidateState.REJECTED:
            row.valid += 1
        runs = trials_of.get(c.id, [])
        row.trials += len(runs)
        row.slot_hours += sum(t.result.duration_s for t in runs if t.result) / 3600
        d = decisions.get(c.id)
        if d is not None and d.kind is DecisionKind.KEPT:
            row.kept += 1
            row.gain += d.delta or 0.0
        if d is not None and d.delta is not None and d.kind is not DecisionKind.REJECTED:
            row.best_delta = d.delta if row.best_delta is None else max(row.best_delta, d.delta)
    return sorted(rows.values(), key=lambda r: (-r.gain, r.key))


def proposer_table(store: Store, campaign: str, *, by: str = "proposer") -> str:
    """`farm report --by proposer|strategy|batch` as a Markdown table."""
    columns = KEY_COLUMNS[by] + MEASURE_COLUMNS
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in proposer_rows(store, campaign, by=by)]
    return "\n".join(lines)


def spend_text(llm: ProposerTally) -> str:
    """`$0.42 in 7 calls (1 failed), 12345 tokens in, 3210 out, $0.05 held in flight`: the
    campaign's LLM spend as report.md, `farm status` and the live view say it."""
    failed = f" ({llm.failed_calls} failed)" if llm.failed_calls else ""
    held = f", {usd(llm.held_usd)} held for {llm.in_flight} in flight" if llm.in_flight else ""
    return (
        f"{usd(llm.cost_usd)} in {plural(llm.calls, 'call')}{failed}, {llm.tokens_in} tokens "
        f"in, {llm.tokens_out} out{held}"
    )


def edit_diff(cand: Candidate) -> str:
    """The candidate's edits as a unified diff of each file it changes.

    The file before is rebuilt by undoing the edits on the candidate's text; where an
    edit's result is not unique in the file, the diff shows the edited blocks alone.
    """
    parts: list[str] = []
    for path in dict.fromkeys(e.path for e in cand.edits):
        edits = [e for e in cand.edits if e.path == path]
        new = cand.files.get(path, "")
        old: str | None = new
        for e in reversed(edits):
            if old is not None and not e.search:
                old = ""  # the edit created the file
            elif old is not None and e.replace and old.count(e.replace) == 1:
                old = old.replace(e.replace, e.search)
            else:
                old = None
        if old is None:
            old, new = "".join(e.search for e in edits), "".join(e.replace for e in edits)
        parts += difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"a/{path}",
            f"b/{path}",
            n=2,
        )
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def _candidate_counts(states: collections.Counter[str], failed: collections.Counter[str]) -> str:
    """`crashed 3 (no_metric 2, timeout 1), discarded 4, kept 1`."""
    detail = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
    return ", ".join(
        f"{state} {n} ({detail})"
        if state == CandidateState.CRASHED.value and detail
        else f"{state} {n}"
        for state, n in sorted(states.items())
    )


def report_markdown(store: Store, campaign: str, *, image: str = "progress.png") -> str:
    """report.md: the result, kept changes in order with diffs, outcomes, cost, proposers."""
    from farm.progress import (
        baseline_noise,
        failure_outcome,
        full_history,
        short_screens,
        snapshot,
    )

    s = snapshot(store, campaign, last=0, results=0)
    camp = store.get_campaign(campaign)
    assert camp is not None
    h = full_history(store, campaign)
    finished = collections.Counter(p.outcome for p in h.points)
    cands = {c.id: c for c in store.list_candidates(campaign)}
    states = collections.Counter(c.state.value for c in cands.values())
    trials = store.list_trials(campaign)
    by_candidate = collections.defaultdict(list)
    for t in trials:
        by_candidate[t.candidate_id].append(t)
    # A crashed candidate's decision says `crashed` for every way a trial fails: say which.
    failed = collections.Counter(
        failure_outcome(by_candidate[c.id])
        for c in cands.values()
        if c.state is CandidateState.CRASHED
    )
    better = "lower" if h.direction is Direction.MINIMIZE else "higher"
    slot_h = sum(t.result.duration_s for t in trials if t.result) / 3600
    gpus = stored_config(camp.config).resources.gpus_per_trial
    llm = llm_spend(store.stats(campaign))

    def num(x: float | None) -> str:
        return "—" if x is None else f"{x:.5g}"

    base_runs = camp.baseline_runs  # the runs the rule kept (outliers out)
    screens = short_screens(store, campaign)
    gain = (
        h.direction.improvement(old=s.start_metric, new=s.incumbent_metric)
        if s.start_metric is not None and s.incumbent_metric is not None
        else None
    )
    lines = [
        f"# farm report: campaign `{campaign}`",
        "",
        f"Target `{camp.target}`, metric `{s.metric}` ({better} is better).",
        "",
        f"![progress]({image})",
        "",
        "| | |",
        "|---|---|",
        f"| start | {num(s.start_metric)} (baseline mean of {base_runs} runs, "
        f"σ {num(s.baseline_sigma)}) |",
        f"| baseline | {baseline_noise(store, campaign) or '—'} |",
        *([f"| short screens | {screens} |"] if screens else []),
        f"| incumbent | {num(s.incumbent_metric)} (`{s.incumbent_sha[:10]}`"
        + (", estimated, not measured" if s.estimated else f", {s.incumbent_runs} runs")
        + ") |",
        f"| improvement | {'—' if gain is None else f'{gain:+.5g}'} |",
        f"| trials | {len(h.points)} finished"
        + "".join(f", {k} {v}" for k, v in sorted(finished.items()) if k != "dead")
        + " |",
        f"| candidates | {len(cands)}"
        + (f": {_candidate_counts(states, failed)}" if cands else "")
        + " |",
        f"| slot-hours | {slot_h:.3g}"
        + (f" ({slot_h * gpus:.3g} GPU-hours)" if gpus else " (CPU trials)")
        + " |",
        f"| LLM | {spend_text(llm)} |",
        "",
        "## Kept changes, in order",
        "",
    ]
    if not h.kept:
        lines += ["None: no candidate beat the incumbent by more than the noise.", ""]
    for i, (n, d) in enumerate(h.kept, start=1):
        cand = cands.get(d.candidate_id)
        title = clean_line(cand.title) if cand else ""
        delta = "—" if d.delta is None else f"{d.delta:+.5g}"
        lines += [
            f"### {i}. c{d.candidate_id}: {title}",
            "",
            f"{s.metric} {num(d.metric)}, Δ {delta} ± {num(d.sigma)} (σ), kept at trial {n}. "
            + clean_line(d.reason),
            "",
        ]
        if cand is not None:
            if cand.hypothesis and cand.hypothesis != title:
                lines += [f"> {clean_line(cand.hypothesis)}", ""]
            lines += ["```diff", edit_diff(cand).rstrip("\n"), "```", ""]

    kinds = [k for k in TrialKind if any(p.kind is k for p in h.points)]
    outcomes = sorted({p.outcome for p in h.points})
    counts = collections.Counter((p.kind, p.outcome) for p in h.points)
    lines += [
        "## Trials by kind and outcome",
        "",
        "| kind | " + " | ".join(outcomes) + " |",
        "|---|" + "---|" * len(outcomes),
        *(
            f"| {k.value} | " + " | ".join(str(counts[k, o]) for o in outcomes) + " |"
            for k in kinds
        ),
        "",
        "## Proposers",
        "",
        proposer_table(store, campaign),
        "",
    ]
    return "\n".join(lines)
