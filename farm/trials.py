"""Every trial's id, kind and seed, built in one place.

A trial id names its candidate, generation and role, never a commit, so a controller that
restarts asks for the same ids again and every enqueue is idempotent; the seed is derived
from the id, so a rerun of a trial draws the same numbers.
"""

from __future__ import annotations

import hashlib

from farm.records import TrialKind

# A commit's runs after its screen: confirmations, rebase runs and measuring runs.
RERUNS = (TrialKind.CONFIRM, TrialKind.REBASE, TrialKind.MEASURE)


def baseline_id(i: int) -> str:
    return f"base-{i}"


def baseline_ids(n: int) -> list[str]:
    return [baseline_id(i) for i in range(n)]


def preflight_id(candidate: int) -> str:
    return f"c{candidate}-g0-preflight"


def short_id(candidate: int, look: int = 0) -> str:
    """A candidate's short screen; a later look (on a later incumbent) is numbered."""
    return f"c{candidate}-g0-short{look or ''}"


def screen_id(candidate: int) -> str:
    return f"c{candidate}-g0-screen"


def confirm_id(candidate: int, i: int, *, generation: int = 0) -> str:
    """The i-th re-run of a candidate at its generation (a rebase is generation 1, …)."""
    return f"c{candidate}-g{generation}-confirm{i}"


def measure_id(candidate: int, i: int) -> str:
    """The i-th run measuring a keep afresh (the runs that won it are the luckier draws)."""
    return f"c{candidate}-measure{i}"


def trial_seed(name: str) -> int:
    """A stable seed per trial name (`<campaign>/<trial id>`): a re-run after a crash, or a
    rerun of the campaign, uses the same seeds."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % (2**31)


def seed_of(campaign: str, trial_id: str) -> int:
    return trial_seed(f"{campaign}/{trial_id}")
