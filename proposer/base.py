"""The proposer interface: given a context, deliver up to N drafts to a book.

A `Book` is where drafts go the moment a proposer has them: the campaign's ledger inside
the proposer role (farm/propose.py), a list in memory otherwise. Proposers that pay per
call hold each call's worst-case cost against the spend cap in the book before sending it
and record the answer's drafts there before doing anything else, so neither parallel calls
nor an interrupt can take the spend past the cap or lose a paid call.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from farm.errors import SpendCapReached
from farm.records import Direction, Draft, Edit, edit_hash
from proposer.validate import Rejected, ScoreGuard, Validated, validate_batch

log = logging.getLogger(__name__)

Verdict = Validated | Rejected


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
    detail: str = ""  # the decision's reason; a crash/timeout adds the output tail
    outcome: str = ""  # how its first failed run ended (an Outcome value: timeout, crashed…)
    runs: list[float] = field(default_factory=list)  # its measured values, screening run first
    proposer: str = ""
    strategy: str = ""
    knobs: list[dict[str, Any]] = field(default_factory=list)  # see Draft.knobs
    params: dict[str, float] = field(default_factory=dict)
    parent: int | None = None


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
    sigma: float | None = None  # the seed noise in force for the incumbent
    history: list[LedgerEntry] = field(default_factory=list)  # oldest first
    seen_hashes: set[str] = field(default_factory=set)  # edit hashes of every earlier candidate
    # fingerprint of every earlier candidate's editable files -> its id: one change spelled
    # two ways (say, with more search context) is the same experiment.
    seen_files: dict[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0  # LLM spend as the cap counts it: holds of calls in flight included
    # What a researcher looks at besides the code (filled by the proposer role).
    protected: dict[str, str] = field(default_factory=dict)  # read-only evaluation code
    budget_s: float | None = None  # the wall-clock budget of one trial
    trial_seconds: list[float] = field(default_factory=list)  # how long recent trials took
    start_metric: float | None = None  # the baseline's mean
    incumbent_runs: int = 0  # how many runs the incumbent's estimate averages
    screen_threshold: float | None = None  # Δ a screening run must beat for confirmations
    keep_threshold: float | None = None  # Δ the confirmation mean must beat to be kept
    confirm: int = 0  # confirmation runs per candidate
    lineage: list[int] = field(default_factory=list)  # kept candidates, oldest keep first
    # Without a protected `evaluate`, drafts that forge the printed score are refused.
    guard: ScoreGuard | None = None
    # Names of the evaluation protocol (farm.toml `frozen`): no draft may change them.
    frozen: list[str] = field(default_factory=list)


def files_fingerprint(files: dict[str, str]) -> str:
    """Names a set of editable files by content."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]


def usd(x: float) -> str:
    """Dollars with the precision small caps need ($0.005, not $0.01)."""
    return f"${x:.2f}" if x >= 1 else f"${x:.4g}"


def check_cap(*, spent: float, worst: float, cap: float) -> None:
    """Raise SpendCapReached unless a call costing up to `worst` keeps the spend within `cap`
    (above 0: a paid proposer refuses a cap of 0)."""
    if spent + worst <= cap:
        return
    if spent >= cap:
        why = f"{usd(spent)} spent on proposals"
    else:
        why = (
            f"{usd(spent)} spent, and the next call may cost up to {usd(worst)} "
            f"(max_tokens at the output price, plus its prompt), over the {usd(cap - spent)} left"
        )
    raise SpendCapReached(
        f"spend cap reached: {why}; proposer.spend_cap_usd = {usd(cap)}. Raise it in "
        "farm.toml (or lower proposer.max_tokens) to propose more"
    )


class Book(abc.ABC):
    """Where drafts go as they arrive. Thread-safe: the parallel calls of a batch share one.

    `hold` counts a paid call's worst case against the cap before it is sent; `record`
    writes an answer's drafts (their share of its cost set), settles the call at their sum
    and returns their verdicts, the reasons a repair request quotes; `release` settles a
    call that brought no draft as failed, at what it cost (the API bills no error).
    """

    @abc.abstractmethod
    def hold(self, worst_usd: float, *, cap_usd: float, label: str, tag: Draft) -> str:
        """A hold id; SpendCapReached if the ledger's spend plus `worst_usd` would pass the
        cap. `tag`: the call's proposer, strategy, model and batch."""

    @abc.abstractmethod
    def record(self, drafts: list[Draft], *, hold: str | None = None) -> list[Verdict]:
        """Validate and keep `drafts`; a valid one repeating an earlier draft is rejected."""

    @abc.abstractmethod
    def release(
        self,
        hold: str,
        *,
        reason: str,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
    ) -> None: ...


