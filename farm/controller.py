"""The merge controller: decides what each finished trial means and moves the incumbent.

It is level-triggered: every `step` looks at the store and does whatever the state calls
for (enqueue the baseline, a screen, confirmations; decide; rebase; keep). All trial ids
are deterministic and every write is idempotent, so a controller killed at any point
resumes by simply stepping again.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging

from farm.config import TargetConfig
from farm.errors import FarmError, RefMismatch
from farm.gitops import Repo, best_branch, candidate_branch
from farm.merge import (
    SHORT_TIMEOUTS,
    Baseline,
    NoisePools,
    Verdict,
    baseline,
    fidelity,
    judge,
    mean,
    offset_error,
    paired_bar,
    paired_spread,
    placed,
    promoted,
    runs_of,
    sequential,
    smallest_delta,
)
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
from workers.metric import missing_metric_note

log = logging.getLogger(__name__)

MIN_QUEUE = 2  # trials kept waiting when the slot count is unknown (separate dispatchers)
# Baseline runs asked for first: if they agree, the target is deterministic and the rest of
# `repeats` would be spent on nothing (more go in the first wave when slots are free).
FIRST_BASELINE = 3
RERUNS = (TrialKind.CONFIRM, TrialKind.REBASE)  # a commit's runs after its screen


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
        self._broken: set[int] = set()  # merges whose measuring runs all failed (said once)
        self._kept: dict[str, Decision] = {}  # keep decisions by the incumbent they made
        self._pools: NoisePools | None = None  # loaded at the first judgement
        self._finished: dict[str, Trial] = {}  # a finished trial never changes again (no files)
        self._base: Baseline | None = None  # the baseline's summary, once it is in
        # Short screens and the full screens of their candidates, by trial id (loaded at the
        # first short screen), and whether their ranks disagreed enough to stop screening short.
        self._fidelity: dict[str, Trial] | None = None
        self._short_off = False
        # Paired screens: each reference's partner run, and every finished screen's gap to
        # its partner by candidate id (loaded at the first screen judged).
        self._partners: dict[str, Trial] = {}
        self._gaps: dict[int, float] | None = None
        self._paired_said = False
        self._classes: dict[str, str] = {}  # the hardware class of each reference's runs
        self._unplaced_said: set[str] = set()  # classes without an offset, said once
        self._cleared_ids: set[int] = set()  # candidates past pre-flight and short screen
        # Lines for the person running the campaign, said once (the caller prints them).
        self.notices: list[str] = []

    # -- the loop body ----------------------------------------------------------------------
    def step(self, *, slots: int | None, promote: bool = True) -> list[Decision]:
        """One reconcile pass. Returns the decisions made in it.

        `slots`: how many trials the dispatchers run at once; None when they are other
        processes and the number is unknown.
        """
        made: list[Decision] = []
        self._reconcile_baseline(slots)
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        inc = self.store.get_incumbent(self.campaign)
        running = self.store.list_candidates(self.campaign, {CandidateState.RUNNING})
        self._note_short_screens(running)
        for cand in running:
            decision = self._reconcile_candidate(cand, inc, camp)
            if decision is not None:
                made.append(decision)
                if decision.kind is DecisionKind.KEPT:
                    inc = self.store.get_incumbent(self.campaign)
        self._measure_incumbent(inc)
        if promote:
            self._promote(slots, inc)
        return made

    def baseline_done(self) -> bool:
        camp = self.store.get_campaign(self.campaign)
        return camp is not None and camp.sigma is not None

    # -- baseline -------------------------------------------------------------------------
    def _reconcile_baseline(self, slots: int | None) -> None:
        camp = self.store.get_campaign(self.campaign)
        assert camp is not None
        if camp.sigma is not None:
            return
        repeats = self.cfg.merge.repeats
        first = min(repeats, max(FIRST_BASELINE, slots or 0))
        trials = [self._ensure_trial(f"base-{i}", TrialKind.BASELINE, None) for i in range(first)]
        if not all(t.state.is_finished() for t in trials):
            return
        runs = runs_of(trials)
        if not runs:  # none ran: more runs of a broken target would be spent on nothing
            raise BaselineFailed(self._baseline_failure(trials))
        early = (
            len(trials) < repeats
            and len(runs) >= FIRST_BASELINE
            and baseline(runs, self.cfg.merge).noise.deterministic
        )
        if len(trials) < repeats and not early:
            trials += [
                self._ensure_trial(f"base-{i}", TrialKind.BASELINE, None)
                for i in range(first, repeats)
            ]
            if not all(t.state.is_finished() for t in trials):
                return
            runs = runs_of(trials)
        if len(runs) < 2:
            raise BaselineFailed(self._baseline_failure(trials))
        base = self._base = baseline(runs, self.cfg.merge)
        found, metrics = base.noise, base.values
        self._pool(camp.start_sha, metrics, key="baseline")
        inc = self.store.get_incumbent(self.campaign)
        updated = Incumbent(
            sha=inc.sha, metric=found.center, runs=len(metrics), candidate_id=None, files=inc.files
        )
        self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=updated)
        self.store.set_baseline(
            self.campaign, metric=found.center, runs=len(metrics), sigma=found.sigma
        )
        said = base.describe(self.cfg.metric)
        log.info("%s", said)
        if found.deterministic or found.outliers or len(base.offsets) > 1:
            self.notices.append(said)

    def _placed(self, trials: list[Trial]) -> list[float]:
        """The ok runs' metrics on the baseline's scale: each less its hardware class's
        offset (measured on the baseline); runs on a class the baseline did not run on
        enough are left out (farm.merge.placed)."""
        runs = runs_of(trials)
        return placed([v for _, v, _ in runs], [c for _, _, c in runs], self._offsets())

    def _baseline(self) -> Baseline | None:
        """The baseline's summary once it is in (read back from its trials after a restart)."""
        if self._base is None and self.baseline_done():
            base = [
                self.store.get_trial(self.campaign, f"base-{i}")
                for i in range(self.cfg.merge.repeats)
            ]
            self._base = baseline(runs_of([t for t in base if t is not None]), self.cfg.merge)
        return self._base

    def _offsets(self) -> dict[str, float]:
        """Hardware class offsets measured on the baseline (none before it is in)."""
        base = self._baseline()
        return base.offsets if base else {}

    def _runs_behind(self, ref: Incumbent, runs: list[Trial]) -> float:
        """How many runs the reference's estimate is worth against these runs: fewer when
        they sit on classes whose offsets the baseline measured from few runs."""
        offsets = self._offsets()
        classes = [c for _, _, c in runs_of(runs) if c in offsets][1:]  # the screen only gates
        base = self._baseline()
        extra = offset_error(classes, base.counts) if base else 0.0
        return ref.runs if not extra else 1 / (1 / max(ref.runs, 1) + extra)

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
    def _promote(self, slots: int | None, inc: Incumbent) -> None:
        """Start queued candidates while fewer trials are waiting than slots can take."""
        counts = self.store.count_trials(self.campaign)
        queued, running = counts[TrialState.QUEUED], counts[TrialState.RUNNING]
        # Slots unknown (separate dispatchers): keep as many trials waiting as are running.
        demand = max(running, MIN_QUEUE) - queued if slots is None else slots - queued - running
        if demand <= 0:
            return
        for cand in self.store.list_candidates(self.campaign, {CandidateState.QUEUED}):
            if demand <= 0:
                break
            if cand.base_sha != inc.sha:
                # Drafted before the incumbent last moved: start it on the incumbent now
                # rather than rebase and re-run it after it wins (or not at all).
                why = self._move_onto(cand, inc)
                if why:
                    self._decide(
                        cand,
                        DecisionKind.SUPERSEDED,
                        f"drafted on {cand.base_sha[:10]}; no longer applies on the incumbent "
                        f"{inc.sha[:10]}: {why}",
                    )
                    continue
            demand -= 1
            cand.commit_sha = self._commit(cand, rebased=False)
            cand.state = CandidateState.RUNNING
            self.store.update_candidate(cand)
            if self._cleared(cand) is True:
                self._ensure_screen(cand)

    def _cleared(self, cand: Candidate) -> Decision | bool:
        """Whether a new candidate may take a full budget: True once its pre-flight passed
        and its short screen promoted it, False while either runs, else their decision."""
        if cand.id in self._cleared_ids:
            return True
        flight = self._preflight(cand)
        cleared = self._short_screen(cand) if flight is True else flight
        if cleared is True:
            self._cleared_ids.add(cand.id)
        return cleared

    def _preflight(self, cand: Candidate) -> Decision | bool:
        """Whether a new candidate may take a full budget: True once its pre-flight passed
        (or none is asked for: `[merge] preflight_s` = 0, or its screen started without
        one), False while it runs, a `crashed` decision when it failed."""
        seconds = self.cfg.merge.preflight_s
        trial_id = f"c{cand.id}-g0-preflight"
        if seconds <= 0:
            return True
        screen = f"c{cand.id}-g0-screen"
        if (
            trial_id not in self._finished
            and self.store.get_trial(self.campaign, trial_id) is None
            and self.store.get_trial(self.campaign, screen) is not None
        ):
            return True  # its screen started before preflight_s was set
        trial = self._ensure_trial(trial_id, TrialKind.PREFLIGHT, cand)
        if not trial.state.is_finished():
            return False
        failed = self._failure(trial, f"failed its {seconds:g} s pre-flight: the run")
        return self._decide(cand, DecisionKind.CRASHED, failed) if failed else True

    def _short_screen(self, cand: Candidate) -> Decision | bool:
        """Whether a new candidate's short screen ([merge] screen_budget_s) promoted it: True
        (or none is asked for, or screening short has stopped), False while it runs, a
        `crashed` or `discarded` decision when it failed or ranked below the best share."""
        m = self.cfg.merge
        if m.screen_budget_s <= 0:
            return True
        trial_id, screen = f"c{cand.id}-g0-short", f"c{cand.id}-g0-screen"
        if self._trial(screen):
            return True  # promoted already, or screened at the full budget from the start
        short = self._trial(trial_id)
        if short is None:
            if self.screening_stopped():
                return True
            short = self._ensure_trial(trial_id, TrialKind.SHORT, cand)
        if not short.state.is_finished():
            return False
        if short.result and short.result.outcome is Outcome.TIMEOUT:
            return True  # says nothing of the candidate (the monitor counts these)
        what = f"short screen ({m.screen_budget_s:g} s)"
        failed = self._failure(short, what)
        if failed:
            return self._decide(cand, DecisionKind.CRASHED, failed)
        assert short.result is not None and short.result.metric is not None
        others = [
            t.result.metric
            for t in self._fidelity_runs().values()
            if t.kind is TrialKind.SHORT
            and t.reference == short.reference
            and t.candidate_id != cand.id
            and t.result
            and t.result.metric is not None
        ]
        value = short.result.metric
        go, rank, allowed = promoted(value, others, share=m.promote, direction=self.cfg.direction)
        if go:
            return True
        return self._decide(
            cand,
            DecisionKind.DISCARDED,
            f"{what}: {self.cfg.metric} {value:.6g} ranked {rank} of {len(others) + 1} against "
            f"{short.reference[:10]}; the best {allowed} went on to a full budget",
        )

    def _note_short_screens(self, running: list[Candidate]) -> None:
        """Take in every short screen that has finished, before any is ranked: a short screen
        is ranked against all those in (ASHA's rule), whichever candidate comes first."""
        if self.cfg.merge.screen_budget_s <= 0:
            return
        runs = self._fidelity_runs()
        for cand in running:
            short = self._trial(f"c{cand.id}-g0-short")
            if short is not None and short.state.is_finished():
                runs[short.id] = short

    def _trial(self, trial_id: str) -> Trial | None:
        """The trial with this id, if it exists (a finished one from memory)."""
        if trial_id in self._finished:
            return self._finished[trial_id]
        found = self.store.get_trial(self.campaign, trial_id)
        if found is not None and found.state.is_finished():  # kept without its files
            self._finished[trial_id] = found = dataclasses.replace(found, files={})
        return found

    def _fidelity_runs(self) -> dict[str, Trial]:
        """The finished short screens and the full screens of their candidates, by trial id."""
        if self._fidelity is None:
            done = self.store.list_trials(self.campaign, states={TrialState.DONE})
            shorts = {t.candidate_id for t in done if t.kind is TrialKind.SHORT}
            self._fidelity = {
                t.id: dataclasses.replace(t, files={})
                for t in done
                if t.kind is TrialKind.SHORT
                or (t.kind is TrialKind.CANDIDATE and t.candidate_id in shorts)
            }
        return self._fidelity

    def screening_stopped(self) -> bool:
        """Whether short screens stopped ranking candidates as full budgets do (Kendall's τ
        below min_rank_agreement over rank_pairs or more pairs): then, for the rest of the
        campaign, new candidates are screened at the full budget alone."""
        m = self.cfg.merge
        if not self._short_off:
            found = fidelity(list(self._fidelity_runs().values()), m)
            if found.apart:
                self._short_off = True
                said = (
                    f"short screens ({m.screen_budget_s:g} s) rank candidates unlike full "
                    f"budgets: Kendall's τ {found.tau:.2f} over {found.pairs} pairs < "
                    f"min_rank_agreement {m.min_rank_agreement:g}; new candidates are "
                    "screened at the full budget from now on"
                    if found.timeouts < SHORT_TIMEOUTS
                    else f"{found.timeouts} short screens ran past screen_budget_s = "
                    f"{m.screen_budget_s:g} s without a metric: make the target train for "
                    "FARM_BUDGET_S seconds (farm sets it for every trial); new candidates are "
                    "screened at the full budget from now on"
                )
                log.warning("%s", said)
                self.notices.append(said)
        return self._short_off

    def _ensure_screen(self, cand: Candidate) -> Trial:
        trial_id = f"c{cand.id}-g0-screen"
        found = self._trial(trial_id)
        if found is not None:
            return found
        partner = self._partner_of(cand.base_sha) if self.cfg.merge.paired else None
        return self._ensure_trial(trial_id, TrialKind.CANDIDATE, cand, partner=partner)

    def _partner_of(self, sha: str) -> Trial | None:
        """The run of commit `sha` that a screen against it shares its seed with (common
        random numbers): the baseline's first run, or the first re-run of the candidate that
        made `sha` the incumbent (not its screen: that passed a gate, so it is biased); None
        while it has none (a merge on evidence, before its measuring runs)."""
        if sha not in self._partners:
            if sha == self.start_sha:
                found = self._trial("base-0")
            else:
                found = next(iter(self._reruns(sha)), None)
            if found is None:
                return None
            self._partners[sha] = found
        return self._partners[sha]

    def _reruns(self, sha: str) -> list[Trial]:
        """The re-runs of commit `sha` by the keep that made it the incumbent (not its
        screen: that passed a gate, so it is biased)."""
        kept = self._kept_decision(sha).candidate_id
        return [
            t
            for t in self.store.list_trials(self.campaign, candidate_id=kept)
            if t.commit_sha == sha and t.kind in RERUNS
        ]

    def _class_of(self, sha: str) -> str:
        """The hardware class most runs of commit `sha` were on: where its challengers'
        re-runs go if a slot of it is free, so that the offsets between classes cancel (and
        none lands on a class the baseline did not run on twice, where it would be left
        out). The baseline's for the start commit; a keep's own re-runs, or its reference's
        while they are out; "" before the baseline is in."""
        offsets = self._offsets()
        if not offsets:
            return ""
        if sha not in self._classes:
            if sha == self.start_sha:
                base = self._baseline()
                assert base is not None  # offsets come from it
                ran = base.classes
            else:
                ran = [c for _, _, c in runs_of(self._reruns(sha)) if c in offsets]
            if not ran:
                return self._class_of(self._kept_decision(sha).incumbent_before)
            self._classes[sha] = max(sorted(set(ran)), key=ran.count)
        return self._classes[sha]

    def _paired_gaps(self) -> dict[int, float]:
        """Every finished screen's gap to its partner run, by candidate id."""
        if self._gaps is None:
            done = self.store.list_trials(self.campaign, states={TrialState.DONE})
            by_id = {t.id: t for t in done}
            gaps = (
                (t.candidate_id, self._gap(t, by_id[t.partner]))
                for t in done
                if t.kind is TrialKind.CANDIDATE and t.partner in by_id
            )
            self._gaps = {c: g for c, g in gaps if c is not None and g is not None}
        return self._gaps

    def _gap(self, screen: Trial, partner: Trial) -> float | None:
        """How much the screen improved on its partner run (both on the baseline's scale);
        None if either has no comparable metric."""
        both = self._placed([partner, screen])
        if len(both) < 2:
            return None
        return self.cfg.direction.improvement(old=both[0], new=both[1])

    def _paired_gate(self, screen: Trial, sigma: float, incumbent_runs: float) -> Verdict | None:
        """The screen's gate on its gap to its partner run, where the campaign's screens show
        that pairing at least halves the variance (farm.merge.paired_bar); else None."""
        partner = self._trial(screen.partner) if screen.partner else None
        gap = self._gap(screen, partner) if partner else None
        if gap is None or not sigma > 0:
            return None
        assert screen.candidate_id is not None  # a screen is a candidate's
        gaps = self._paired_gaps()
        gaps[screen.candidate_id] = gap
        others = [g for c, g in gaps.items() if c != screen.candidate_id]
        m = self.cfg.merge
        bar = paired_bar(paired_spread(others), sigma=sigma, incumbent_runs=incumbent_runs, m=m)
        if bar is None:
            return None
        if not self._paired_said:
            self._paired_said = True
            said = (
                f"screens share a seed with a run of their reference (common random numbers) "
                f"and their gaps to it spread σ {bar / m.paired_z:.3g} against σ "
                f"{sigma:.3g} between runs: a screen now earns confirmations beyond "
                f"paired_z·{bar / m.paired_z:.3g} of its gap"
            )
            log.info("%s", said)
            self.notices.append(said)
        (value,) = self._placed([screen])
        return Verdict(passed=gap > bar, estimate=value, delta=gap, threshold=bar)

    def _ensure_trial(
        self,
        trial_id: str,
        kind: TrialKind,
        cand: Candidate | None,
        *,
        partner: Trial | None = None,
    ) -> Trial:
        """The trial with this id, queued now if it does not exist yet (None: the baseline);
        with `partner`, it runs with the partner's seed."""
        existing = self._trial(trial_id)
        if existing is not None:
            return existing
        trial = Trial(
            id=trial_id,
            campaign=self.campaign,
            kind=kind,
            commit_sha=cand.commit_sha if cand else self.start_sha,
            base_sha=self.start_sha,
            seed=partner.seed if partner else trial_seed(f"{self.campaign}/{trial_id}"),
            candidate_id=cand.id if cand else None,
            files=cand.files if cand else {},
            reference=cand.base_sha if cand and kind is TrialKind.SHORT else "",
            partner=partner.id if partner else "",
            prefer=self._class_of(cand.base_sha) if cand and kind in RERUNS else "",
        )
        self.store.enqueue_trial(trial)
        return trial

    def _reconcile_candidate(
        self, cand: Candidate, inc: Incumbent, camp: Campaign
    ) -> Decision | None:
        """Take the candidate as far as its finished trials allow (`inc`, `camp`: as read at
        the start of this step; moving the incumbent is a compare-and-set all the same)."""
        decided = self._existing_decision(cand)
        if decided is not None:
            self._finish(cand, decided)
            return None
        if inc.sha == cand.commit_sha:  # kept, but the decision was not written before a crash
            return self._record_keep(cand, inc, before=inc.sha)
        m = self.cfg.merge
        confirm = self._confirm()
        # A candidate first has to beat the commit it was written against; one on a stale
        # base that does is then rebased and judged again against the incumbent.
        ref = inc if cand.base_sha == inc.sha else None
        if cand.generation == 0:
            judged = self._screen_and_confirm(cand, inc, camp, ref, stages=1 + confirm)
            if not isinstance(judged, tuple):
                return judged
            verdict, sigma, values = judged
            estimated_from = len(values) or 1
        else:
            # A rebased winner has proved itself once and goes straight to its re-runs on
            # the incumbent (at least one, even with confirm = 0).
            runs = self._ensure_confirms(cand)
            if not all(t.state.is_finished() for t in runs):
                return None
            for i, t in enumerate(runs):
                failed = self._failure(t, f"confirmation run {i + 1}")
                if failed:
                    return self._decide(cand, DecisionKind.CRASHED, failed)
            assert camp.sigma is not None and inc.metric is not None  # screened after the baseline
            ref = ref or self._estimate_of(cand.base_sha, camp)
            sigma = self._sigma_at(ref.sha, camp)
            values = self._placed(runs)
            verdict = self._judge(values, ref, sigma, m.z)
            estimated_from = len(values)
            if not verdict.passed:  # no better than `ref`: runs at its level
                self._pool(ref.sha, values, key=f"c{cand.id}")
                return self._decide(
                    cand,
                    DecisionKind.DISCARDED,
                    "rebased, its re-runs did not hold up: " + verdict.describe(self.cfg.metric),
                    verdict,
                    sigma,
                )
        metric = verdict.estimate
        how = ""
        if cand.base_sha != inc.sha:
            if cand.generation < m.max_rebases:
                return self._rebase(cand, inc)
            # Re-run on a newer incumbent as often as allowed, and it moved again meanwhile:
            # with many slots, keeps would chase each other forever. Merge it on the
            # evidence it has, its gain added to the incumbent's estimate.
            superseded = self._move_winner(cand, inc)
            if superseded:
                return superseded
            assert inc.metric is not None
            metric = self.cfg.direction.shift(inc.metric, by=verdict.delta)
            how = (
                f"; merged onto {inc.sha[:10]} untried, {self.cfg.metric} estimated "
                f"{metric:.6g} until its own runs measure it"
            )
            cand.commit_sha = self._commit(cand, rebased=True)
            self.store.update_candidate(cand)  # so a crash from here on resumes as a keep
        new = Incumbent(
            sha=cand.commit_sha,
            metric=metric,
            runs=0 if how else estimated_from,  # 0: estimated, to be measured
            candidate_id=cand.id,
            files=cand.files,
        )
        if not self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=new):
            return None  # another controller moved it; the next step rebases
        self.repo.fast_forward(best_branch(self.campaign), old=inc.sha, new=cand.commit_sha)
        if not how:  # its own runs, at its level
            self._pool(new.sha, values, key=f"c{cand.id}")
        return self._record_keep(cand, new, before=inc.sha, verdict=verdict, sigma=sigma, how=how)

    def _screen_and_confirm(
        self, cand: Candidate, inc: Incumbent, camp: Campaign, ref: Incumbent | None, *, stages: int
    ) -> Decision | tuple[Verdict, float, list[float]] | None:
        """A new candidate's screen, then confirmations one at a time (other candidates take
        the other slots) until the sequential test decides. A decision if it crashed or lost;
        None while a run is still out; for a winner (its verdict, σ, its confirmations)."""
        cleared = self._cleared(cand)
        if cleared is not True:
            return None if cleared is False else cleared
        runs = [self._ensure_screen(cand)]
        while True:
            last = runs[-1]
            if not last.state.is_finished():
                return None
            if len(runs) == 1 and self._fidelity and f"c{cand.id}-g0-short" in self._fidelity:
                self._fidelity[last.id] = last
            what = f"confirmation run {len(runs) - 1}" if len(runs) > 1 else "screening run"
            failed = self._failure(last, what)
            if failed:
                return self._decide(cand, DecisionKind.CRASHED, failed)
            if camp.sigma is None or inc.metric is None:
                return None  # the baseline is still running
            ref = ref or self._estimate_of(cand.base_sha, camp)
            assert ref.metric is not None
            sigma = self._sigma_at(ref.sha, camp)
            values = self._placed(runs)
            unplaced = len(runs) - len(values)
            if unplaced > stages:
                return self._decide(cand, DecisionKind.DISCARDED, self._unplaced(runs))
            if unplaced and not self._placed([last]):  # another run, on comparable hardware
                self._say_unplaced(last)
                trial_id = f"c{cand.id}-g0-confirm{len(runs) - 1}"
                runs.append(self._ensure_trial(trial_id, TrialKind.CONFIRM, cand))
                continue
            behind = self._runs_behind(ref, runs)
            gate = None
            if len(runs) == 1:
                confirm0 = self._trial(f"c{cand.id}-g0-confirm0")
                if confirm0 is not None:  # the screen passed its gate when it was judged
                    runs.append(confirm0)
                    continue
                gate = self._paired_gate(last, sigma, behind)
            keep, verdict = sequential(
                values,
                m=self.cfg.merge,
                stages=stages,
                incumbent=ref.metric,
                incumbent_runs=behind,
                sigma=sigma,
                direction=self.cfg.direction,
                gate=gate,
            )
            if keep is None:
                trial_id = f"c{cand.id}-g0-confirm{len(runs) - 1}"
                runs.append(self._ensure_trial(trial_id, TrialKind.CONFIRM, cand))
                continue
            repeats = values[1:]  # its level, for σ (the screen passed a gate)
            if not keep:  # no better than `ref`: its runs are at its level
                self._pool(ref.sha, repeats, key=f"c{cand.id}")
                how = f"after {len(repeats)} confirmations" if repeats else "screen"
                if gate and not repeats:
                    how += f", paired with {last.partner} (the same seed)"
                return self._decide(
                    cand,
                    DecisionKind.DISCARDED,
                    f"{how}: " + verdict.describe(self.cfg.metric) + self._by_class(runs),
                    verdict,
                    sigma,
                )
            return verdict, sigma, repeats

    def _by_class(self, runs: list[Trial]) -> str:
        """What a reason says of a mixed fleet: the runs per class and the offsets used."""
        offsets = self._offsets()
        if len(offsets) < 2:
            return ""
        count = collections.Counter(c for _, _, c in runs_of(runs) if c in offsets)
        said = "; on the baseline's scale: " + ", ".join(
            f"{n} on {c or 'unknown'} ({offsets[c]:+.3g})" for c, n in sorted(count.items())
        )
        prefer = next((t.prefer for t in runs if t.prefer), "")
        return said + (f"; re-runs asked for {prefer}, its reference's class" if prefer else "")

    def _say_unplaced(self, run: Trial) -> None:
        """Say once per class that its runs are left out (each costs another run)."""
        assert run.result is not None  # it ran, and was not placed
        hardware = run.result.hardware
        if hardware in self._unplaced_said:
            return
        self._unplaced_said.add(hardware)
        said = (
            f"runs on {hardware or 'unknown'} are left out of every decision and run again "
            f"elsewhere: the baseline ran there fewer than twice, so its offset is unknown; "
            f"raise [merge] repeats (now {self.cfg.merge.repeats}) so that every class gets "
            "two baseline runs, or keep trials off it with [resources] labels"
        )
        log.warning("%s", said)
        self.notices.append(said)

    def _unplaced(self, runs: list[Trial]) -> str:
        offsets = self._offsets()
        odd = sorted({c for _, _, c in runs_of(runs) if c not in offsets})
        return (
            f"{len(runs)} runs, most on hardware the baseline did not run on twice "
            f"({', '.join(c or 'unknown' for c in odd)}): it cannot be compared there; "
            f"the baseline ran on {', '.join(c or 'unknown' for c in sorted(offsets))}"
        )

    def _ensure_confirms(self, cand: Candidate) -> list[Trial]:
        """The candidate's re-runs: `confirm` of them, or its rebase runs on the incumbent."""
        kind = TrialKind.REBASE if cand.generation else TrialKind.CONFIRM
        n = max(self._confirm(), 1) if cand.generation else self._confirm()
        return [
            self._ensure_trial(f"c{cand.id}-g{cand.generation}-confirm{i}", kind, cand)
            for i in range(n)
        ]

    def _estimate_of(self, sha: str, camp: Campaign) -> Incumbent:
        """The metric estimate a former incumbent had: its baseline, or its keep decision."""
        if sha == camp.start_sha:
            return Incumbent(sha=sha, metric=camp.baseline_metric, runs=camp.baseline_runs)
        kept = self._kept_decision(sha)
        measured = self._measured(kept.candidate_id, create=False)
        if measured is not None:
            return Incumbent(sha=sha, metric=mean(measured), runs=len(measured))
        return Incumbent(sha=sha, metric=kept.metric, runs=self._confirm() or 1)

    def _confirm(self) -> int:
        """Confirmation runs per candidate: `confirm`, none on a deterministic target (σ = 0:
        the same code gives the same number again)."""
        base = self._baseline()
        return 0 if base and base.noise.deterministic else self.cfg.merge.confirm

    def _kept_decision(self, sha: str) -> Decision:
        """The keep that made `sha` the incumbent."""
        if sha not in self._kept:  # decisions are append-only: read them again only then
            self._kept = {
                d.incumbent_after: d
                for d in self.store.list_decisions(self.campaign)
                if d.kind is DecisionKind.KEPT
            }
        return self._kept[sha]

    def _sigma_at(self, sha: str, camp: Campaign) -> float:
        """The seed noise σ to judge against the commit `sha` with (see NoisePools)."""
        if self._pools is None:
            self._pools = self._load_pools(camp)
        return self._pools.sigma(sha, lambda s: self._kept_decision(s).incumbent_before)

    def _load_pools(self, camp: Campaign) -> NoisePools:
        """The noise pools of what the store holds (once a process; then kept up to date)."""
        pools = NoisePools(start=camp.start_sha, min_dof=max(camp.baseline_runs - 1, 1))
        by_cand: dict[int | None, list[Trial]] = {}
        for t in self.store.list_trials(self.campaign, states={TrialState.DONE}):
            by_cand.setdefault(t.candidate_id, []).append(t)
        pools.add(camp.start_sha, self._placed(by_cand.get(None, [])), key="baseline")
        cands = {c.id: c for c in self.store.list_candidates(self.campaign)}
        for d in self.store.list_decisions(self.campaign):
            cand, runs = cands[d.candidate_id], by_cand.get(d.candidate_id, [])
            repeats = [t for t in runs if t.kind in RERUNS]
            if d.kind is DecisionKind.KEPT:
                own = [t for t in repeats if t.commit_sha == d.incumbent_after]
                pools.add(d.incumbent_after, self._placed(own), key=f"c{cand.id}")
            elif d.kind is DecisionKind.DISCARDED:
                last = [t for t in repeats if t.commit_sha == cand.commit_sha]
                pools.add(cand.base_sha, self._placed(last), key=f"c{cand.id}")
        return pools

    def _pool(self, sha: str, values: list[float], *, key: str) -> None:
        if self._pools is not None:  # else they are loaded, this run included, when needed
            self._pools.add(sha, values, key=key)

    def _measure_incumbent(self, inc: Incumbent) -> None:
        """An incumbent merged on evidence is run until its own runs give its estimate.

        Estimates added up keep every error of the gains behind them (the best of many
        noisy runs looks better than it is), so each one is replaced by a measurement.
        """
        if inc.runs or inc.candidate_id is None:
            return
        values = self._measured(inc.candidate_id, create=True)
        if values is not None:
            value = mean(values)
            log.info("incumbent %s measured: %s %.6g", inc.sha[:10], self.cfg.metric, value)
            updated = dataclasses.replace(inc, metric=value, runs=len(values))
            self.store.cas_incumbent(self.campaign, expected_sha=inc.sha, new=updated)
            self._pool(inc.sha, values, key=f"c{inc.candidate_id}")

    def _measured(self, cand_id: int, *, create: bool) -> list[float] | None:
        """The ok runs' metrics of a merged-untried keep, once all have finished."""
        ids = [f"c{cand_id}-measure{i}" for i in range(max(self._confirm(), 1))]
        if create:
            cand = self.store.get_candidate(self.campaign, cand_id)
            assert cand is not None
            trials = [self._ensure_trial(t, TrialKind.CONFIRM, cand) for t in ids]
        else:
            found = [self.store.get_trial(self.campaign, t) for t in ids]
            trials = [t for t in found if t is not None]
        if len(trials) < len(ids) or not all(t.state.is_finished() for t in trials):
            return None
        values = self._placed(trials)
        if not values:
            if cand_id not in self._broken:
                self._broken.add(cand_id)
                log.error(
                    "every run measuring c%d's untried merge failed: the incumbent may be "
                    "broken; see `farm status` and its trials' output",
                    cand_id,
                )
            return None
        return values

    def _judge(self, values: list[float], inc: Incumbent, sigma: float, z: float) -> Verdict:
        assert inc.metric is not None
        return judge(
            values,
            incumbent=inc.metric,
            incumbent_runs=inc.runs,
            sigma=sigma,
            direction=self.cfg.direction,
            z=z,
            min_delta=smallest_delta(self.cfg.merge, inc.metric),
        )

    def _failure(self, trial: Trial, what: str) -> str:
        if trial.state is TrialState.DEAD:
            return f"{what} never completed: the infrastructure failed {trial.deliveries} times"
        r = trial.result
        assert r is not None
        if r.outcome.is_ok():
            return ""
        if r.outcome is Outcome.NO_METRIC:
            note = missing_metric_note(
                r.output_tail, name=self.cfg.metric, regex=self.cfg.metric_regex
            )
            return f"{what} {r.outcome.value} (exit {r.exit_code}): {note}"
        last = next((ln.strip() for ln in reversed(r.output_tail.splitlines()) if ln.strip()), "")
        detail = f"; last output: {last[:300]}" if last else ""
        return f"{what} {r.outcome.value} (exit {r.exit_code}){detail}"

    def _move_onto(self, cand: Candidate, inc: Incumbent) -> str:
        """Re-apply the candidate's edits on the incumbent. Returns why they do not apply."""
        draft_files = {p: inc.files[p] for p in self.cfg.editable if p in inc.files}
        res = validate_draft(
            Draft(title=cand.title, hypothesis=cand.hypothesis, edits=cand.edits),
            files=draft_files,
            editable=self.cfg.editable,
            seen_hashes=set(),
            max_edit_bytes=self.cfg.proposer.max_edit_bytes,
        )
        if isinstance(res, Rejected):
            return res.reason
        cand.base_sha = inc.sha
        cand.files = {**inc.files, **res.files}
        return ""

    def _commit(self, cand: Candidate, *, rebased: bool) -> str:
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

    def _move_winner(self, cand: Candidate, inc: Incumbent) -> Decision | None:
        """Move a winner on a stale base onto the incumbent, or supersede it if it can't be."""
        base = cand.base_sha
        why = self._move_onto(cand, inc)
        if not why:
            return None
        return self._decide(
            cand,
            DecisionKind.SUPERSEDED,
            f"won on {base[:10]} but no longer applies on the incumbent {inc.sha[:10]}: {why}",
        )

    def _rebase(self, cand: Candidate, inc: Incumbent) -> Decision | None:
        superseded = self._move_winner(cand, inc)
        if superseded:
            return superseded
        cand.generation += 1
        cand.commit_sha = self._commit(cand, rebased=True)
        self.store.update_candidate(cand)
        self._ensure_confirms(cand)
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
        how: str = "",
    ) -> Decision:
        reason = "kept: " + (verdict.describe(self.cfg.metric) if verdict else "incumbent moved")
        if verdict and len(self._offsets()) > 1:
            reason += self._by_class(self.store.list_trials(self.campaign, candidate_id=cand.id))
        reason += how
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
        """After a crash between moving the incumbent and its branch, catch the branch up.

        A branch anywhere else was moved by something outside farm: RefMismatch.
        """
        inc = self.store.get_incumbent(self.campaign)
        branch = best_branch(self.campaign)
        tip = self.repo.ref_sha(f"refs/heads/{branch}")
        if tip is None:
            self.repo.set_branch(branch, inc.sha)
        elif tip != inc.sha:
            if not self.repo.is_ancestor(tip, inc.sha):
                raise RefMismatch(branch, expected=inc.sha, found=tip)
            self.repo.fast_forward(branch, old=tip, new=inc.sha)
