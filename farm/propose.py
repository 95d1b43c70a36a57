"""The proposer role: keeps a backlog of validated candidates ready, off the hot path.

It reads only the store (the incumbent's editable files, the ledger), asks a proposer
backend for a batch of drafts and records each draft as a candidate the moment it
arrives: `queued` when valid, `rejected` with its reason when not. A paid call is first
held in the ledger at its worst-case cost (a ProposerCall in flight), so the spend cap
counts it while it is in flight and after a crash; its answer settles it at what it cost,
a failure as a failed call (no candidate), a call whose answer never came as lost. Runs
as a background thread inside `farm run` so LLM latency hides behind training.

How proposing ends:
- a batch with no usable draft (unreadable answers, invalid edits, the API unavailable
  after its retries) is a failed batch: the next one waits `backoff_s`, doubled each time
  in a row; after `max_failed_batches` in a row proposing stops with the cause (exit 1);
- batches with nothing new (no drafts, or only repeats of earlier candidates and drafts
  beyond the number asked for) while nothing is in flight mean the proposer has run dry:
  a clean finish;
- the spend cap, or the candidate limit: a clean finish.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from farm import figures
from farm.config import DEFAULT_BACKLOG, DEFAULT_BATCH, ProposerKind, TargetConfig
from farm.errors import FarmError, ProposerError, ProposerUnavailable, SpendCapReached
from farm.evidence import Evidence
from farm.merge import dof_of, keep_threshold, smallest_delta, threshold
from farm.merge.verdicts import FIRST_BASELINE
from farm.processes import gone_here, process_id
from farm.records import (
    CANDIDATE_MOVES,
    CallState,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Draft,
    Incumbent,
    ProposerCall,
    Trial,
    edit_hash,
)
from farm.store import Store
from farm.store.stats import llm_spend
from farm.trials import baseline_ids
from proposer.base import (
    Book,
    LedgerEntry,
    ProposalContext,
    Proposer,
    Verdict,
    check_cap,
    files_fingerprint,
    remember,
    screen,
    usd,
)
from proposer.validate import Rejected, ScoreGuard, Validated

log = logging.getLogger(__name__)

EXHAUSTED_AFTER = 3  # consecutive batches with nothing new and nothing in flight: run dry
MAX_BACKOFF_S = 600.0  # the longest wait after failed batches
DETAILED = 12  # the latest decisions whose runs, durations and output the prompt shows
BASELINE_POLL_S = 0.5
STOP_GRACE_S = 2.0  # on Ctrl-C, how long a proposer call in flight may take to be recorded
TIMED = 9  # the latest calls whose median is the proposer's latency


# A candidate read in one of these states is kept as read (records.CANDIDATE_MOVES): no move
# leaves them but a keep's to reverted, and the few reverted are re-read by their index.
SETTLED = frozenset(s for s in CandidateState if not CANDIDATE_MOVES[s]) | {CandidateState.KEPT}
REREAD = (set(CandidateState) - SETTLED) | {CandidateState.REVERTED}


@dataclass
class LedgerMemo:
    """What `build_context` read on earlier calls and cannot change, so that a call reads
    what changed since (the candidates still in play, those added) rather than the whole
    ledger with every candidate's files: a call's cost stays flat as the ledger grows."""

    settled: dict[int, Candidate] = field(default_factory=dict)  # files dropped
    fingerprints: dict[int, str] = field(default_factory=dict)  # of their files
    seen: int = 0  # the highest candidate id read
    missing: set[int] = field(default_factory=set)  # ids up to `seen` not found (yet)
    moving: set[int] = field(default_factory=set)  # last read in a state that can move
    evidence: Evidence | None = None  # for figures.line
    # The trials of settled candidates once all have finished (files dropped).
    finished: dict[int, list[Trial]] = field(default_factory=dict)

    def trials_of(self, store: Store, campaign_id: str, cid: int) -> list[Trial]:
        """A candidate's trials; those of a settled one read once all have finished."""
        if cid in self.finished:
            return self.finished[cid]
        trials = store.list_trials(campaign_id, candidate_id=cid)
        if cid in self.settled and all(t.state.is_finished() for t in trials):
            self.finished[cid] = [dataclasses.replace(t, files={}) for t in trials]
        return trials

    def candidates(self, store: Store, campaign_id: str) -> list[Candidate]:
        """Every candidate of the campaign, in id order, as the store holds it now."""
        read = store.list_candidates(campaign_id, after=self.seen)
        top = max((c.id for c in read), default=self.seen)
        self.missing |= set(range(self.seen + 1, top + 1)) - {c.id for c in read}
        self.seen = top
        read += store.list_candidates(campaign_id, REREAD)
        # Those that left a moving state since the last call, and ids handed out and not
        # yet written when it looked.
        ids = {c.id for c in read}
        for cid in sorted((self.moving | self.missing) - ids):
            found = store.get_candidate(campaign_id, cid)
            if found is not None:
                read.append(found)
        latest = {c.id: c for c in read}  # the later read of a candidate read twice
        self.missing -= latest.keys()
        self.moving = {cid for cid, c in latest.items() if c.state not in SETTLED}
        for c in latest.values():
            was = self.settled.get(c.id)
            if was is None or was.state is not c.state:  # new, moving, or a keep reverted
                self.fingerprints[c.id] = files_fingerprint(c.files) if c.files else ""
            if c.state in SETTLED:
                self.settled[c.id] = dataclasses.replace(c, files={})
        return sorted([*self.settled.values(), *(latest[i] for i in self.moving)], key=_id)


