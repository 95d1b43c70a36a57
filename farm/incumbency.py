"""Moving the incumbent: a winner fast-forwarded, rebased, or merged untried on its
evidence; an incumbent merged untried measured by its own runs, or reverted when they
cannot measure it."""

from __future__ import annotations

import dataclasses
import logging

from farm.config import TargetConfig
from farm.evidence import Evidence
from farm.merge import Verdict, flattered, mean
from farm.merge.verdicts import Act, by_class
from farm.recorder import Notices, Recorder
from farm.records import Candidate, Decision, DecisionKind, Incumbent, TrialKind
from farm.store import Store

log = logging.getLogger(__name__)


class Incumbency:
    def __init__(
        self,
        *,
        store: Store,
        cfg: TargetConfig,
        campaign: str,
        evidence: Evidence,
        recorder: Recorder,
        notices: Notices,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.campaign = campaign
        self.evidence = evidence
        self.recorder = recorder
        self.notices = notices
        self._decided: int | None = None  # the incumbent's candidate, its keep recorded

    def win(
        self,
        cand: Candidate,
        inc: Incumbent,
        verdict: Verdict,
        sigma: float,
        values: list[float],
        *,
        note: str,
    ) -> Decision | None:
        """Merge a winner: fast-forward onto the incumbent it beat, or rebase it and judge it
        again there, or (rebased as often as allowed) merge it untried on its evidence."""
        metric, how = verdict.estimate, ""
        if cand.base_sha != inc.sha:
            base = cand.base_sha
            why = self.recorder.move_onto(cand, inc)
            if why:
                return self.recorder.decide(
                    cand,
                    DecisionKind.SUPERSEDED,
                    f"won on {base[:10]} but no longer applies on the incumbent "
                    f"{inc.sha[:10]}: {why}",
                )
            rebase = cand.generation < self.cfg.merge.max_rebases
            cand.generation += rebase
            cand.commit_sha = self.recorder.commit(cand, rebased=True)
            if rebase:
                self.store.update_candidate(cand)  # a crash from here on resumes its re-runs
                self.recorder.ensure_reruns(cand)  # its re-runs on the incumbent
                log.info("c%d won on a stale base; rebased onto %s", cand.id, inc.sha[:10])
                return None
            # Re-run on a newer incumbent as often as allowed, and it moved again meanwhile:
            # with many slots, keeps would chase each other forever. Merge it on the
            # evidence it has, its gain added to the incumbent's estimate. The candidate is
            # not written yet: until the incumbent moves it stays as it was judged (on its
            # old base), so a crash here leaves it to be judged again.
            assert inc.metric is not None
            metric = self.cfg.direction.shift(inc.metric, by=verdict.delta)
            how = (
                f"; merged onto {inc.sha[:10]} untried, {self.cfg.metric} estimated "
                f"{metric:.6g} until its own runs measure it"
            )
        # Near its bar, the runs that won are the luckier draws of the candidate (they passed
        # a test that picks the best of many): its value is measured afresh by runs of its
        # own, so that later candidates are judged against its true level. A deterministic
        # target's runs would say the same again.
        fresh = not how and sigma > 0 and self.cfg.merge.measure_keeps and flattered(verdict)
        if fresh:
            how = f"; {self.cfg.metric} to be measured afresh by its own runs"
        new = Incumbent(
            sha=cand.commit_sha,
            metric=metric,
            runs=0 if how else verdict.runs,  # 0: estimated, to be measured
            candidate_id=cand.id,
            files=cand.files,
            replaced=inc.sha,
        )
        # The incumbent moves first (it names its candidate and what it replaced), then its
        # branch, then the candidate and its decision: `recover` finishes a keep cut short.
        if not self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=new):
            return None  # another controller moved it; the next step rebases
        self.recorder.move_best(old=inc.sha, new=cand.commit_sha)
        if not how:  # its own runs, at its level (else pooled with its measuring runs)
            self.evidence.pool(new.sha, values, key=f"c{cand.id}")
        offsets = self.evidence.offsets()
        if len(offsets) > 1:  # a mixed fleet: the runs per class go in the reason
            trials = self.store.list_trials(self.campaign, candidate_id=cand.id)
            note += by_class(trials, offsets)
        how = note + how
        return self.recorder.record_keep(
            cand, new, before=inc.sha, verdict=verdict, sigma=sigma, how=how
        )

    def recover(self, inc: Incumbent) -> Decision | None:
        """A keep whose process died after moving the incumbent and before writing its
        decision: finish it before anything else can move the incumbent again."""
        if inc.candidate_id is None or inc.candidate_id == self._decided:
            return None
        if self.store.get_decision(self.campaign, inc.candidate_id):
            self._decided = inc.candidate_id  # decisions are final: not asked again
            return None
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        before = inc.replaced or cand.base_sha
        cand.commit_sha, cand.base_sha, cand.files = inc.sha, before, inc.files
        self.recorder.sync_best_branch()
        return self.recorder.record_keep(cand, inc, before=before)

    def measure(self, inc: Incumbent) -> None:
        """An incumbent kept on evidence (merged untried, or on the runs that won it) is run
        until its own runs give its estimate, or reverted when they cannot
        (farm.merge.verdicts.measured_ruling).

        Estimates added up keep every error of the gains behind them, and the runs that won
        a test are the luckier draws (the winner's curse): each is replaced by a measurement.
        """
        if not inc.estimated or inc.candidate_id is None:
            return
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        for trial_id in self.evidence.measuring_ids(cand.id):
            self.recorder.ensure_trial(trial_id, TrialKind.MEASURE, cand)
        ruling = self.evidence.measured(cand.id)
        if ruling.act is Act.PASS:
            value = mean(ruling.values)
            log.info("incumbent %s measured: %s %.6g", inc.sha[:10], self.cfg.metric, value)
            updated = dataclasses.replace(inc, metric=value, runs=len(ruling.values))
            self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=updated)
            # Every run of the commit at its level: the confirmations that won it too.
            own = self.evidence.placed(self.evidence.reruns(inc.sha))
            self.evidence.pool(inc.sha, own, key=f"c{inc.candidate_id}")
        elif ruling.act is Act.FAIL:
            self._revert(inc, ruling.reason)

    def _revert(self, inc: Incumbent, why: str) -> None:
        """Put back the incumbent a keep merged untried replaced: its own runs failed."""
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        before = self.evidence.parent(inc.sha)
        back = self.evidence.estimate_of(before, camp)
        if before != camp.start_sha:
            back.candidate_id = self.evidence.kept_decision(before).candidate_id
        back.files = self.recorder.repo.read_files(before, self.cfg.editable)
        if self.recorder.revert(inc, back, why):
            self.notices.say(
                f"revert:{inc.sha}",
                f"c{inc.candidate_id} was kept on evidence and its own runs could not measure "
                f"it ({why}): reverted, the incumbent is {before[:10]} again",
                warn=True,
            )
