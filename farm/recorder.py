"""The controller's writes: trials, candidate commits, the best branch and the ledger.

Every write here is idempotent or a compare-and-set, and each is ordered so that a crash
between two of them leaves a state the next step recognises and finishes: a candidate's
commit is written before the incumbent moves to it, the incumbent moves before its branch
and its decision.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from farm.config import TargetConfig
from farm.errors import RefMismatch
from farm.evidence import Evidence
from farm.gitops import FARM_EMAIL, Commit, Repo, best_branch, candidate_branch
from farm.merge import Verdict
from farm.records import (
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Draft,
    Edit,
    Incumbent,
    Trial,
    TrialKind,
)
from farm.store import Store
from farm.trials import RERUNS, confirm_id, seed_of
from proposer.knobs import set_values, value_changes
from proposer.validate import Rejected, Validated, validate_draft

log = logging.getLogger(__name__)

# The subject of a candidate's commit (`Recorder.commit`): git names farm's keeps by it.
_SUBJECT = re.compile(r"farm c(\d+)(?: \(rebased\))?: (.*)")


def candidate_of(commit: Commit) -> tuple[int, str, str] | None:
    """(candidate id, title, hypothesis) of a candidate's commit; None for a commit farm did
    not make."""
    subject, _, body = commit.message.partition("\n")
    found = _SUBJECT.fullmatch(subject)
    if found is None or commit.author_email != FARM_EMAIL:
        return None
    return int(found[1]), found[2], body.strip()


@dataclass(frozen=True)
class Past:
    """A commit on the best branch past a commit the store holds, and what the store knows
    of it."""

    commit: Commit
    name: tuple[int, str, str] | None  # candidate_of: farm made it for this candidate
    decided: bool  # the store holds that candidate's decision

    @property
    def lost(self) -> bool:
        """farm's commit for a candidate the store has no decision for: a keep a store that
        lost writes does not know."""
        return self.name is not None and not self.decided


def commits_past(store: Store, repo: Repo, campaign: str, sha: str, tip: str | None) -> list[Past]:
    """The commits from `sha` (not included) to `tip`, oldest first, each with what the
    store knows of it."""
    if tip is None or tip == sha:
        return []
    found = []
    for commit in repo.log(sha, tip):
        name = candidate_of(commit)
        decided = name is not None and store.get_decision(campaign, name[0]) is not None
        found.append(Past(commit, name, decided))
    return found


class Notices:
    """Lines for the person running the campaign, each said once (the caller prints them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._said: set[str] = set()

    def say(self, key: str, said: str, *, warn: bool = False) -> None:
        """Say `said` unless something was said under `key` already."""
        if key in self._said:
            return
        self._said.add(key)
        log.log(logging.WARNING if warn else logging.INFO, "%s", said)
        self.lines.append(said)


class Recorder:
    def __init__(
        self, *, store: Store, repo: Repo, cfg: TargetConfig, campaign: str, evidence: Evidence
    ) -> None:
        self.store = store
        self.repo = repo
        self.cfg = cfg
        self.campaign = campaign
        self.evidence = evidence
        self.start_sha = evidence.start_sha

    # -- trials -------------------------------------------------------------------------------
    def ensure_trial(
        self,
        trial_id: str,
        kind: TrialKind,
        cand: Candidate | None,
        *,
        partner: Trial | None = None,
    ) -> Trial:
        """The trial with this id, queued now if it does not exist yet (None: the baseline);
        with `partner`, it runs with the partner's seed."""
        existing = self.evidence.trial(trial_id)
        if existing is not None:
            return existing
        trial = Trial(
            id=trial_id,
            campaign=self.campaign,
            kind=kind,
            commit_sha=cand.commit_sha if cand else self.start_sha,
            base_sha=self.start_sha,
            seed=partner.seed if partner else seed_of(self.campaign, trial_id),
            candidate_id=cand.id if cand else None,
            files=cand.files if cand else {},
            reference=cand.base_sha if cand and kind is TrialKind.SHORT else "",
            partner=partner.id if partner else "",
            prefer=self.evidence.class_of(cand.base_sha) if cand and kind in RERUNS else "",
        )
        self.store.enqueue_trial(trial)
        return trial

    def ensure_reruns(self, cand: Candidate) -> list[Trial]:
        """A rebased winner's re-runs on the incumbent (at least one, even with confirm = 0)."""
        n = max(self.evidence.confirm(), 1)
        gen = cand.generation
        return [
            self.ensure_trial(confirm_id(cand.id, i, generation=gen), TrialKind.REBASE, cand)
            for i in range(n)
        ]

    # -- git ----------------------------------------------------------------------------------
    def start_on(self, cand: Candidate, inc: Incumbent) -> str:
        """Run the candidate on the incumbent from now on: its edits moved there if it was
        drafted (or last screened) on another commit, committed, saved as running. Returns
        why its edits no longer apply there (nothing is saved then)."""
        if cand.base_sha != inc.sha:
            why = self.move_onto(cand, inc)
            if why:
                return why
        cand.commit_sha = self.commit(cand, rebased=False)
        cand.state = CandidateState.RUNNING
        self.store.update_candidate(cand)
        return ""

    def move_onto(self, cand: Candidate, inc: Incumbent) -> str:
        """Re-apply the candidate's edits on the incumbent; a draft that only sets values
        whose edits no longer apply (a keep rewrote their lines) sets the same values there
        instead (`by_value`). Returns why neither applies."""
        draft_files = {p: inc.files[p] for p in self.cfg.editable if p in inc.files}

        def apply(edits: list[Edit]) -> Validated | Rejected:
            return validate_draft(
                Draft(title=cand.title, hypothesis=cand.hypothesis, edits=edits),
                files=draft_files,
                editable=self.cfg.editable,
                seen_hashes=set(),
                max_edit_bytes=self.cfg.proposer.max_edit_bytes,
            )

        res = apply(cand.edits)
        if isinstance(res, Rejected):
            edits = self.by_value(cand, draft_files)
            if edits is None:
                return res.reason
            again = apply(edits)
            if isinstance(again, Rejected):
                return f"{res.reason}; setting its values there instead: {again.reason}"
            log.info("c%d re-applied by value on %s", cand.id, inc.sha[:10])
            res, cand.edits = again, edits
        cand.base_sha = inc.sha
        cand.files = {**inc.files, **res.files}
        return ""

    def by_value(self, cand: Candidate, files: dict[str, str]) -> list[Edit] | None:
        """The candidate's edits made anew on `files`: the values it sets, set there; None
        unless it only sets values (proposer.knobs.value_changes) that `files` still has."""
        base = self.repo.read_files(cand.base_sha, self.cfg.editable)
        edits: list[Edit] = []
        for path in sorted({e.path for e in cand.edits}):
            if not path.endswith(".py") or path not in base or path not in files:
                return None
            values = value_changes(path, base[path], cand.files.get(path, ""))
            made = None if values is None else set_values(path, files[path], values)
            if made is None:
                return None
            edits += made
        return edits or None

    def commit(self, cand: Candidate, *, rebased: bool) -> str:
        """Commit the candidate's files on its base and point its branch there."""
        sha = self.repo.commit_files(
            cand.base_sha,
            {p: cand.files[p] for p in self.cfg.editable if p in cand.files},
            message=f"farm c{cand.id}{' (rebased)' if rebased else ''}: {cand.title}\n\n"
            f"{cand.hypothesis}",
            timestamp=cand.created_at,
        )
        self.repo.set_branch(candidate_branch(self.campaign, cand.id), sha)
        return sha

    def move_best(self, *, old: str, new: str) -> None:
        try:
            self.repo.fast_forward(best_branch(self.campaign), old=old, new=new)
        except RefMismatch as e:
            keeps = self._unknown_keeps(old, e.found)
            raise RefMismatch(e.branch, expected=old, found=e.found, farm_commits=keeps) from None

    def _unknown_keeps(self, sha: str, tip: str | None) -> list[str]:
        """The commits farm made on the best branch past `sha` for candidates the store has
        no decision for: keeps a store that lost writes does not know."""
        past = commits_past(self.store, self.repo, self.campaign, sha, tip)
        return [p.commit.sha for p in past if p.lost]

    def sync_best_branch(self) -> None:
        """After a crash between moving the incumbent and its branch, catch the branch up
        (forward, or back over a keep that was reverted).

        A branch anywhere else was moved by something outside farm: RefMismatch.
        """
        inc = self.store.get_incumbent(self.campaign)
        branch = best_branch(self.campaign)
        tip = self.repo.ref_sha(f"refs/heads/{branch}")
        if tip is None or (tip != inc.sha and self._reverted_from(tip, inc.sha)):
            self.repo.set_branch(branch, inc.sha)
        elif tip != inc.sha:
            if not self.repo.is_ancestor(tip, inc.sha):
                keeps = self._unknown_keeps(inc.sha, tip)
                raise RefMismatch(branch, expected=inc.sha, found=tip, farm_commits=keeps)
            self.repo.fast_forward(branch, old=tip, new=inc.sha)

    def _reverted_from(self, tip: str, sha: str) -> bool:
        """Whether `tip` is a reverted keep's commit whose reverting left `sha` the
        incumbent (the branch had not moved back yet)."""
        for d in self.store.list_decisions(self.campaign, kinds={DecisionKind.KEPT}):
            if d.incumbent_after == tip and self.repo.is_ancestor(sha, tip):
                cand = self.store.get_candidate(self.campaign, d.candidate_id)
                return cand is not None and cand.state is CandidateState.REVERTED
        return False

    # -- the ledger -----------------------------------------------------------------------------
    def record_keep(
        self,
        cand: Candidate,
        inc: Incumbent,
        *,
        before: str,
        verdict: Verdict | None = None,
        sigma: float | None = None,
        how: str = "",
    ) -> Decision:
        reason = "kept: " + (verdict.describe(self.cfg.metric) if verdict else "incumbent moved")
        return self._record(
            cand,
            DecisionKind.KEPT,
            reason + how,
            metric=inc.metric,
            delta=verdict.delta if verdict else None,
            sigma=sigma,
            before=before,
            after=inc.sha,
        )

    def decide(
        self,
        cand: Candidate,
        kind: DecisionKind,
        reason: str,
        verdict: Verdict | None = None,
        sigma: float | None = None,
    ) -> Decision:
        """Any decision but a keep: the incumbent stays where it is."""
        inc = self.store.get_incumbent(self.campaign)
        return self._record(
            cand,
            kind,
            reason,
            metric=verdict.estimate if verdict else None,
            delta=verdict.delta if verdict else None,
            sigma=sigma,
            before=inc.sha,
            after=inc.sha,
        )

    def _record(
        self,
        cand: Candidate,
        kind: DecisionKind,
        reason: str,
        *,
        metric: float | None,
        delta: float | None,
        sigma: float | None,
        before: str,
        after: str,
    ) -> Decision:
        decision = Decision(
            campaign=self.campaign,
            candidate_id=cand.id,
            kind=kind,
            reason=reason,
            metric=metric,
            delta=delta,
            sigma=sigma,
            incumbent_before=before,
            incumbent_after=after,
        )
        self.store.record_decision(decision)
        self.finish(cand, decision)
        return decision

    def finish(self, cand: Candidate, decision: Decision) -> None:
        cand.state = CandidateState(decision.kind.value)
        cand.reason = decision.reason
        self.store.update_candidate(cand)

    def revert(self, inc: Incumbent, back_to: Incumbent, why: str) -> bool:
        """Undo a keep that was merged untried and could not be measured: the incumbent goes
        back to the commit it replaced (its candidate becomes `reverted` first, then the
        compare-and-set), and the best branch follows. False if another controller moved it."""
        assert inc.candidate_id is not None
        cand = self.store.get_candidate(self.campaign, inc.candidate_id)
        assert cand is not None
        if cand.state is CandidateState.KEPT:  # first: a crash after it reverts again
            cand.state = CandidateState.REVERTED
            cand.reason = f"{cand.reason}; reverted: {why}"
            self.store.update_candidate(cand)
        if not self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=back_to):
            return False
        self.sync_best_branch()
        log.error("c%d reverted, the incumbent is %s again: %s", cand.id, back_to.sha[:10], why)
        return True