def _id(c: Candidate) -> int:
    return c.id


def build_context(
    store: Store, cfg: TargetConfig, campaign_id: str, memo: LedgerMemo | None = None
) -> ProposalContext:
    """The proposer's view of the campaign, from the store alone. `memo`: one kept across
    calls (the Feeder's), so each reads only what changed since the last."""
    memo = memo or LedgerMemo()
    camp = store.get_campaign(campaign_id)
    assert camp is not None
    inc = store.get_incumbent(campaign_id)
    decisions = store.list_decisions(campaign_id)  # in the order they were made
    decided = {d.candidate_id: d for d in decisions}
    cands = memo.candidates(store, campaign_id)
    # Trials only for what the prompt shows in detail: the latest decisions that measured
    # something (rejected drafts never ran), superseded winners, and what is running now.
    measured = [d for d in decisions if d.kind is not DecisionKind.REJECTED]
    detailed = {d.candidate_id for d in measured[-DETAILED:]}
    detailed |= {c.id for c in cands if c.state is CandidateState.RUNNING}
    detailed |= {d.candidate_id for d in decisions if d.kind is DecisionKind.SUPERSEDED}
    trials = {cid: memo.trials_of(store, campaign_id, cid) for cid in sorted(detailed)}
    # The incumbents at their values now: a keep's measured value, reverted keeps out.
    memo.evidence = memo.evidence or figures.evidence_of(store, camp)
    steps = figures.line(store, camp, decisions, inc, evidence=memo.evidence)
    line = {step.candidate_id: step for step in steps}
    history = []
    for c in cands:
        d = decided.get(c.id)
        runs = trials.get(c.id, [])
        detail = d.reason if d else ""
        status = d.kind.value if d else c.state.value
        metric = d.metric if d else None
        if c.state is CandidateState.REVERTED:  # its own runs failed: a failure to learn from
            status, detail = DecisionKind.CRASHED.value, c.reason
        elif c.id in line:
            metric = line[c.id].metric
        failed = [t.result for t in runs if t.result and not t.result.outcome.is_ok()]
        if d is not None and d.kind is DecisionKind.CRASHED and failed and failed[0].output_tail:
            detail += "\n" + failed[0].output_tail
        history.append(
            LedgerEntry(
                candidate_id=c.id,
                title=c.title,
                hypothesis=c.hypothesis,
                status=status,
                edits=c.edits,
                delta=d.delta if d else None,
                metric=metric,
                sigma=d.sigma if d else None,
                detail=detail,
                outcome=failed[0].outcome.value if failed else "",
                runs=[t.result.metric for t in runs if t.result and t.result.metric is not None],
                proposer=c.proposer,
                strategy=c.strategy,
                knobs=list(c.knobs),
                params=dict(c.params),
                parent=c.parent,
            )
        )
    sigma = figures.sigma_in_force(camp, store.stats(campaign_id))
    screen_t, keep_t = _thresholds(cfg, sigma, inc)
    # A superseded winner was never judged against the incumbent: the same code, drafted
    # again on it, is worth its run.
    unjudged = {CandidateState.REJECTED, CandidateState.SUPERSEDED}
    seen_files: dict[str, int] = {}
    for c in cands:
        if memo.fingerprints[c.id] and c.state not in unjudged:
            seen_files.setdefault(memo.fingerprints[c.id], c.id)
    baseline = [store.get_trial(campaign_id, i) for i in baseline_ids(cfg.merge.repeats)]
    return ProposalContext(
        campaign=campaign_id,
        program=camp.program,
        files=dict(inc.files),
        editable=list(cfg.editable),
        metric=cfg.metric,
        direction=cfg.direction,
        incumbent_metric=inc.metric,
        incumbent_sha=inc.sha,
        sigma=sigma,
        history=history,
        # A draft beyond the number asked for never ran: the same edit later is no repeat.
        seen_hashes={c.edit_hash for c in cands if not c.extra},
        seen_files=seen_files,
        spent_usd=ledger_spend(store, campaign_id),
        protected=dict(camp.protected_files),
        # With a protected `evaluate`, whatever training prints is only a log.
        guard=None if cfg.evaluate else ScoreGuard(metric=cfg.metric, protected=cfg.protected),
        frozen=list(cfg.frozen),
        budget_s=cfg.budget_s,
        trial_seconds=_durations([t for t in baseline if t is not None], *trials.values()),
        start_metric=camp.baseline_metric,
        incumbent_runs=inc.runs,
        screen_threshold=screen_t,
        keep_threshold=keep_t,
        confirm=cfg.merge.confirm,
        lineage=[cid for cid in line if cid is not None],
    )


