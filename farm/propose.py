"""The proposer role: keeps a backlog of validated candidates ready, off the hot path.

It reads only the store (the incumbent's editable files, the ledger), asks a proposer
backend for a batch of drafts, validates every draft and records each as a candidate:
`queued` when valid, `rejected` with its reason when not. Runs as a background thread
inside `farm run` so LLM latency hides behind training.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from farm.config import TargetConfig
from farm.errors import SpendCapReached
from farm.records import (
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Draft,
    edit_hash,
)
from farm.store import Store
from proposer.base import LedgerEntry, ProposalContext, Proposer
from proposer.validate import Rejected, ScoreGuard, Validated, validate_batch

log = logging.getLogger(__name__)

EXHAUSTED_AFTER = 3  # consecutive batches with nothing valid: the proposer has run dry


def build_context(store: Store, cfg: TargetConfig, campaign_id: str) -> ProposalContext:
    """The proposer's view of the campaign, from the store alone."""
    camp = store.get_campaign(campaign_id)
    assert camp is not None
    inc = store.get_incumbent(campaign_id)
    decisions = {d.candidate_id: d for d in store.list_decisions(campaign_id)}
    cands = store.list_candidates(campaign_id)
    history = []
    for c in cands:
        d = decisions.get(c.id)
        history.append(
            LedgerEntry(
                candidate_id=c.id,
                title=c.title,
                hypothesis=c.hypothesis,
                status=d.kind.value if d else c.state.value,
                edits=c.edits,
                delta=d.delta if d else None,
                metric=d.metric if d else None,
                sigma=d.sigma if d else None,
                detail=d.reason if d else "",
            )
        )
    return ProposalContext(
        campaign=campaign_id,
        program=camp.program,
        files=dict(inc.files),
        editable=list(cfg.editable),
        metric=cfg.metric,
        direction=cfg.direction,
        incumbent_metric=inc.metric,
        incumbent_sha=inc.sha,
        sigma=camp.sigma,
        history=history,
        seen_hashes={c.edit_hash for c in cands},
        spent_usd=sum(c.cost_usd for c in cands),
    )


def record_drafts(
    store: Store, cfg: TargetConfig, campaign_id: str, drafts: list[Draft], ctx: ProposalContext
) -> tuple[int, int]:
    """Validate drafts against the context's incumbent and record them: (valid, rejected).

    A valid candidate carries every editable file in full (the base's text with its edits),
    so a worker needs only the campaign's start commit plus these files.
    """
    results = validate_batch(
        drafts,
        files=ctx.files,
        editable=cfg.editable,
        seen_hashes=ctx.seen_hashes,
        max_edit_bytes=cfg.proposer.max_edit_bytes,
        # With a protected `evaluate`, whatever training prints is only a log.
        guard=None if cfg.evaluate else ScoreGuard(metric=cfg.metric, protected=cfg.protected),
    )
    valid = rejected = 0
    for draft, res in zip(drafts, results, strict=True):
        cand = Candidate(
            campaign=campaign_id,
            id=store.next_candidate_id(campaign_id),
            base_sha=ctx.incumbent_sha,
            title=draft.title,
            hypothesis=draft.hypothesis,
            edits=draft.edits,
            files={**ctx.files, **res.files} if isinstance(res, Validated) else {},
            edit_hash=res.edit_hash if isinstance(res, Validated) else edit_hash(draft.edits),
            expected_effect=draft.expected_effect,
            proposer=draft.proposer,
            strategy=draft.strategy,
            model=draft.model,
            batch_id=draft.batch_id,
            prompt_hash=draft.prompt_hash,
            tokens_in=draft.tokens_in,
            tokens_out=draft.tokens_out,
            cost_usd=draft.cost_usd,
        )
        if isinstance(res, Rejected):
            cand.state = CandidateState.REJECTED
            cand.reason = res.reason
            store.add_candidate(cand)
            store.record_decision(
                Decision(
                    campaign=campaign_id,
                    candidate_id=cand.id,
                    kind=DecisionKind.REJECTED,
                    reason=res.reason,
                    incumbent_before=ctx.incumbent_sha,
                    incumbent_after=ctx.incumbent_sha,
                )
            )
            log.info("draft %r rejected: %s", draft.title, res.reason)
            rejected += 1
        else:
            store.add_candidate(cand)
            valid += 1
    return valid, rejected