def screen(
    drafts: list[Draft], ctx: ProposalContext, *, max_edit_bytes: int
) -> tuple[list[Verdict], list[bool]]:
    """Validate drafts on the context's incumbent: (verdicts, which are repeats).

    Besides validation proper (proposer/validate.py), a draft whose files come out the same
    as an earlier candidate's is a repeat, as is one whose edit hash was seen before.
    """
    verdicts = validate_batch(
        drafts,
        files=ctx.files,
        editable=ctx.editable,
        seen_hashes=ctx.seen_hashes,
        max_edit_bytes=max_edit_bytes,
        earlier_hypotheses=[e.hypothesis or e.title for e in ctx.history],
        guard=ctx.guard,
        frozen=ctx.frozen,
    )
    repeats = []
    for i, (d, v) in enumerate(zip(drafts, verdicts, strict=True)):
        if d.extra:  # beyond the number asked for: recorded, never run, whatever it holds
            verdicts[i] = Rejected(d.problem or "beyond the number asked for", v.edit_hash)
            repeats.append(False)
            continue
        # A repeat says the proposer has nothing new; a draft with a problem is broken.
        repeat = bool(d.edits) and not d.problem and edit_hash(d.edits) in ctx.seen_hashes
        if isinstance(v, Validated) and v.warnings:  # flagged, still worth a run
            log.info("draft %r: %s", d.title, "; ".join(v.warnings))
        if isinstance(v, Validated):
            earlier = ctx.seen_files.get(files_fingerprint({**ctx.files, **v.files}))
            if earlier is not None:
                verdicts[i] = Rejected(
                    f"gives the same code as candidate #{earlier}, tried already: "
                    "propose a different change",
                    v.edit_hash,
                )
                repeat = True
        repeats.append(repeat)
    return verdicts, repeats


def remember(
    ctx: ProposalContext, drafts: list[Draft], verdicts: list[Verdict], ids: list[int]
) -> None:
    """Add recorded drafts to what the context has seen, so later answers are not repeats.
    A draft with a problem (an extra too) was never judged on its edits: a repair, or a
    later call, may send them again."""
    for d, v, cid in zip(drafts, verdicts, ids, strict=True):
        if d.edits and not d.problem and not d.extra:
            ctx.seen_hashes.add(edit_hash(d.edits))
        if isinstance(v, Validated):
            ctx.seen_files.setdefault(files_fingerprint({**ctx.files, **v.files}), cid)


class MemoryBook(Book):
    """A book in memory, for a proposer used on its own (tests, scripts): the cap counts
    `ctx.spent_usd` and what this book saw (`spent_usd`); `drafts` and `verdicts` keep
    arrival order, `failed` why calls that brought no draft failed."""

    def __init__(self, ctx: ProposalContext, *, max_edit_bytes: int) -> None:
        self.ctx = ctx
        self.max_edit_bytes = max_edit_bytes
        self.drafts: list[Draft] = []
        self.verdicts: list[Verdict] = []
        self.failed: list[str] = []  # why calls that brought no draft failed
        self._holds: dict[str, float] = {}
        self.spent_usd = ctx.spent_usd
        self._lock = threading.Lock()
        self._calls = 0

    def hold(self, worst_usd: float, *, cap_usd: float, label: str, tag: Draft) -> str:
        with self._lock:
            held = sum(self._holds.values())
            check_cap(spent=self.spent_usd + held, worst=worst_usd, cap=cap_usd)
            self._calls += 1
            self._holds[str(self._calls)] = worst_usd
            return str(self._calls)

    def record(self, drafts: list[Draft], *, hold: str | None = None) -> list[Verdict]:
        with self._lock:
            if hold is not None:
                self._holds.pop(hold, None)
            verdicts, _ = screen(drafts, self.ctx, max_edit_bytes=self.max_edit_bytes)
            first = len(self.drafts) + 1
            remember(self.ctx, drafts, verdicts, list(range(first, first + len(drafts))))
            self.drafts += drafts
            self.verdicts += verdicts
            self.spent_usd += sum(d.cost_usd for d in drafts)
            return verdicts

    def release(
        self,
        hold: str,
        *,
        reason: str,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        with self._lock:
            self._holds.pop(hold, None)
            self.spent_usd += cost_usd
            self.failed.append(reason)


class Proposer(abc.ABC):
    """A backend. `propose` may be slow (an LLM call); the controller runs it off the hot path."""

    name: str = ""
    # Wait for the baseline's measurement before the first call: an LLM's prompt reports
    # the current best and the noise, and is worth little without them.
    needs_baseline: bool = False

    @abc.abstractmethod
    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        """Return up to `n` drafts. Returning fewer (or none) means nothing new to try."""

    def nothing_to_try(self, ctx: ProposalContext) -> str:
        """Why this backend can propose nothing at all for `ctx`'s files ("" when it can).

        Asked once before the baseline runs, so a campaign with nothing to try stops before
        spending trials on it; running dry later is said by `propose` returning nothing.
        """
        return ""

    def propose_into(self, ctx: ProposalContext, n: int, book: Book) -> None:
        """Deliver up to `n` drafts to `book`. Proposers that pay per call override this to
        hold and record call by call; the others record what `propose` returns."""
        drafts = self.propose(ctx, n)
        if drafts:
            book.record(drafts)

    def tell(self, candidate_id: int, *, metric: float | None, ok: bool) -> None:  # noqa: B027
        """Learn a candidate's outcome (for model-based proposers); default ignores it."""