def ledger_spend(store: Store, campaign_id: str) -> float:
    """LLM spend in the ledger as the cap counts it: what was paid, and the holds of the
    calls in flight (`llm_spend`, from the store's aggregates)."""
    return llm_spend(store.stats(campaign_id)).counted_usd


def _thresholds(
    cfg: TargetConfig, sigma: float | None, inc: Incumbent
) -> tuple[float | None, float | None]:
    """What Δ a screening run and a confirmation mean must beat now (the merge rule's)."""
    if sigma is None:
        return None, None
    m = cfg.merge
    keep = keep_threshold(m, sigma=sigma, metric=inc.metric, runs=inc.runs)
    if not m.confirm or sigma == 0:  # a deterministic target is judged on its screen alone
        return keep, keep
    screen = threshold(
        runs=1,
        incumbent_runs=inc.runs,
        sigma=sigma,
        z=m.screen_z,
        dof=dof_of(m),
        min_delta=smallest_delta(m, inc.metric),
    )
    return screen, keep


def _durations(*groups: list[Trial]) -> list[float]:
    return [t.result.duration_s for g in groups for t in g if t.result and t.result.outcome.is_ok()]


@dataclass
class BatchOutcome:
    """What one batch brought, for deciding what to do next."""

    drafts: int = 0
    valid: int = 0
    # Rejected as repeats of earlier candidates, or extras beyond the number asked for:
    # nothing new, not broken.
    repeats: int = 0
    problems: list[str] = field(default_factory=list)  # why the other drafts were rejected


