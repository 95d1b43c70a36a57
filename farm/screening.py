"""A new candidate's way to its screen: the gates before a full budget (a pre-flight, a
short screen ranked by ASHA's rule while the rank monitor trusts it) and the screen itself,
with the paired gate where its seed is shared with a run of its reference."""

from __future__ import annotations

from farm.config import TargetConfig
from farm.evidence import Evidence
from farm.merge import SHORT_TIMEOUTS, Verdict, fidelity, paired_bar, paired_spread
from farm.merge.verdicts import Act, Reference, Ruling, Target, preflight_ruling, short_ruling
from farm.recorder import Notices, Recorder
from farm.records import Candidate, Incumbent, Trial, TrialKind
from farm.screen_runs import ScreenRuns
from farm.trials import confirm_id, preflight_id, screen_id, short_id


class Screening:
    def __init__(
        self, *, cfg: TargetConfig, evidence: Evidence, recorder: Recorder, notices: Notices
    ) -> None:
        self.cfg = cfg
        self.target = Target.of(cfg)
        self.evidence = evidence
        self.runs = ScreenRuns(evidence)  # partner runs, paired gaps, short screens' cohorts
        self.recorder = recorder
        self.notices = notices
        self._short_off = False  # short screens stopped ranking like full budgets
        self._judged = -1  # how many short and full screens the rank monitor last saw
        self._cleared: set[int] = set()  # candidates past pre-flight and short screen
        self._confirms: dict[int, int] = {}  # confirmations queued, of candidates in them
        self._looks: dict[int, int] = {}  # each candidate's latest look known (never fewer)
        # Candidates whose short screen is held below the cut (as of their last ruling).
        self._held: dict[int, tuple[Trial, Candidate]] = {}

    def ensure_screen(self, cand: Candidate) -> Trial:
        found = self.evidence.trial(screen_id(cand.id))
        if found is not None:
            return found
        partner = self.runs.partner_of(cand.base_sha) if self.cfg.merge.paired else None
        return self.recorder.ensure_trial(
            screen_id(cand.id), TrialKind.CANDIDATE, cand, partner=partner
        )

    def clear(self, cand: Candidate, inc: Incumbent) -> Ruling:
        """Whether a new candidate may take a full budget: PASS once its pre-flight passed
        and its short screen promoted it (or none is asked for). `inc`: the incumbent now."""
        if cand.id in self._cleared:
            return Ruling(Act.PASS)
        ruling = self._preflight(cand)
        if ruling.act is Act.PASS:
            ruling = self._short_screen(cand, inc)
        if ruling.act is Act.PASS:
            self._cleared.add(cand.id)
        return ruling

    def _preflight(self, cand: Candidate) -> Ruling:
        seconds = self.cfg.merge.preflight_s
        if seconds <= 0:
            return Ruling(Act.PASS)
        trial = self.evidence.trial(preflight_id(cand.id))
        if trial is None and self.evidence.trial(screen_id(cand.id)) is not None:
            return Ruling(Act.PASS)  # its screen started before preflight_s was set
        trial = trial or self.recorder.ensure_trial(
            preflight_id(cand.id), TrialKind.PREFLIGHT, cand
        )
        return preflight_ruling(trial, seconds, self.target)

    def _short_screen(self, cand: Candidate, inc: Incumbent) -> Ruling:
        if self.cfg.merge.screen_budget_s <= 0 or self.evidence.trial(screen_id(cand.id)):
            return Ruling(Act.PASS)  # promoted already, or screened in full from the start
        look, short = self._latest_short(cand)
        if short is None:
            if self.stopped():
                return Ruling(Act.PASS)
            short = self.recorder.ensure_trial(short_id(cand.id), TrialKind.SHORT, cand)
        if not short.state.is_finished():
            return Ruling(Act.WAIT)
        m = self.cfg.merge
        ok = short.result is not None and short.result.metric is not None
        standing = self.runs.short_standing(short) if ok else (0, 1)  # not ranked
        moved = short.reference != inc.sha
        ruling = short_ruling(
            short, standing, m, self.target, moved=moved, last=look + 1 >= m.looks
        )
        if ruling.act is Act.WAIT:
            self._held[cand.id] = (short, cand)
        elif ruling.act is Act.MORE:  # the incumbent moved: a look on it, short or in full
            why = self.recorder.start_on(cand, inc)
            if why:
                return Ruling(Act.SUPERSEDE, f"{ruling.reason}; it no longer applies: {why}")
            if self.stopped():
                return Ruling(Act.PASS)
            self.recorder.ensure_trial(short_id(cand.id, look + 1), TrialKind.SHORT, cand)
            self._looks[cand.id] = look + 1
            return Ruling(Act.WAIT)
        return ruling

    def _latest_short(self, cand: Candidate) -> tuple[int, Trial | None]:
        """The candidate's latest look (its short screen on the latest incumbent it saw)."""
        if cand.id not in self._looks:  # new to this process: what exists, once
            look = 0
            while self.evidence.trial(short_id(cand.id, look + 1)) is not None:
                look += 1
            self._looks[cand.id] = look
        look = self._looks[cand.id]
        return look, self.evidence.trial(short_id(cand.id, look))

    def release(self, idle: int) -> None:
        """Held short screens take the slots nothing else would use, best first: a slot
        running a candidate ranked below the cut beats a slot idling (ASHA does the same),
        and at the end of a campaign the held ones are judged rather than left waiting."""
        better = self.target.direction.improvement
        held = sorted(self._held.values(), key=lambda h: -better(old=0.0, new=_metric(h[0])))
        for _, cand in held[: max(idle, 0)]:
            del self._held[cand.id]
            self._cleared.add(cand.id)
            self.ensure_screen(cand)

    def ahead(self, running: list[Candidate], idle: int) -> None:
        """Run confirmations ahead of the sequential test ([merge] confirm_ahead): a new
        candidate whose screen earned them gets `confirm_ahead` at once, and slots that
        would otherwise idle (`idle`) get the next ones, one per candidate in turn (oldest
        first), up to the `confirm` the test may take. The test still reads them in order
        and stops at its decision, so its error rates stay as they are; runs after it are
        never read. A decision no longer waits for one confirmation after another."""
        most = self.evidence.confirm()
        wave = min(self.cfg.merge.confirm_ahead, most)
        started: dict[int, int] = {}  # each candidate's confirmations
        for cand in running:
            if cand.id not in self._cleared:  # still at its pre-flight or short screen
                continue
            n = self._confirms.get(cand.id, 0)
            while n < most and self.evidence.trial(confirm_id(cand.id, n)):
                n += 1
            if cand.generation == 0 and n:  # its screen earned confirmations
                for i in range(n, wave):
                    self.recorder.ensure_trial(confirm_id(cand.id, i), TrialKind.CONFIRM, cand)
                started[cand.id] = max(n, wave)
        by_id = {c.id: c for c in running}
        while idle > 0 and any(n < most for n in started.values()):
            for cid, n in started.items():
                if idle > 0 and n < most:
                    self.recorder.ensure_trial(confirm_id(cid, n), TrialKind.CONFIRM, by_id[cid])
                    started[cid], idle = n + 1, idle - 1
        self._confirms = started  # trials are never deleted: counted once

    def note_short_screens(self, running: list[Candidate]) -> None:
        """Take in every short screen that has finished, before any is ranked: a short screen
        is ranked against all those in (ASHA's rule), whichever candidate comes first."""
        self._held = {}  # ruled again below, as this step finds them
        if self.cfg.merge.screen_budget_s <= 0:
            return
        for cand in running:
            _, short = self._latest_short(cand)
            if short is not None and short.state.is_finished():
                self.runs.note_short(short)

    def stopped(self) -> bool:
        """Whether short screens stopped ranking candidates as full budgets do (the rank
        monitor, farm.merge.fidelity): then, for the rest of the campaign, new candidates
        are screened at the full budget alone."""
        m = self.cfg.merge
        runs = self.runs.fidelity_runs()
        if not self._short_off and len(runs) != self._judged:  # runs only come in
            self._judged = len(runs)
            found = fidelity(list(runs.values()), m)
            if found.apart:
                self._short_off = True
                self.notices.say(
                    "short",
                    f"short screens ({m.screen_budget_s:g} s) rank candidates unlike full "
                    f"budgets: Kendall's τ {found.tau:.2f} over {found.pairs} pairs < "
                    f"min_rank_agreement {m.min_rank_agreement:g}; new candidates are "
                    "screened at the full budget from now on"
                    if found.timeouts < SHORT_TIMEOUTS
                    else f"{found.timeouts} short screens ran past screen_budget_s = "
                    f"{m.screen_budget_s:g} s without a metric: make the target train for "
                    "FARM_BUDGET_S seconds (farm sets it for every trial); new candidates are "
                    "screened at the full budget from now on",
                    warn=True,
                )
        return self._short_off

    def paired_gate(self, screen: Trial, ref: Reference) -> Verdict | None:
        """The screen's gate on its gap to its partner run, where the campaign's screens show
        that pairing at least halves the variance (farm.merge.paired_bar); else None."""
        partner = self.evidence.trial(screen.partner) if screen.partner else None
        gap = self.runs.gap(screen, partner) if partner else None
        if gap is None or not ref.sigma > 0 or not screen.state.is_finished():
            return None
        assert screen.candidate_id is not None  # a screen is a candidate's
        gaps = self.runs.paired_gaps()
        gaps[screen.candidate_id] = gap
        others = [g for c, g in gaps.items() if c != screen.candidate_id]
        m = self.cfg.merge
        bar = paired_bar(paired_spread(others), sigma=ref.sigma, incumbent_runs=ref.runs, m=m)
        if bar is None:
            return None
        self.notices.say(
            "paired",
            f"screens share a seed with a run of their reference (common random numbers) "
            f"and a gap to it has σ {bar / m.paired_z:.3g} against σ "
            f"{ref.sigma:.3g} between runs: a screen now earns confirmations beyond "
            f"paired_z·{bar / m.paired_z:.3g} of its gap",
        )
        (value,) = self.evidence.placed([screen])
        return Verdict(passed=gap > bar, estimate=value, delta=gap, threshold=bar)


def _metric(trial: Trial) -> float:
    assert trial.result is not None and trial.result.metric is not None  # it finished ok
    return trial.result.metric
