"""The merge controller: decides what each finished trial means and moves the incumbent.

It is level-triggered: every `step` looks at the store and does whatever the state calls
for (enqueue the baseline, a screen, confirmations; decide; rebase; keep). All trial ids
are deterministic and every write is idempotent, so a controller killed at any point
resumes by simply stepping again.
"""

from __future__ import annotations

import hashlib
import logging

from farm.config import TargetConfig
from farm.errors import FarmError
from farm.gitops import Repo, best_branch, candidate_branch
from farm.merge import Verdict, judge, noise_sigma
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Draft,
    Incumbent,
    Outcome,
    Trial,
    TrialKind,
    TrialState,
)
from farm.store import Store
from proposer.validate import Rejected, validate_draft

log = logging.getLogger(__name__)

MIN_QUEUE = 2  # trials kept waiting when the slot count is unknown (separate dispatchers)


class BaselineFailed(FarmError):
    """Fewer than two baseline runs succeeded: the target does not run as configured."""


def trial_seed(trial_id: str) -> int:
    """A stable seed per trial id: a re-run after a crash, or a rerun of the campaign, uses
    the same seeds (trial ids name candidate, generation and role, never a commit)."""
    return int.from_bytes(hashlib.sha256(trial_id.encode()).digest()[:4], "big") % (2**31)