class StoreBook(Book):
    """Drafts straight into the store as candidates; a paid call as a ProposerCall record,
    held at its worst case while in flight and settled when its answer is recorded."""

    def __init__(
        self,
        store: Store,
        cfg: TargetConfig,
        campaign: str,
        ctx: ProposalContext,
        *,
        batch_size: int = 0,
        limit: int | None = None,
        lock: threading.Lock | None = None,
        holds: dict[str, ProposerCall] | None = None,
        holder: str = "",
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.campaign = campaign
        self.ctx = ctx
        self.batch_size = batch_size
        self.batch_id = uuid.uuid4().hex[:8]
        self.limit = limit  # valid candidates still allowed (None: no limit)
        self.lock = lock or threading.Lock()
        self.holds = holds if holds is not None else {}  # open holds, shared with the feeder
        self.holder = holder or process_id()  # the process its calls name
        self.outcome = BatchOutcome()

    def hold(self, worst_usd: float, *, cap_usd: float, label: str, tag: Draft) -> str:
        with self.lock:
            check_cap(spent=ledger_spend(self.store, self.campaign), worst=worst_usd, cap=cap_usd)
            call = ProposerCall(
                campaign=self.campaign,
                id=uuid.uuid4().hex[:12],
                proposer=tag.proposer,
                strategy=tag.strategy,
                model=tag.model,
                batch_id=tag.batch_id or self.batch_id,
                label=label,
                batch_size=self.batch_size,
                reserved_usd=worst_usd,
                holder=self.holder,
            )
            self.store.hold_call(call)
            self.holds[call.id] = call
            return call.id

    def record(self, drafts: list[Draft], *, hold: str | None = None) -> list[Verdict]:
        with self.lock:
            if hold is not None and hold not in self.holds:
                log.warning("an answer came after the proposer stopped: its hold stays counted")
                why = "the answer came after the proposer stopped"
                return [Rejected(why, edit_hash(d.edits)) for d in drafts]
            verdicts, repeats = screen(
                drafts, self.ctx, max_edit_bytes=self.cfg.proposer.max_edit_bytes
            )
            for i, v in enumerate(verdicts):
                if isinstance(v, Validated) and self.limit is not None:
                    if self.limit <= 0:  # more than asked for: not a failure, not run
                        drafts[i].extra = True
                        verdicts[i] = Rejected(
                            "over the candidate limit (--max-candidates): recorded, not run",
                            v.edit_hash,
                        )
                    self.limit -= 1
            # The call is settled last: until then it counts its worst case, so a process
            # killed halfway through never counts less than was paid.
            ids = [self._write(d, v, hold) for d, v in zip(drafts, verdicts, strict=True)]
            if hold is not None:
                self._settle(
                    hold,
                    CallState.ANSWERED,
                    drafts=len(drafts),
                    tokens_in=sum(d.tokens_in for d in drafts),
                    tokens_out=sum(d.tokens_out for d in drafts),
                    cost_usd=sum(d.cost_usd for d in drafts),
                )
            remember(self.ctx, drafts, verdicts, ids)
            o = self.outcome
            o.drafts += len(drafts)
            for d, repeat, v in zip(drafts, repeats, verdicts, strict=True):
                if isinstance(v, Validated):
                    o.valid += 1
                elif d.extra or repeat:
                    o.repeats += 1
                else:
                    o.problems.append(v.reason)
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
        with self.lock:
            if hold in self.holds:
                self._settle(
                    hold,
                    CallState.FAILED,
                    reason=reason,
                    tokens_in=tokens_in,
                    tokens_out=tokens_out,
                    cost_usd=cost_usd,
                )
                self.outcome.problems.append(reason)

    def _settle(self, hold: str, state: CallState, **how: Any) -> None:
        call = self.holds.pop(hold)
        self.store.settle_call(
            dataclasses.replace(call, state=state, settled_at=time.time(), **how)
        )

    def _write(self, d: Draft, v: Verdict, hold: str | None) -> int:
        ctx = self.ctx
        cand = Candidate(
            campaign=self.campaign,
            id=self.store.next_candidate_id(self.campaign),
            base_sha=ctx.incumbent_sha,
            title=d.title,
            hypothesis=d.hypothesis,
            edits=d.edits,
            files={**ctx.files, **v.files} if isinstance(v, Validated) else {},
            edit_hash=v.edit_hash,
            expected_effect=d.expected_effect,
            proposer=d.proposer,
            strategy=d.strategy,
            model=d.model,
            batch_id=d.batch_id or self.batch_id,
            prompt_hash=d.prompt_hash,
            tokens_in=d.tokens_in,
            tokens_out=d.tokens_out,
            cost_usd=d.cost_usd,
            batch_size=d.batch_size or self.batch_size,
            knobs=d.knobs,
            params=d.params,
            parent=d.parent,
            call=hold or "",
            extra=d.extra,
        )
        if isinstance(v, Rejected):
            cand.state = CandidateState.REJECTED
            cand.reason = v.reason
        self.store.add_candidate(cand)
        if isinstance(v, Rejected):
            _reject(self.store, cand)
            log.info("draft %r rejected: %s", d.title, v.reason)
        return cand.id


def _reject(store: Store, cand: Candidate) -> None:
    store.record_decision(
        Decision(
            campaign=cand.campaign,
            candidate_id=cand.id,
            kind=DecisionKind.REJECTED,
            reason=cand.reason,
            incumbent_before=cand.base_sha,
            incumbent_after=cand.base_sha,
        )
    )


def _lose(store: Store, call: ProposerCall, why: str) -> None:
    """A call whose answer will never be recorded: its worst case stays counted."""
    lost = dataclasses.replace(
        call,
        state=CallState.LOST,
        cost_usd=call.reserved_usd,
        settled_at=time.time(),
        reason=f"{why}: its worst case ({usd(call.reserved_usd)}) stays counted against the "
        "spend cap, as the API may have billed it",
    )
    store.settle_call(lost)


def record_drafts(
    store: Store, cfg: TargetConfig, campaign_id: str, drafts: list[Draft], ctx: ProposalContext
) -> tuple[int, int]:
    """Validate drafts against the context's incumbent and record them: (valid, rejected).

    A valid candidate carries every editable file in full (the base's text with its edits),
    so a worker needs only the campaign's start commit plus these files.
    """
    book = StoreBook(store, cfg, campaign_id, ctx)
    verdicts = book.record(drafts)
    valid = sum(isinstance(v, Validated) for v in verdicts)
    return valid, len(verdicts) - valid


@dataclass
class ProposalBatch:
    """What one proposer call returned, with the context it was drafted on."""

    drafts: list[Draft]
    ctx: ProposalContext
    seconds: float  # how long the call took


# What a proposer call takes before any is timed: an LLM's, an offline proposer's.
LLM_LATENCY_S, OFFLINE_LATENCY_S = 60.0, 1.0


@dataclass(frozen=True)
class FeedSizes:
    """batch_size and backlog in force, and what sized them."""

    batch: int
    backlog: int
    why: str  # "" when farm.toml set both

    def describe(self) -> str:
        said = f"batch {self.batch}, backlog {self.backlog}"
        return f"{said} ({self.why})" if self.why else said


def feed_sizes(
    cfg: TargetConfig, *, slots: int | None, latency_s: float, trial_s: float
) -> FeedSizes:
    """[proposer] batch_size and backlog, each where farm.toml leaves it unset sized so that
    one call brings twice what `slots` slots start while it is in flight (a slot starts a
    candidate at most once a trial, `trial_s`), and a backlog holds as much: no slot waits
    for the proposer, and no more drafts wait than the slots take meanwhile (they are
    drafted on the incumbent of their time). With short screens, the screens ranked
    together free most of the slots at once: one candidate per slot is kept ready."""
    p = cfg.proposer
    n = max(slots or 1, 1)
    need = math.ceil(2 * n * latency_s / max(trial_s, 1.0))
    if cfg.merge.screen_budget_s > 0:
        need = max(need, n)
    batch = p.batch_size or max(DEFAULT_BATCH, need)
    backlog = p.backlog if p.backlog is not None else max(DEFAULT_BACKLOG, need)
    unset = [k for k in ("batch_size", "backlog") if getattr(p, k) is None]
    short = ", short screens" if cfg.merge.screen_budget_s > 0 else ""
    why = (
        f"{' and '.join(unset)} sized for {slots or 'unknown'} slots, proposer calls of "
        f"{latency_s:.0f} s and trials of {trial_s:.0f} s{short}"
        if unset
        else ""
    )
    return FeedSizes(batch, backlog, why)


@dataclass
class Feeder:
    """Background thread that keeps `backlog` validated candidates queued."""

    store: Store
    cfg: TargetConfig
    campaign: str
    proposer: Proposer
    max_candidates: int | None = None  # valid candidates to create in all; None = no limit
    holder: str = field(default_factory=process_id)  # this process, on the calls it holds
    slots: int | None = None  # trials run at once (None: unknown), for feed_sizes
    # A proposer call's latency: given (farm simulate's model), else timed on each call.
    latency_s: float | None = None
    exhausted: bool = False
    stopped: str = ""  # why proposing ended on purpose (the spend cap), not by failure
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _dry: int = 0  # consecutive batches with nothing new and nothing in flight
    _failed: int = 0  # consecutive batches with no usable draft
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _holds: dict[str, ProposerCall] = field(default_factory=dict)  # this process's calls in flight
    _ledger: LedgerMemo = field(default_factory=LedgerMemo)  # what build_context read before
    _timed: list[float] = field(default_factory=list)  # this process's calls, in seconds
    _trial_s: float | None = None  # the baseline's median run, once measured

    def start(self) -> None:
        """Finish what a killed proposer left (before anyone asks whether this one is `done`:
        a dead process's call in flight counts toward the limit), then feed in a background
        thread (inside `farm run`)."""
        self.recover()
        self._thread = threading.Thread(target=self.run, name="farm-propose", daemon=True)
        self._thread.start()

    def stop(self, *, grace_s: float = 30.0) -> int:
        """Stop feeding. A call still in flight after `grace_s` stays counted at its worst
        case; returns how many there were."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        return self.abandon("the proposer stopped while this call was in flight")

    def abandon(self, why: str) -> int:
        """Settle this process's open holds at their worst case; returns how many."""
        with self._lock:
            calls = list(self._holds.values())
            self._holds.clear()
            for call in calls:
                _lose(self.store, call, why)
        return len(calls)

    @property
    def done(self) -> bool:
        """Nothing more will come: exhausted, failed, or at the limit with no call in flight
        (a call's hold counts toward the limit until its answer is recorded)."""
        at_limit = self._at_limit() and not self._holds
        return self.exhausted or bool(self.stopped) or self.error is not None or at_limit

    def _at_limit(self) -> bool:
        return self.max_candidates is not None and self._left() <= 0

    def _left(self) -> int:
        """Valid candidates still to create under `max_candidates`; a call in flight takes
        a place until its answer is recorded."""
        assert self.max_candidates is not None
        st = self.store.stats(self.campaign)
        made = sum(st.candidates.values()) - st.candidates[CandidateState.REJECTED]
        return self.max_candidates - made - llm_spend(st).in_flight

    def wanted(self) -> int:
        """How many drafts to ask for now; 0 while the backlog is full or a round still runs.

        `backlog` keeps validated candidates waiting so the slots never wait for the LLM;
        `rounds` (to compare against) asks for the next batch only once every candidate of
        the last one is decided, as a synchronous loop would.
        """
        p = self.cfg.proposer
        counts = self.store.count_candidates(self.campaign)
        queued = counts[CandidateState.QUEUED]
        if p.schedule == "rounds" and queued + counts[CandidateState.RUNNING]:
            return 0
        sizes = self.sizes()
        if queued >= max(sizes.backlog, 1):
            return 0
        if self.max_candidates is None:
            return sizes.batch
        return max(0, min(sizes.batch, self._left()))

    def sizes(self) -> FeedSizes:
        """batch_size and backlog now (feed_sizes): from the proposer's latency (as timed, or
        as an LLM's or an offline proposer's is before any call) and the trials' (the
        baseline's median run once measured, else budget_s)."""
        latency = self.latency_s
        if latency is None:
            latency = (
                statistics.median(self._timed)
                if self._timed
                else LLM_LATENCY_S
                if self.cfg.proposer.kind in (ProposerKind.ANTHROPIC, ProposerKind.HYBRID)
                else OFFLINE_LATENCY_S
            )
        return feed_sizes(self.cfg, slots=self.slots, latency_s=latency, trial_s=self._trial())

    def _trial(self) -> float:
        if self._trial_s is None:
            ids = baseline_ids(self.cfg.merge.repeats)
            runs = [self.store.get_trial(self.campaign, i) for i in ids]
            took = _durations([t for t in runs if t is not None])
            if len(took) < FIRST_BASELINE:
                return self.cfg.budget_s
            self._trial_s = statistics.median(took)
        return self._trial_s

    def wait(self) -> None:
        """Until the feeding thread ends; Ctrl-C reaches the caller between joins, never
        the thread, so an answer is never half recorded."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def run(self) -> None:
        """Feed until done or stopped: the thread's body (`start`)."""
        try:
            while not self._stop.is_set() and not self.done:
                if self.proposer.needs_baseline and not self._baseline_measured():
                    self._stop.wait(BASELINE_POLL_S)
                    continue
                n = self.wanted()
                if not n:
                    self._stop.wait(0.2)
                    continue
                self._stop.wait(self.settle(self.deliver(n)))
        except SpendCapReached as e:  # queued candidates still run; the campaign ends cleanly
            log.info("proposer %s stopped: %s", self.proposer.name, e)
            self.stopped = str(e)
        except FarmError as e:  # said by the campaign loop, which stops cleanly
            log.error("proposer %s failed: %s", self.proposer.name, e)
            self.error = e
        except Exception as e:  # a bug: worth its traceback
            log.exception("proposer failed")
            self.error = e

    def _baseline_measured(self) -> bool:
        camp = self.store.get_campaign(self.campaign)
        return camp is not None and camp.sigma is not None

    def settle(self, outcome: BatchOutcome) -> float:
        """Count failed and dry batches; returns how long to wait before the next call.

        Nothing new while candidates are still in flight is no verdict (a keep may change
        what there is to try); `EXHAUSTED_AFTER` dry batches with nothing in flight is.
        """
        if outcome.valid:
            self._dry = self._failed = 0
            return 0.0
        p = self.cfg.proposer
        if outcome.problems:
            self._failed += 1
            last = "; ".join(dict.fromkeys(outcome.problems))
            if self._failed >= p.max_failed_batches:
                self.error = ProposerError(
                    f"{self._failed} batches in a row from proposer {self.proposer.name} "
                    f"brought no usable draft; the last: {last[:600]}. The rejected drafts "
                    "and their reasons are in `farm export --tsv`, the failed calls counted "
                    "in `farm status`; fix the cause (model, [proposer] settings, "
                    "program.md), then run again"
                )
                return 0.0
            wait = min(p.backoff_s * 2 ** (self._failed - 1), MAX_BACKOFF_S)
            log.warning(
                "proposer %s: no usable draft (%s); trying again in %.1fs",
                self.proposer.name,
                last[:300],
                wait,
            )
            return wait
        counts = self.store.count_candidates(self.campaign)
        busy = counts[CandidateState.QUEUED] + counts[CandidateState.RUNNING]
        self._dry = 0 if busy else self._dry + 1
        if self._dry >= EXHAUSTED_AFTER:
            log.info("proposer %s has nothing new to propose", self.proposer.name)
            self.exhausted = True
        return 1.0 if busy else 0.0

    def propose_once(self, n: int) -> int:
        """Ask for `n` drafts and record them; returns how many were valid."""
        return self.deliver(n).valid

    def deliver(self, n: int) -> BatchOutcome:
        """One batch: the proposer records its drafts in the store as they arrive."""
        self._settle_stale()
        ctx = build_context(self.store, self.cfg, self.campaign, self._ledger)
        book = self._book(ctx, batch_size=n)
        started = time.time()
        try:
            self.proposer.propose_into(ctx, n, book)
        except ProposerUnavailable as e:  # a failed batch: retried after a backoff
            if str(e) not in book.outcome.problems:  # said already where its call failed
                book.outcome.problems.append(str(e))
        self._timed = [*self._timed[-(TIMED - 1) :], time.time() - started]
        o = book.outcome
        log.info(
            "proposer %s: %d drafts in %.1fs, %d valid, %d rejected",
            self.proposer.name,
            o.drafts,
            time.time() - started,
            o.valid,
            o.drafts - o.valid,
        )
        return o

    def ask(self, n: int) -> ProposalBatch:
        """Call the proposer backend on the campaign as the store holds it now, without
        recording (`farm simulate` records the batch when its virtual call returns)."""
        ctx = build_context(self.store, self.cfg, self.campaign, self._ledger)
        started = time.time()
        drafts = self.proposer.propose(ctx, n)
        for d in drafts:
            d.proposer = d.proposer or self.proposer.name
            d.batch_size = d.batch_size or n
        return ProposalBatch(drafts=drafts, ctx=ctx, seconds=time.time() - started)

    def record(self, batch: ProposalBatch) -> BatchOutcome:
        """Validate a batch against the context it was drafted on and record every draft."""
        book = self._book(batch.ctx)
        if batch.drafts:
            book.record(batch.drafts)
        return book.outcome

    def _book(self, ctx: ProposalContext, *, batch_size: int = 0) -> StoreBook:
        limit = None if self.max_candidates is None else self._left()
        return StoreBook(
            self.store,
            self.cfg,
            self.campaign,
            ctx,
            batch_size=batch_size,
            limit=limit,
            lock=self._lock,
            holds=self._holds,
            holder=self.holder,
        )

    def recover(self) -> None:
        """Finish what a proposer killed mid-batch left: its calls in flight, and rejected
        drafts recorded without their decision."""
        self._settle_stale()
        kinds = {DecisionKind.REJECTED}
        decided = {d.candidate_id for d in self.store.list_decisions(self.campaign, kinds=kinds)}
        for cand in self.store.list_candidates(self.campaign, {CandidateState.REJECTED}):
            if cand.id not in decided:
                _reject(self.store, cand)

    def _settle_stale(self) -> None:
        """Holds left by a proposer that died mid-call: at once where it was a process of
        this host that is gone, else once no call could still be running."""
        p = self.cfg.proposer
        longest = p.timeout_s * (p.max_retries + 1) + 60
        now = time.time()
        why = "the proposer stopped (or was killed) while this call was in flight"
        for call in self.store.list_calls(self.campaign, {CallState.IN_FLIGHT}):
            if call.id in self._holds:
                continue
            if gone_here(call.holder) or now - call.created_at > longest:
                _lose(self.store, call, why)
