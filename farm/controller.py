"""The merge controller: gathers the evidence of each candidate, asks the merge rule what it
means (farm.merge) and acts on the ruling: enqueue a run, merge, rebase, record.

It is level-triggered: every `step` looks at the store and does whatever the state calls
for. All trial ids are deterministic (farm.trials) and every write is idempotent
(farm.recorder), so a controller killed at any point resumes by simply stepping again.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable

from farm.config import TargetConfig
from farm.errors import FarmError
from farm.evidence import Evidence
from farm.gitops import Repo
from farm.incumbency import Incumbency
from farm.merge.verdicts import (
    Act,
    Reference,
    Ruling,
    Target,
    baseline_ruling,
    few_runs,
    first_wave,
    rebased_ruling,
    screened_ruling,
)
from farm.recorder import Notices, Recorder
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Incumbent,
    Trial,
    TrialKind,
    TrialState,
)
from farm.screening import Screening
from farm.store import Store
from farm.trials import (
    baseline_ids,
    confirm_id,
)

log = logging.getLogger(__name__)

MIN_QUEUE = 2  # trials kept waiting when the slot count is unknown (separate dispatchers)


class BaselineFailed(FarmError):
    """Fewer than two baseline runs succeeded: the target does not run as configured."""


class Controller:
    def __init__(self, *, store: Store, repo: Repo, cfg: TargetConfig, campaign: str) -> None:
        self.store = store
        self.cfg = cfg
        self.campaign = campaign
        camp = store.get_campaign(campaign)
        if camp is None:
            raise FarmError(f"no campaign {campaign!r} in {store.url}")
        # Every trial ships this one commit plus the editable files of what it runs, so
        # workers need one bundle per campaign and never the controller's own commits.
        self.start_sha = camp.start_sha
        self.target = Target.of(cfg)
        self.said = Notices()
        ev = self.evidence = Evidence(
            store=store, cfg=cfg, campaign=campaign, start_sha=camp.start_sha
        )
        rec = self.recorder = Recorder(
            store=store, repo=repo, cfg=cfg, campaign=campaign, evidence=ev
        )
        self.screening = Screening(cfg=cfg, evidence=ev, recorder=rec, notices=self.said)
        self.incumbency = Incumbency(
            store=store, cfg=cfg, campaign=campaign, evidence=ev, recorder=rec, notices=self.said
        )

    @property
    def notices(self) -> list[str]:
        """Lines for the person running the campaign, said once (the caller prints them)."""
        return self.said.lines

    # -- the loop body ----------------------------------------------------------------------
    def step(self, *, slots: int | None, promote: bool = True) -> list[Decision]:
        """One reconcile pass. Returns the decisions made in it.

        `slots`: how many trials the dispatchers run at once; None when they are other
        processes and the number is unknown.
        """
        made: list[Decision] = []
        self.incumbency.catch_up()  # a store rolled back while this ran: before any move
        self._reconcile_baseline(slots)
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        inc = self.store.get_incumbent(self.campaign)
        recovered = self.incumbency.recover(inc)
        if recovered is not None:
            made.append(recovered)
        running = self.store.list_candidates(self.campaign, {CandidateState.RUNNING})
        self.screening.note_short_screens(running)
        for cand in running:
            decision = self._reconcile_candidate(cand, inc, camp)
            if decision is not None:
                made.append(decision)
                if decision.kind is DecisionKind.KEPT:
                    inc = self.store.get_incumbent(self.campaign)
        self.incumbency.measure(inc)
        if promote:
            left = self._promote(slots, self.store.get_incumbent(self.campaign))
            if self.cfg.merge.confirm_ahead and slots != 1:  # one slot gains nothing by it
                undecided = [c for c in running if c.state is CandidateState.RUNNING]
                self.screening.ahead(undecided, self._idle(slots))
                left = self._idle(slots) if slots is not None else left
            self.screening.release(left)
        return made

    def _idle(self, slots: int | None) -> int:
        """Slots with nothing to run (0 when the slots are unknown)."""
        if slots is None:
            return 0
        counts = self.store.count_trials(self.campaign)
        return slots - counts[TrialState.QUEUED] - counts[TrialState.RUNNING]

    def baseline_done(self) -> bool:
        return self.evidence.baseline_done()

    def sync_best_branch(self) -> None:
        self.incumbency.catch_up()  # a store rolled back: forward from git, first
        self.recorder.sync_best_branch()

    def screening_stopped(self) -> bool:
        return self.screening.stopped()

    # -- baseline -------------------------------------------------------------------------
    def _reconcile_baseline(self, slots: int | None) -> None:
        if self.evidence.baseline_done():
            return
        m = self.cfg.merge
        first = baseline_ids(first_wave(m, slots))
        trials = [self.recorder.ensure_trial(i, TrialKind.BASELINE, None) for i in first]
        ruling, base = baseline_ruling(trials, m, self.target)
        if ruling.act is Act.MORE:
            every = baseline_ids(m.repeats)
            trials = [self.recorder.ensure_trial(i, TrialKind.BASELINE, None) for i in every]
            ruling, base = baseline_ruling(trials, m, self.target)
        if ruling.act is Act.FAIL:
            raise BaselineFailed(ruling.reason)
        if base is None:
            return
        self.evidence.set_baseline(base)
        found = base.noise
        runs = len(base.values) - len(found.outliers)  # what its centre averages
        inc = self.store.get_incumbent(self.campaign)
        if inc.sha == self.start_sha:  # not a keep recovered from git: its own runs measure it
            updated = dataclasses.replace(inc, metric=found.center, runs=runs)
            self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=updated)
        self.store.set_baseline(self.campaign, metric=found.center, runs=runs, sigma=found.sigma)
        if found.deterministic or found.outliers or len(base.offsets) > 1:
            self.said.say("baseline", ruling.reason)  # worth a line on the terminal
        else:
            log.info("%s", ruling.reason)

    # -- candidates -----------------------------------------------------------------------
    def _promote(self, slots: int | None, inc: Incumbent) -> int:
        """Start queued candidates while fewer trials are waiting than slots can take.
        Returns how many more trials the slots could take."""
        counts = self.store.count_trials(self.campaign)
        queued, running = counts[TrialState.QUEUED], counts[TrialState.RUNNING]
        # Slots unknown (separate dispatchers): keep as many trials waiting as are running.
        demand = max(running, MIN_QUEUE) - queued if slots is None else slots - queued - running
        if demand <= 0:
            return 0
        for cand in self.store.list_candidates(self.campaign, {CandidateState.QUEUED}):
            if demand <= 0:
                break
            # Drafted before the incumbent last moved: start it on the incumbent now rather
            # than rebase and re-run it after it wins (or not at all).
            drafted_on = cand.base_sha
            why = self.recorder.start_on(cand, inc)
            if why:
                self.recorder.decide(
                    cand,
                    DecisionKind.SUPERSEDED,
                    f"drafted on {drafted_on[:10]}; no longer applies on the incumbent "
                    f"{inc.sha[:10]}: {why}",
                )
                continue
            demand -= 1
            if self.screening.clear(cand, inc).act is Act.PASS:
                self.screening.ensure_screen(cand)
        return demand

    def _reconcile_candidate(
        self, cand: Candidate, inc: Incumbent, camp: Campaign
    ) -> Decision | None:
        """Take the candidate as far as its finished trials allow (`inc`, `camp`: as read at
        the start of this step; moving the incumbent is a compare-and-set all the same)."""
        decided = self.store.get_decision(self.campaign, cand.id)
        if decided is not None:
            self.recorder.finish(cand, decided)
            return None
        # A candidate first has to beat the commit it was written against; one on a stale
        # base that does is then rebased and judged again against the incumbent.
        if camp.sigma is None or inc.metric is None:
            ref = None  # the baseline is still running
        else:
            written = (
                inc if cand.base_sha == inc.sha else self.evidence.estimate_of(cand.base_sha, camp)
            )
            ref = self.evidence.reference(written, camp)
        ruling = (
            self._new_ruling(cand, ref, inc)
            if cand.generation == 0
            else self._rebased_ruling(cand, ref)
        )
        if ruling.act is Act.FAIL:
            return self.recorder.decide(cand, DecisionKind.CRASHED, ruling.reason)
        if ruling.act is Act.SUPERSEDE:
            return self.recorder.decide(cand, DecisionKind.SUPERSEDED, ruling.reason)
        if ruling.act is Act.DISCARD and ref is None:  # ranked out by its short screen
            return self.recorder.decide(cand, DecisionKind.DISCARDED, ruling.reason)
        if ruling.act not in (Act.KEEP, Act.DISCARD):
            return None
        assert ref is not None  # judged against it
        said = ruling.reason + few_runs(ref.runs, max(self.evidence.confirm(), 1))
        if ruling.act is Act.DISCARD:  # no better than its reference: runs at its level
            self.evidence.pool(cand.base_sha, ruling.values, key=f"c{cand.id}")
            return self.recorder.decide(
                cand, DecisionKind.DISCARDED, said, ruling.verdict, ref.sigma
            )
        assert ruling.verdict is not None
        return self.incumbency.win(cand, inc, ruling.verdict, ref.sigma, ruling.values, note=said)

    def _new_ruling(self, cand: Candidate, ref: Reference | None, inc: Incumbent) -> Ruling:
        """A new candidate's screen, then confirmations one at a time (other candidates take
        the other slots) until the sequential test decides."""
        cleared = self.screening.clear(cand, inc)
        if cleared.act is not Act.PASS:
            return cleared
        stages = 1 + self.evidence.confirm()
        runs = [self.screening.ensure_screen(cand)]
        runs += self._existing(confirm_id(cand.id, i) for i in itertools.count())
        if runs[0].state.is_finished():
            self.screening.runs.note_screen(runs[0])
        gate = self.screening.paired_gate(runs[0], ref) if ref and len(runs) == 1 else None
        while True:
            ruling = screened_ruling(
                runs, ref, stages=stages, m=self.cfg.merge, t=self.target, gate=gate
            )
            if ruling.act is not Act.MORE:
                return ruling
            if ref is not None and not self.evidence.placed([runs[-1]]):
                self._say_unplaced(runs[-1])
            runs.append(
                self.recorder.ensure_trial(
                    confirm_id(cand.id, len(runs) - 1), TrialKind.CONFIRM, cand
                )
            )

    def _existing(self, ids: Iterable[str]) -> list[Trial]:
        """The trials with these ids that exist, up to the first that does not."""
        found: list[Trial] = []
        for trial_id in ids:
            trial = self.evidence.trial(trial_id)
            if trial is None:
                break
            found.append(trial)
        return found

    def _rebased_ruling(self, cand: Candidate, ref: Reference | None) -> Ruling:
        """A rebased winner has proved itself once and goes straight to its re-runs on the
        incumbent."""
        runs = self.recorder.ensure_reruns(cand)
        if ref is None:
            return Ruling(Act.WAIT)
        return rebased_ruling(runs, ref, self.cfg.merge, self.target)

    def _say_unplaced(self, run: Trial) -> None:
        """Say once per class that its runs are left out (each costs another run)."""
        assert run.result is not None  # it ran, and was not placed
        hardware = run.result.hardware
        self.said.say(
            f"unplaced:{hardware}",
            f"runs on {hardware or 'unknown'} are left out of every decision and run again "
            f"elsewhere: the baseline ran there fewer than twice, so its offset is unknown; "
            f"raise [merge] repeats (now {self.cfg.merge.repeats}) so that every class gets "
            "two baseline runs, or keep trials off it with [resources] labels",
            warn=True,
        )