class Controller:
    def __init__(self, *, store: Store, repo: Repo, cfg: TargetConfig, campaign: str) -> None:
        self.store = store
        self.repo = repo
        self.cfg = cfg
        self.campaign = campaign
        camp = store.get_campaign(campaign)
        if camp is None:
            raise FarmError(f"no campaign {campaign!r} in {store.url}")
        # Every trial ships this one commit plus the editable files of what it runs, so
        # workers need one bundle per campaign and never the controller's own commits.
        self.start_sha = camp.start_sha

    # -- the loop body ----------------------------------------------------------------------
    def step(self, *, slots: int | None, promote: bool = True) -> list[Decision]:
        """One reconcile pass. Returns the decisions made in it.

        `slots`: how many trials the dispatchers run at once; None when they are other
        processes and the number is unknown.
        """
        made: list[Decision] = []
        self._reconcile_baseline()
        for cand in self.store.list_candidates(self.campaign, {CandidateState.RUNNING}):
            decision = self._reconcile_candidate(cand)
            if decision is not None:
                made.append(decision)
        if promote:
            self._promote(slots)
        return made

    def baseline_done(self) -> bool:
        camp = self.store.get_campaign(self.campaign)
        return camp is not None and camp.sigma is not None

    # -- baseline -------------------------------------------------------------------------
    def _reconcile_baseline(self) -> None:
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        if camp.sigma is not None:
            return
        trials = [self._ensure_trial(tid, TrialKind.BASELINE, None) for tid in self._baseline_ids()]
        if not all(t.state.is_finished() for t in trials):
            return
        ok = [t.result.metric for t in trials if t.result and t.result.outcome.is_ok()]
        metrics = [m for m in ok if m is not None]
        if len(metrics) < 2:
            raise BaselineFailed(self._baseline_failure(trials))
        sigma = noise_sigma(metrics)
        inc = self.store.get_incumbent(self.campaign)
        mean = sum(metrics) / len(metrics)
        updated = Incumbent(
            sha=inc.sha, metric=mean, runs=len(metrics), candidate_id=None, files=inc.files
        )
        self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=updated)
        self.store.set_baseline(self.campaign, metric=mean, runs=len(metrics), sigma=sigma)
        log.info("baseline %s = %.6g ± %.3g (%d runs)", self.cfg.metric, mean, sigma, len(metrics))

    def _baseline_ids(self) -> list[str]:
        return [f"base-{i}" for i in range(self.cfg.merge.repeats)]

    def _baseline_failure(self, trials: list[Trial]) -> str:
        lines = [f"the baseline did not run: fewer than 2 of {len(trials)} baseline trials were ok"]
        for t in trials:
            if t.result is None:
                lines.append(f"  {t.id}: {t.state.value} (infrastructure kept failing)")
                continue
            r = t.result
            lines.append(f"  {t.id}: {r.outcome.value} (exit {r.exit_code})")
            if r.outcome is Outcome.NO_METRIC:
                lines.append(
                    f"    the command exited 0 but printed no `{self.cfg.metric}: <value>` line: "
                    "check `metric` in farm.toml"
                )
        tail = next((t.result.output_tail for t in trials if t.result and t.result.output_tail), "")
        if tail:
            lines.append("  output tail of the first failure:")
            lines.extend("    " + ln for ln in tail.strip().splitlines()[-15:])
        lines.append(
            f"fix the target so `{self.cfg.command}` runs and prints the metric, then rerun"
        )
        return "\n".join(lines)

    # -- candidates -----------------------------------------------------------------------
    def _promote(self, slots: int | None) -> None:
        """Start queued candidates while fewer trials are waiting than slots can take."""
        counts = self.store.count_trials(self.campaign)
        queued, running = counts[TrialState.QUEUED], counts[TrialState.RUNNING]
        # Slots unknown (separate dispatchers): keep as many trials waiting as are running.
        demand = max(running, MIN_QUEUE) - queued if slots is None else slots - queued - running
        if demand <= 0:
            return
        for cand in self.store.list_candidates(self.campaign, {CandidateState.QUEUED})[:demand]:
            cand.commit_sha = self.repo.commit_files(
                cand.base_sha,
                cand.files,
                message=f"farm c{cand.id}: {cand.title}\n\n{cand.hypothesis}",
                timestamp=cand.created_at,
            )
            self.repo.set_branch(candidate_branch(self.campaign, cand.id), cand.commit_sha)
            cand.state = CandidateState.RUNNING
            self.store.update_candidate(cand)
            self._ensure_screen(cand)

    def _ensure_screen(self, cand: Candidate) -> Trial:
        kind = TrialKind.REBASE if cand.generation else TrialKind.CANDIDATE
        return self._ensure_trial(f"c{cand.id}-g{cand.generation}-screen", kind, cand)

    def _ensure_trial(self, trial_id: str, kind: TrialKind, cand: Candidate | None) -> Trial:
        """The trial with this id, queued now if it does not exist yet (None: the baseline)."""
        existing = self.store.get_trial(self.campaign, trial_id)
        if existing is not None:
            return existing
        trial = Trial(
            id=trial_id,
            campaign=self.campaign,
            kind=kind,
            commit_sha=cand.commit_sha if cand else self.start_sha,
            base_sha=self.start_sha,
            seed=trial_seed(f"{self.campaign}/{trial_id}"),
            candidate_id=cand.id if cand else None,
            files=cand.files if cand else {},
        )
        self.store.enqueue_trial(trial)
        return trial

    def _reconcile_candidate(self, cand: Candidate) -> Decision | None:
        decided = self._existing_decision(cand)
        if decided is not None:
            self._finish(cand, decided)
            return None
        inc = self.store.get_incumbent(self.campaign)
        if inc.sha == cand.commit_sha:  # kept, but the decision was not written before a crash
            return self._record_keep(cand, inc, before=inc.sha)
        screen = self._ensure_screen(cand)
        if not screen.state.is_finished():
            return None
        failed = self._failure(screen, "screening run")
        if failed:
            return self._decide(cand, DecisionKind.CRASHED, failed)
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        if camp.sigma is None or inc.metric is None:
            return None  # the baseline is still running
        # A candidate first has to beat the commit it was written against; one on a stale
        # base that does is then rebased and judged again against the incumbent.
        ref = inc if cand.base_sha == inc.sha else self._estimate_of(cand.base_sha, camp)
        m = self.cfg.merge
        assert screen.result is not None and screen.result.metric is not None
        verdict = self._judge(
            [screen.result.metric], ref, camp.sigma, m.screen_z if m.confirm else m.z
        )
        if not verdict.passed:
            return self._decide(
                cand,
                DecisionKind.DISCARDED,
                "screen: " + verdict.describe(self.cfg.metric),
                verdict,
                camp.sigma,
            )
        if m.confirm:
            confirms = [
                self._ensure_trial(
                    f"c{cand.id}-g{cand.generation}-confirm{i}", TrialKind.CONFIRM, cand
                )
                for i in range(m.confirm)
            ]
            if not all(t.state.is_finished() for t in confirms):
                return None
            for i, t in enumerate(confirms):
                failed = self._failure(t, f"confirmation run {i + 1}")
                if failed:
                    return self._decide(cand, DecisionKind.CRASHED, failed)
            values = [t.result.metric for t in confirms if t.result and t.result.metric is not None]
            verdict = self._judge(values, ref, camp.sigma, m.z)
            if not verdict.passed:
                return self._decide(
                    cand,
                    DecisionKind.DISCARDED,
                    "screen looked better, confirmations did not: "
                    + verdict.describe(self.cfg.metric),
                    verdict,
                    camp.sigma,
                )
        if cand.base_sha != inc.sha:
            return self._rebase(cand, inc)
        new = Incumbent(
            sha=cand.commit_sha,
            metric=verdict.estimate,
            runs=m.confirm or 1,
            candidate_id=cand.id,
            files=cand.files,
        )
        if not self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=new):
            return None  # another controller moved it; the next step rebases
        self.repo.fast_forward(best_branch(self.campaign), old=inc.sha, new=cand.commit_sha)
        return self._record_keep(cand, new, before=inc.sha, verdict=verdict, sigma=camp.sigma)

    def _estimate_of(self, sha: str, camp: Campaign) -> Incumbent:
        """The metric estimate a former incumbent had: its baseline, or its keep decision."""
        if sha == camp.start_sha:
            return Incumbent(sha=sha, metric=camp.baseline_metric, runs=camp.baseline_runs)
        kept = next(
            d
            for d in self.store.list_decisions(self.campaign)
            if d.kind is DecisionKind.KEPT and d.incumbent_after == sha
        )
        return Incumbent(sha=sha, metric=kept.metric, runs=self.cfg.merge.confirm or 1)

    def _judge(self, values: list[float], inc: Incumbent, sigma: float, z: float) -> Verdict:
        assert inc.metric is not None
        return judge(
            values,
            incumbent=inc.metric,
            incumbent_runs=inc.runs,
            sigma=sigma,
            direction=self.cfg.direction,
            z=z,
            min_delta=self.cfg.merge.min_delta,
        )

    def _failure(self, trial: Trial, what: str) -> str:
        if trial.state is TrialState.DEAD:
            return f"{what} never completed: the infrastructure failed {trial.deliveries} times"
        r = trial.result
        assert r is not None
        if r.outcome.is_ok():
            return ""
        last = next((ln.strip() for ln in reversed(r.output_tail.splitlines()) if ln.strip()), "")
        detail = f"; last output: {last[:300]}" if last else ""
        return f"{what} {r.outcome.value} (exit {r.exit_code}){detail}"

    def _rebase(self, cand: Candidate, inc: Incumbent) -> Decision | None:
        draft_files = {p: inc.files[p] for p in self.cfg.editable if p in inc.files}
        res = validate_draft(
            Draft(title=cand.title, hypothesis=cand.hypothesis, edits=cand.edits),
            files=draft_files,
            editable=self.cfg.editable,
            seen_hashes=set(),
            max_edit_bytes=self.cfg.proposer.max_edit_bytes,
        )
        if isinstance(res, Rejected):
            return self._decide(
                cand,
                DecisionKind.SUPERSEDED,
                f"won on {cand.base_sha[:10]} but no longer applies on the incumbent "
                f"{inc.sha[:10]}: {res.reason}",
            )
        cand.base_sha = inc.sha
        cand.files = {**inc.files, **res.files}
        cand.generation += 1
        cand.commit_sha = self.repo.commit_files(
            inc.sha,
            res.files,
            message=f"farm c{cand.id} (rebased): {cand.title}\n\n{cand.hypothesis}",
            timestamp=cand.created_at,
        )
        self.repo.set_branch(candidate_branch(self.campaign, cand.id), cand.commit_sha)
        self.store.update_candidate(cand)
        self._ensure_screen(cand)
        log.info(
            "c%d won on a stale base; rebased onto %s and re-evaluating", cand.id, inc.sha[:10]
        )
        return None

    def _record_keep(
        self,
        cand: Candidate,
        inc: Incumbent,
        *,
        before: str,
        verdict: Verdict | None = None,
        sigma: float | None = None,
    ) -> Decision:
        reason = "kept: " + (verdict.describe(self.cfg.metric) if verdict else "incumbent moved")
        decision = Decision(
            campaign=self.campaign,
            candidate_id=cand.id,
            kind=DecisionKind.KEPT,
            reason=reason,
            metric=inc.metric,
            delta=verdict.delta if verdict else None,
            sigma=sigma,
            incumbent_before=before,
            incumbent_after=inc.sha,
        )
        self.store.record_decision(decision)
        self._finish(cand, decision)
        return decision

    def _decide(
        self,
        cand: Candidate,
        kind: DecisionKind,
        reason: str,
        verdict: Verdict | None = None,
        sigma: float | None = None,
    ) -> Decision:
        inc = self.store.get_incumbent(self.campaign)
        decision = Decision(
            campaign=self.campaign,
            candidate_id=cand.id,
            kind=kind,
            reason=reason,
            metric=verdict.estimate if verdict else None,
            delta=verdict.delta if verdict else None,
            sigma=sigma,
            incumbent_before=inc.sha,
            incumbent_after=inc.sha,
        )
        self.store.record_decision(decision)
        self._finish(cand, decision)
        return decision

    def _existing_decision(self, cand: Candidate) -> Decision | None:
        return self.store.get_decision(self.campaign, cand.id)

    def _finish(self, cand: Candidate, decision: Decision) -> None:
        cand.state = CandidateState(decision.kind.value)
        cand.reason = decision.reason
        self.store.update_candidate(cand)

    # -- startup --------------------------------------------------------------------------
    def sync_best_branch(self) -> None:
        """After a crash between moving the incumbent and its branch, catch the branch up."""
        inc = self.store.get_incumbent(self.campaign)
        branch = best_branch(self.campaign)
        tip = self.repo.ref_sha(f"refs/heads/{branch}")
        if tip is None:
            self.repo.set_branch(branch, inc.sha)
        elif tip != inc.sha and self.repo.is_ancestor(tip, inc.sha):
            self.repo.fast_forward(branch, old=tip, new=inc.sha)
