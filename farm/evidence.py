"""The evidence the merge rule is given: a campaign's runs as the store holds them.

Everything here reads; nothing decides. What cannot change once written (a finished
trial, a keep decision, the baseline) is read once per process and kept, so a step costs
what changed since the last one, not the size of the ledger.
"""

from __future__ import annotations

import dataclasses

from farm.config import TargetConfig
from farm.merge import Baseline, NoisePools, baseline, mean, runs_of
from farm.merge.verdicts import (
    Act,
    Reference,
    Ruling,
    Target,
    diverging,
    measured_ruling,
    place,
    reruns_per_candidate,
)
from farm.records import Campaign, Decision, DecisionKind, Incumbent, Trial, TrialKind, TrialState
from farm.store import Store
from farm.trials import RERUNS, baseline_ids, measure_id, screen_id


class Evidence:
    def __init__(self, *, store: Store, cfg: TargetConfig, campaign: str, start_sha: str) -> None:
        self.store = store
        self.cfg = cfg
        self.campaign = campaign
        self.start_sha = start_sha
        self._finished: dict[str, Trial] = {}  # a finished trial never changes again (no files)
        self._base: Baseline | None = None  # the baseline's summary, once it is in
        self._diverges: bool | None = None  # whether its runs diverged, once it is in
        self._kept: dict[str, Decision] = {}  # keep decisions by the incumbent they made
        self._replaced: set[str] = set()  # incumbents a keep in `_kept` replaced
        self._pools: NoisePools | None = None  # loaded at the first judgement
        self._classes: dict[str, str] = {}  # the hardware class of each reference's runs
        self._former: dict[str, Incumbent] = {}  # former incumbents' estimates, once final
        self._gains: dict[int, float | None] = {}  # judged candidates' screens' gains
        self._measuring: dict[str, int] = {}  # runs measuring each keep, by its commit

    # -- trials -----------------------------------------------------------------------------
    def trial(self, trial_id: str) -> Trial | None:
        """The trial with this id, if it exists (a finished one from memory)."""
        if trial_id in self._finished:
            return self._finished[trial_id]
        found = self.store.get_trial(self.campaign, trial_id)
        if found is not None and found.state.is_finished():  # kept without its files
            self._finished[trial_id] = found = dataclasses.replace(found, files={})
        return found

    def placed(self, trials: list[Trial]) -> list[float]:
        """The ok runs' metrics on the baseline's scale (farm.merge.verdicts.place)."""
        return place(trials, self.offsets())

    # -- the baseline -----------------------------------------------------------------------
    def baseline(self) -> Baseline | None:
        """The baseline's summary once it is in (read back from its trials after a restart)."""
        if self._base is None and self.baseline_done():
            found = [self.trial(i) for i in baseline_ids(self.cfg.merge.repeats)]
            self._base = baseline(runs_of([t for t in found if t is not None]), self.cfg.merge)
        return self._base

    def set_baseline(self, base: Baseline) -> None:
        self._base = base
        self.pool(self.start_sha, base.values, key="baseline")

    def baseline_done(self) -> bool:
        camp = self.store.get_campaign(self.campaign)
        return camp is not None and camp.sigma is not None

    def offsets(self) -> dict[str, float]:
        """Hardware class offsets measured on the baseline (none before it is in)."""
        base = self.baseline()
        return base.offsets if base else {}

    def confirm(self) -> int:
        """Confirmation runs per candidate (farm.merge.verdicts.reruns_per_candidate)."""
        return reruns_per_candidate(self.baseline(), self.cfg.merge)

    # -- references ---------------------------------------------------------------------------
    def reference(self, inc: Incumbent, camp: Campaign) -> Reference:
        """What a candidate written against `inc` is judged against."""
        assert inc.metric is not None
        base = self.baseline()
        return Reference(
            metric=inc.metric,
            runs=inc.runs,
            sigma=self.sigma_at(inc.sha, camp),
            offsets=self.offsets(),
            counts=base.counts if base else {},
            diverging=self._diverging(),
        )

    def _diverging(self) -> bool:
        """Whether the baseline's runs diverged now and then (farm.merge.verdicts.diverging)."""
        if self._diverges is None:
            base = self.baseline()
            if base is None:
                return False
            self._diverges = diverging(base, self.cfg.direction)
        return self._diverges

    def estimate_of(self, sha: str, camp: Campaign) -> Incumbent:
        """The metric estimate a former incumbent (one replaced since) had: its baseline, or
        its keep decision, or the runs that measured it."""
        if sha == camp.start_sha:
            return Incumbent(sha=sha, metric=camp.baseline_metric, runs=camp.baseline_runs)
        if sha in self._former:
            return self._former[sha]
        kept = self.kept_decision(sha)
        found = [self.trial(i) for i in self.measuring_ids(kept.candidate_id, sha)]
        measured = self._measured(found)
        if measured.act is Act.PASS:
            was = Incumbent(sha=sha, metric=mean(measured.values), runs=len(measured.values))
        else:
            was = Incumbent(sha=sha, metric=kept.metric, runs=self.confirm() or 1)
        # Measuring runs are made for the incumbent only (Incumbency.measure): once a keep
        # has replaced it, none is made, so one measured, or replaced never measured, stays
        # as it is (`line` asked the store for every keep's measuring runs at every call;
        # the incumbent it was given may be older than the keeps it read).
        if measured.act is Act.PASS or (not any(found) and sha in self._replaced):
            self._former[sha] = was
        return was

    def screen_gains(self) -> list[float]:
        """How much each judged candidate's screen improved on the reference its decision
        was made against (one run, before any test picked it): what candidates gain, and
        how far that varies. Decisions are final: each is read once."""
        kinds = {DecisionKind.KEPT, DecisionKind.DISCARDED}
        for d in self.store.list_decisions(self.campaign, kinds=kinds):
            if d.candidate_id in self._gains:
                continue
            screen = self.trial(screen_id(d.candidate_id))
            placed = self.placed([screen]) if screen else []
            gain = None
            if placed and d.metric is not None and d.delta is not None:
                judged = self.cfg.direction.shift(d.metric, by=-d.delta)
                gain = self.cfg.direction.improvement(old=judged, new=placed[0])
            self._gains[d.candidate_id] = gain
        return [g for g in self._gains.values() if g is not None]

    def kept_decision(self, sha: str) -> Decision:
        """The keep that made `sha` the incumbent."""
        if sha not in self._kept:  # decisions are append-only: read them again only then
            self._kept = {
                d.incumbent_after: d
                for d in self.store.list_decisions(self.campaign, kinds={DecisionKind.KEPT})
            }
            self._replaced = {d.incumbent_before for d in self._kept.values()}
        return self._kept[sha]

    def parent(self, sha: str) -> str:
        """The incumbent the keep that made `sha` replaced."""
        return self.kept_decision(sha).incumbent_before

    def reruns(self, sha: str, kept: int | None = None) -> list[Trial]:
        """The re-runs of commit `sha` by the keep (of candidate `kept`, if its decision may
        not be written yet) that made it the incumbent (not its screen: that passed a gate,
        so it is biased)."""
        if kept is None:
            kept = self.kept_decision(sha).candidate_id
        return [
            t
            for t in self.store.list_trials(self.campaign, candidate_id=kept)
            if t.commit_sha == sha and t.kind in RERUNS
        ]

    def measuring_ids(self, candidate: int, sha: str) -> list[str]:
        """The runs measuring the keep of `candidate` that made `sha` the incumbent: one
        that won on its own runs (then measured afresh: luck was most of its margin) has
        re-runs of this very commit and gets `afresh_runs`; one merged untried ran another
        commit and gets `measure_runs`, at most `confirm`."""
        if sha not in self._measuring:
            m = self.cfg.merge
            won = any(t.kind is not TrialKind.MEASURE for t in self.reruns(sha, candidate))
            runs = m.afresh_runs if won else min(m.measure_runs, max(self.confirm(), 1))
            self._measuring[sha] = runs
        return [measure_id(candidate, i) for i in range(self._measuring[sha])]

    def measured(self, candidate: int, sha: str) -> Ruling:
        """What the runs measuring a keep merged untried say (WAIT until all exist)."""
        return self._measured([self.trial(i) for i in self.measuring_ids(candidate, sha)])

    def _measured(self, found: list[Trial | None]) -> Ruling:
        runs = [t for t in found if t is not None]
        if len(runs) < len(found):
            return Ruling(Act.WAIT)
        return measured_ruling(runs, self.offsets(), Target.of(self.cfg))

    def class_of(self, sha: str) -> str:
        """The hardware class most runs of commit `sha` were on: where its challengers'
        re-runs go if a slot of it is free, so that the offsets between classes cancel (and
        none lands on a class the baseline did not run on twice, where it would be left
        out). The baseline's for the start commit; a keep's own re-runs, or its reference's
        while they are out; "" before the baseline is in."""
        offsets = self.offsets()
        if not offsets:
            return ""
        if len(offsets) == 1:  # every run that counts is on it: no lineage to walk
            return next(iter(offsets))
        seen: set[str] = set()
        while sha not in self._classes:
            if sha in seen:  # the store refuses such keeps: only a damaged ledger loops
                raise ValueError(f"the incumbents' lineage loops at {sha[:10]}")
            seen.add(sha)
            if sha == self.start_sha:
                base = self.baseline()
                assert base is not None  # offsets come from it
                ran = base.classes
            else:
                ran = [c for _, _, c in runs_of(self.reruns(sha)) if c in offsets]
            if ran:
                self._classes[sha] = max(sorted(set(ran)), key=ran.count)
                break
            sha = self.parent(sha)  # a merged-untried keep: asked again once its runs are in
        return self._classes[sha]

    # -- noise ------------------------------------------------------------------------------
    def sigma_at(self, sha: str, camp: Campaign) -> float:
        """The seed noise σ to judge against the commit `sha` with (see NoisePools)."""
        if self._pools is None:
            self._pools = self._load_pools(camp)
        return self._pools.sigma(sha, self.parent)

    def _load_pools(self, camp: Campaign) -> NoisePools:
        """The noise pools of what the store holds (once a process; then kept up to date)."""
        pools = NoisePools(start=camp.start_sha, min_dof=max(camp.baseline_runs - 1, 1))
        by_cand: dict[int | None, list[Trial]] = {}
        for t in self.store.list_trials(self.campaign, states={TrialState.DONE}):
            by_cand.setdefault(t.candidate_id, []).append(t)
        pools.add(camp.start_sha, self.placed(by_cand.get(None, [])), key="baseline")
        cands = {c.id: c for c in self.store.list_candidates(self.campaign)}
        for d in self.store.list_decisions(self.campaign):
            cand, runs = cands[d.candidate_id], by_cand.get(d.candidate_id, [])
            repeats = [t for t in runs if t.kind in RERUNS]
            if d.kind is DecisionKind.KEPT:
                own = [t for t in repeats if t.commit_sha == d.incumbent_after]
                pools.add(d.incumbent_after, self.placed(own), key=f"c{cand.id}")
            elif d.kind is DecisionKind.DISCARDED:
                last = [t for t in repeats if t.commit_sha == cand.commit_sha]
                pools.add(cand.base_sha, self.placed(last), key=f"c{cand.id}")
        return pools

    def pool(self, sha: str, values: list[float], *, key: str) -> None:
        if self._pools is not None:  # else they are loaded, this run included, when needed
            self._pools.add(sha, values, key=key)
