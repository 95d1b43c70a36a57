"""The proposer interface: given a context, return up to N drafts."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from farm.records import Direction, Draft, Edit


@dataclass
class LedgerEntry:
    """One candidate as the proposer's working memory sees it."""

    candidate_id: int
    title: str
    hypothesis: str
    status: str  # a DecisionKind value, or "in_flight" / "queued"
    edits: list[Edit]
    delta: float | None = None  # improvement over the incumbent of its day; positive = better
    metric: float | None = None
    sigma: float | None = None  # the noise the decision was made against
    detail: str = ""  # rejection reason, crash/timeout output tail, supersede reason


@dataclass
class ProposalContext:
    campaign: str
    program: str  # program.md text
    files: dict[str, str]  # the incumbent's editable files
    editable: list[str]
    metric: str
    direction: Direction
    incumbent_metric: float | None = None
    incumbent_sha: str = ""  # the commit `files` were read from: drafts apply on top of it
    sigma: float | None = None
    history: list[LedgerEntry] = field(default_factory=list)  # oldest first
    seen_hashes: set[str] = field(default_factory=set)  # edit hashes of every earlier candidate
    spent_usd: float = 0.0  # LLM cost of every candidate so far: the spend cap survives restarts


class Proposer(abc.ABC):
    """A backend. `propose` may be slow (an LLM call); the controller runs it off the hot path."""

    name: str = ""

    @abc.abstractmethod
    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        """Return up to `n` drafts. Returning fewer (or none) means nothing new to try."""

    def nothing_to_try(self, ctx: ProposalContext) -> str:
        """Why this backend can propose nothing at all for `ctx`'s files ("" when it can).

        Asked once before the baseline runs, so a campaign with nothing to try stops before
        spending trials on it; running dry later is said by `propose` returning nothing.
        """
        return ""

    def tell(self, candidate_id: int, *, metric: float | None, ok: bool) -> None:  # noqa: B027
        """Learn a candidate's outcome (for model-based proposers); default ignores it."""