@dataclass
class ProposalBatch:
    """What one proposer call returned, with the context it was drafted on."""

    drafts: list[Draft]
    ctx: ProposalContext
    seconds: float  # how long the call took


@dataclass
class Feeder:
    """Background thread that keeps `backlog` validated candidates queued."""

    store: Store
    cfg: TargetConfig
    campaign: str
    proposer: Proposer
    max_candidates: int | None = None  # valid candidates to create in all; None = no limit
    exhausted: bool = False
    stopped: str = ""  # why proposing ended on purpose (the spend cap), not by failure
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _dry: int = 0  # consecutive batches with nothing valid and nothing in flight

    def start(self) -> None:
        """Feed in a background thread (inside `farm run`)."""
        self._thread = threading.Thread(target=self.run, name="farm-propose", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def done(self) -> bool:
        """Nothing more will come: exhausted, at the limit, or failed."""
        return self.exhausted or bool(self.stopped) or self.error is not None or self._at_limit()

    def _at_limit(self) -> bool:
        return self.max_candidates is not None and self._left() <= 0

    def _left(self) -> int:
        """Valid candidates still to create under `max_candidates`."""
        assert self.max_candidates is not None
        counts = self.store.count_candidates(self.campaign)
        return self.max_candidates - sum(counts.values()) + counts[CandidateState.REJECTED]

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
        if queued >= max(p.backlog, 1):
            return 0
        if self.max_candidates is None:
            return p.batch_size
        return max(0, min(p.batch_size, self._left()))

    def run(self) -> None:
        """Feed until done or stopped (in the foreground for `farm propose`)."""
        try:
            while not self._stop.is_set() and not self.done:
                n = self.wanted()
                if not n:
                    self._stop.wait(0.2)
                    continue
                self._stop.wait(self.settle(self.propose_once(n)))
        except SpendCapReached as e:  # queued candidates still run; the campaign ends cleanly
            log.info("proposer %s stopped: %s", self.proposer.name, e)
            self.stopped = str(e)
        except Exception as e:  # surfaced by the campaign loop, which stops cleanly
            log.exception("proposer failed")
            self.error = e

    def settle(self, valid: int) -> float:
        """Count batches that came back dry; returns how long to wait before the next call.

        Nothing new while candidates are still in flight is no verdict (a keep may change
        what there is to try); `EXHAUSTED_AFTER` dry batches with nothing in flight is.
        """
        if valid:
            self._dry = 0
            return 0.0
        counts = self.store.count_candidates(self.campaign)
        busy = counts[CandidateState.QUEUED] + counts[CandidateState.RUNNING]
        self._dry = 0 if busy else self._dry + 1
        if self._dry >= EXHAUSTED_AFTER:
            log.info("proposer %s has nothing new to propose", self.proposer.name)
            self.exhausted = True
        return 1.0 if busy else 0.0

    def propose_once(self, n: int) -> int:
        """Ask for `n` drafts and record them; returns how many were valid."""
        return self.record(self.ask(n))

    def ask(self, n: int) -> ProposalBatch:
        """Call the proposer backend on the campaign as the store holds it now."""
        ctx = build_context(self.store, self.cfg, self.campaign)
        started = time.time()
        drafts = self.proposer.propose(ctx, n)
        batch = uuid.uuid4().hex[:8]
        for d in drafts:
            d.batch_id = d.batch_id or batch
            d.proposer = d.proposer or self.proposer.name
        return ProposalBatch(drafts=drafts, ctx=ctx, seconds=time.time() - started)

    def record(self, batch: ProposalBatch) -> int:
        """Validate a batch against the context it was drafted on and record every draft."""
        valid, rejected = record_drafts(
            self.store, self.cfg, self.campaign, batch.drafts, batch.ctx
        )
        log.info(
            "proposer %s: %d drafts in %.1fs, %d valid, %d rejected",
            self.proposer.name,
            len(batch.drafts),
            batch.seconds,
            valid,
            rejected,
        )
        return valid
