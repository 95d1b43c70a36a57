"""Exports of the ledger: autoresearch's results.tsv, with farm's columns after its own."""

from __future__ import annotations

import csv
import io

from farm.records import DecisionKind, TrialKind
from farm.store import Store

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
    """One row per trial (a rejected draft: one row with no trial), oldest first."""
    camp = store.get_campaign(campaign)
    if camp is None:
        raise KeyError(campaign)
    metric = str(camp.config.get("metric", "metric"))
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
            description = cand.title if cand else ""
        mem_mb = r.summary.get("peak_vram_mb", 0.0) if r else 0.0
        w.writerow(
            [
                t.commit_sha[:7],
                f"{r.metric:.6f}" if r and r.metric is not None else "0.000000",
                f"{mem_mb / 1024:.1f}",
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
                d.reason if d else "",
            ]
        )
    for c in cands.values():
        d = decisions.get(c.id)
        if d is not None and d.kind is DecisionKind.REJECTED:
            w.writerow(
                [
                    c.base_sha[:7],
                    "0.000000",
                    "0.0",
                    "rejected",
                    c.title,
                    c.id,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    d.reason,
                ]
            )
    return buf.getvalue()
