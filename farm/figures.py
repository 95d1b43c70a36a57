"""The incumbent's line and the σ in force, derived once for every view: `farm status`,
the live view, the report, progress.png and the prompt read the line, they and the metrics
read the σ, so none can disagree with another or with the merge rule.

Each incumbent stands at the value the rule itself uses for it now (farm.evidence): the
baseline's centre (outliers out) for the start commit; a keep's confirmations; and for a
keep merged untried, its measuring runs once they are in (until then its estimate, marked
as such). A keep that was reverted is no step of the line.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.config import stored_config
from farm.evidence import Evidence
from farm.records import Campaign, CandidateState, Decision, DecisionKind, Incumbent
from farm.store import Store
from farm.store.stats import CampaignStats


@dataclass(frozen=True)
class Step:
    """One incumbent of the campaign's line."""

    at: float  # when it became the incumbent
    candidate_id: int | None  # None: the start commit
    metric: float
    runs: int  # the runs its value stands on; 0: estimated, not measured

    @property
    def estimated(self) -> bool:
        return self.runs == 0


def line(
    store: Store,
    camp: Campaign,
    kept: list[Decision],
    inc: Incumbent,
    *,
    evidence: Evidence | None = None,
) -> list[Step]:
    """The incumbents in order, from the start commit (once the baseline is in) to `inc`,
    each at its value as the rule has it now. `kept`: the campaign's keep decisions.
    `evidence`: one kept across calls (`evidence_of`), so that what cannot change (finished
    runs, keep decisions) is read once, not once per keep and call."""
    if camp.baseline_metric is None:
        return []
    steps = [Step(camp.created_at, None, camp.baseline_metric, camp.baseline_runs)]
    # The few reverted by index, not every keep's record with its files.
    reverted = {c.id for c in store.list_candidates(camp.id, {CandidateState.REVERTED})}
    for d in kept:
        if d.kind is not DecisionKind.KEPT or d.candidate_id in reverted:
            continue
        if d.incumbent_after == inc.sha and inc.metric is not None:
            value, runs = inc.metric, inc.runs
        else:
            evidence = evidence or evidence_of(store, camp)
            was = evidence.estimate_of(d.incumbent_after, camp)
            if was.metric is None:
                continue
            value, runs = was.metric, was.runs
        steps.append(Step(d.created_at, d.candidate_id, value, runs))
    return steps


def evidence_of(store: Store, camp: Campaign) -> Evidence:
    """The evidence of a campaign as its stored config has it (what `line` reads)."""
    cfg = stored_config(camp.config)
    return Evidence(store=store, cfg=cfg, campaign=camp.id, start_sha=camp.start_sha)


def sigma_in_force(camp: Campaign, stats: CampaignStats) -> float | None:
    """The seed noise σ the rule judges with now: the latest decision's, the baseline's
    before any (None until the baseline is in)."""
    return stats.sigma if stats.sigma is not None else camp.sigma
