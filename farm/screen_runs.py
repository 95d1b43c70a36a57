"""What a campaign's screens say beside their own metric: each reference's partner run and
the screens' gaps to theirs (paired seeds), the short screens ranked in their incumbent's
cohort and the full screens the rank monitor compares them with. Reads only, as
farm.evidence does; what a finished run says is kept, so a step costs what came in since.
"""

from __future__ import annotations

import dataclasses

from farm.evidence import Evidence
from farm.merge import Cohort
from farm.records import Trial, TrialKind, TrialState
from farm.trials import baseline_ids, short_id


class ScreenRuns:
    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        # Short screens and the full screens of their candidates, by trial id (loaded at the
        # first short screen).
        self._fidelity: dict[str, Trial] | None = None
        self._cohorts: dict[str, Cohort] = {}  # finished short screens by incumbent ranked
        self._partners: dict[str, Trial] = {}  # each reference's partner run (paired)
        self._gaps: dict[int, float] | None = None  # screens' gaps to their partners

    def partner_of(self, sha: str) -> Trial | None:
        """The run of commit `sha` that a screen against it shares its seed with (common
        random numbers): the baseline's first run, or the first re-run of the candidate that
        made `sha` the incumbent (not its screen: that passed a gate, so it is biased); None
        while it has none (a merge on evidence, before its measuring runs)."""
        if sha not in self._partners:
            if sha == self.evidence.start_sha:
                found = self.evidence.trial(baseline_ids(1)[0])
            else:
                found = next(iter(self.evidence.reruns(sha)), None)
            if found is None:
                return None
            self._partners[sha] = found
        return self._partners[sha]

    def gap(self, screen: Trial, partner: Trial) -> float | None:
        """How much the screen improved on its partner run (both on the baseline's scale);
        None if either has no comparable metric."""
        both = self.evidence.placed([partner, screen])
        if len(both) < 2:
            return None
        return self.evidence.cfg.direction.improvement(old=both[0], new=both[1])

    def paired_gaps(self) -> dict[int, float]:
        """Every finished screen's gap to its partner run, by candidate id."""
        if self._gaps is None:
            done = self.evidence.store.list_trials(self.evidence.campaign, states={TrialState.DONE})
            by_id = {t.id: t for t in done}
            gaps = (
                (t.candidate_id, self.gap(t, by_id[t.partner]))
                for t in done
                if t.kind is TrialKind.CANDIDATE and t.partner in by_id
            )
            self._gaps = {c: g for c, g in gaps if c is not None and g is not None}
        return self._gaps

    def fidelity_runs(self) -> dict[str, Trial]:
        """The finished short screens and the full screens of their candidates, by trial id."""
        if self._fidelity is None:
            done = self.evidence.store.list_trials(self.evidence.campaign, states={TrialState.DONE})
            shorts = {t.candidate_id for t in done if t.kind is TrialKind.SHORT}
            self._fidelity, self._cohorts = {}, {}
            for t in done:
                if t.kind is TrialKind.SHORT:
                    self.note_short(t)
                elif t.kind is TrialKind.CANDIDATE and t.candidate_id in shorts:
                    self._fidelity[t.id] = dataclasses.replace(t, files={})
        return self._fidelity

    def note_short(self, short: Trial) -> None:
        """A short screen finished: ranked in its incumbent's cohort from now on."""
        runs = self.fidelity_runs()
        if short.id in runs:
            return
        runs[short.id] = dataclasses.replace(short, files={})
        if short.result and short.result.metric is not None and short.candidate_id is not None:
            cohort = self._cohorts.setdefault(short.reference, Cohort())
            cohort.add(short.candidate_id, short.result.metric)

    def note_screen(self, screen: Trial) -> None:
        """A full screen finished: the rank monitor compares it with its short screen."""
        cand = screen.candidate_id
        if cand is not None and self._fidelity is not None and short_id(cand) in self._fidelity:
            self._fidelity[screen.id] = screen

    def short_standing(self, short: Trial) -> tuple[int, int]:
        """(how many other short screens against the same incumbent are better, how many
        there are with it): what ASHA's rule ranks it by."""
        self.fidelity_runs()
        cohort = self._cohorts.get(short.reference) or Cohort()
        assert short.result is not None and short.result.metric is not None
        assert short.candidate_id is not None  # a short screen is a candidate's
        return cohort.standing(short.candidate_id, short.result.metric, self.evidence.cfg.direction)
