"""Moving the incumbent: a winner fast-forwarded, rebased, or merged untried on its
evidence; an incumbent merged untried measured by its own runs, or reverted when they
cannot measure it."""

from __future__ import annotations

import dataclasses
import logging

from farm.config import TargetConfig
from farm.evidence import Evidence
from farm.gitops import best_branch, candidate_branch
from farm.merge import Verdict, flattered, lucky, mean
from farm.merge.verdicts import Act, by_class, lost_keeps
from farm.recorder import Notices, Recorder, commits_past
from farm.records import (
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Edit,
    Incumbent,
    TrialKind,
    edit_hash,
)
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
        # a test that picks the best of many): where that luck is most of its margin, its
        # value is measured afresh by runs of its own, so that later candidates are judged
        # against its true level. A deterministic target's runs would say the same again.
        fresh = (
            not how
            and sigma > 0
            and flattered(verdict)
            and lucky(self.evidence.screen_gains(), sigma=sigma, m=self.cfg.merge)
        )
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
        decision, or its candidate (a winner merged untried is written only then, with the
        commit it was rebased to): finish it before anything else can move the incumbent
        again."""
        if inc.candidate_id is None or inc.candidate_id == self._decided:
            return None
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        decided = self.store.get_decision(self.campaign, cand.id)
        if decided is not None and cand.state.is_finished():
            self._decided = cand.id  # decisions are final: not asked again
            return None
        if decided is not None:
            self.recorder.finish(_as_kept(cand, inc), decided)
            self._decided = cand.id
            return None
        self.recorder.sync_best_branch()
        return self._record_keep(inc)

    def _record_keep(self, inc: Incumbent, *, how: str = "") -> Decision:
        """The decision of the keep that made `inc` the incumbent, its branch moved."""
        assert inc.candidate_id is not None
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        cand = _as_kept(cand, inc)
        return self.recorder.record_keep(cand, inc, before=cand.base_sha, how=how)

    def catch_up(self) -> None:
        """A store rolled back (a Redis restarted from an old snapshot, a restored backup)
        is behind the best branch by keeps it lost (farm.merge.verdicts.lost_keeps): record
        them kept again, forward from git, each an estimate at the incumbent it replaced,
        the last measured by its own runs (`measure`). The branch never moves back over
        them."""
        inc = self.store.get_incumbent(self.campaign)
        repo = self.recorder.repo
        tip = repo.ref_sha(f"refs/heads/{best_branch(self.campaign)}")
        if tip is None or tip == inc.sha or not repo.is_ancestor(inc.sha, tip):
            return
        past = commits_past(self.store, repo, self.campaign, inc.sha, tip)
        if lost_keeps([(p.name[0] if p.name else None, p.decided) for p in past]) is None:
            return  # not farm's doing: sync_best_branch says so
        self._reserve_ids()
        said = []
        if inc.candidate_id is not None and not self.store.get_decision(
            self.campaign, inc.candidate_id
        ):
            self._record_keep(inc)  # a keep (or a catch-up) cut short: before the ones after
            said.append(f"c{inc.candidate_id} {inc.sha[:10]}")
        before = inc
        for commit, name in ((p.commit, p.name) for p in past):
            assert name is not None  # lost_keeps: every one is a candidate's commit
            cand_id, title, hypothesis = name
            files = repo.read_files(commit.sha, self.cfg.editable)
            cand = self.store.get_candidate(self.campaign, cand_id)
            if cand is None:  # lost with the rest: what git knows of it
                edits = [Edit(p, before.files.get(p, ""), t) for p, t in files.items()]
                edits = [e for e in edits if e.search != e.replace]
                cand = Candidate(
                    campaign=self.campaign,
                    id=cand_id,
                    base_sha=before.sha,
                    title=title,
                    hypothesis=hypothesis,
                    edits=edits,
                    files=files,
                    edit_hash=edit_hash(edits),
                    state=CandidateState.RUNNING,
                )
                self.store.add_candidate(cand)
            elif cand.state is CandidateState.QUEUED:  # a keep is made of a running one
                cand.state = CandidateState.RUNNING
                self.store.update_candidate(cand)
            new = Incumbent(
                sha=commit.sha,
                metric=before.metric,
                runs=0,
                candidate_id=cand_id,
                files=files,
                replaced=before.sha,
            )
            if not self.store.cas_incumbent(self.campaign, expected_sha=before.sha, new=new):
                return  # another controller moved it
            self._record_keep(new, how="; recovered from the best branch: the store had lost it")
            self._decided, before = cand_id, new
            said.append(f"c{cand_id} {commit.sha[:10]}")
        keeps = "the keep" if len(said) == 1 else f"the {len(said)} keeps"
        self.notices.say(
            f"caught-up:{tip}",
            f"the store {self.store.url} had lost {keeps} the best branch holds "
            f"({', '.join(said)}): it was rolled back (a Redis restarted from an old snapshot, "
            "a restored backup); they are recorded kept again, forward from git, and the "
            f"incumbent {tip[:10]} is an estimate until its own runs measure it",
            warn=True,
        )

    def _reserve_ids(self) -> None:
        """New candidates get ids above every candidate branch git has: a store that lost
        candidates would hand their ids out again, and their branches would move."""
        refs = self.recorder.repo.git(
            "for-each-ref", "--format=%(refname:lstrip=2)", f"refs/heads/farm/{self.campaign}/"
        )
        prefix = candidate_branch(self.campaign, 0)[:-1]
        ids = [int(r[len(prefix) :]) for r in refs.split() if r[len(prefix) :].isdigit()]
        while ids and self.store.next_candidate_id(self.campaign) < max(ids):
            pass

    def measure(self, inc: Incumbent) -> None:
        """An incumbent kept on evidence (merged untried, or on the runs that won it) is run
        until its own runs give its estimate, or reverted when they cannot
        (farm.merge.verdicts.measured_ruling).

        Estimates added up keep every error of the gains behind them, and the runs that won
        a test are the luckier draws (the winner's curse): each is replaced by a measurement.
        """
        if not inc.estimated or inc.candidate_id is None or not self.evidence.baseline_done():
            return  # its runs are placed on the baseline's scale: they wait for it
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        for trial_id in self.evidence.measuring_ids(cand.id, inc.sha):
            self.recorder.ensure_trial(trial_id, TrialKind.MEASURE, cand)
        ruling = self.evidence.measured(cand.id, inc.sha)
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


def _as_kept(cand: Candidate, inc: Incumbent) -> Candidate:
    """`cand` as the keep that made `inc`: its commit, the commit it replaced, its files (a
    winner merged untried is written only then, with the commit it was rebased to)."""
    cand.commit_sha, cand.base_sha, cand.files = inc.sha, inc.replaced or cand.base_sha, inc.files
    return cand
