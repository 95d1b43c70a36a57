"""Short screens (multi-fidelity): ASHA's promotion rule, and the rank monitor that stops
screening short where short budgets rank candidates unlike full ones."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from farm.config import MergeConfig
from farm.records import Direction, Outcome, Trial, TrialKind

SHORT_TIMEOUTS = 3  # short screens killed at their budget before farm stops screening short


def promoted(better: int, n: int, *, share: float) -> tuple[bool, int, int]:
    """ASHA's promotion rule for a short screen: (promoted, its rank, how many go on) among
    the n short screens against the same incumbent, `better` of them better than it, the
    best ceil(share·n) going on (the first always does: there is nothing to rank it by)."""
    allowed = math.ceil(share * n - 1e-9)
    return 1 + better <= allowed, 1 + better, allowed


class Cohort:
    """The short screens ranked against one incumbent, their metrics kept sorted: a held
    screen is ranked again as others come in, so a rank is a bisection, not a scan."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.members: set[int] = set()  # candidates whose short screen is in it

    def add(self, candidate: int, value: float) -> None:
        if candidate not in self.members:
            self.members.add(candidate)
            bisect.insort(self.values, value)

    def standing(self, candidate: int, value: float, direction: Direction) -> tuple[int, int]:
        """(how many of the others are better than `value`, how many with it in all)."""
        below = bisect.bisect_left(self.values, value)
        above = len(self.values) - bisect.bisect_right(self.values, value)
        better = below if direction is Direction.MINIMIZE else above
        return better, len(self.values) + (candidate not in self.members)


def fidelity_pairs(trials: Sequence[Trial]) -> list[tuple[str, float, float]]:
    """(the incumbent it was ranked against, short screen, full screen) of each candidate
    whose screens at both budgets gave a metric."""
    short = {
        t.candidate_id: (t.reference, t.result.metric)
        for t in trials
        if t.kind is TrialKind.SHORT and t.result and t.result.metric is not None
    }
    return [
        (*short[t.candidate_id], t.result.metric)
        for t in trials
        if t.kind is TrialKind.CANDIDATE
        and t.candidate_id in short
        and t.result
        and t.result.metric is not None
    ]


@dataclass(frozen=True)
class Fidelity:
    """How short screens rank candidates against full budgets (`rank_agreement`)."""

    tau: float | None  # Kendall's τ; None before any pair
    pairs: int
    timeouts: int  # short screens killed at screen_budget_s: the target ignores FARM_BUDGET_S
    apart: bool  # τ below min_rank_agreement over rank_pairs or more: stop screening short

    def describe(self, m: MergeConfig) -> str:
        if self.timeouts >= SHORT_TIMEOUTS:
            return (
                f"{self.timeouts} short screens ran past {m.screen_budget_s:g} s: the target "
                "does not train within FARM_BUDGET_S; stopped, new candidates screen in full"
            )
        if self.tau is None:
            return f"no candidate has run at both budgets yet (τ needs {m.rank_pairs} pairs)"
        said = f"Kendall's τ {self.tau:+.2f} over {self.pairs} pairs"
        if self.apart:
            return said + f" < {m.min_rank_agreement:g}: stopped, new candidates screen in full"
        if self.pairs < m.rank_pairs:
            return said + f" (judged from {m.rank_pairs} pairs)"
        return said + f" (short screens stop below {m.min_rank_agreement:g})"


def fidelity(trials: Sequence[Trial], m: MergeConfig) -> Fidelity:
    """The rank monitor of short screens over these trials."""
    tau, n = rank_agreement(fidelity_pairs(trials))
    late = sum(
        t.kind is TrialKind.SHORT and t.result is not None and t.result.outcome is Outcome.TIMEOUT
        for t in trials
    )
    apart = tau is not None and n >= m.rank_pairs and tau < m.min_rank_agreement
    return Fidelity(tau, n, late, apart or late >= SHORT_TIMEOUTS)


def rank_agreement(pairs: Sequence[tuple[str, float, float]]) -> tuple[float | None, int]:
    """Kendall's τ of short against full-budget screens, and the pairs it is over: of every
    two candidates ranked against the same incumbent (levels move with the incumbent), the
    share both budgets order alike less the share they order apart; ties count for neither.
    None without a pair."""
    by: dict[str, list[tuple[float, float]]] = {}
    for ref, short, full in pairs:
        by.setdefault(ref, []).append((short, full))
    alike = apart = 0
    for runs in by.values():
        for (s1, f1), (s2, f2) in itertools.combinations(runs, 2):
            sign = (s1 - s2) * (f1 - f2)
            alike += sign > 0
            apart += sign < 0
    n = alike + apart
    return ((alike - apart) / n if n else None), n
