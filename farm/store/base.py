"""The store contract: the durable queue and ledger every role shares.

Contract (every backend, checked by one test suite in tests/farm/test_store_contract.py):

- Thread safety: one Store object may be used from several threads of one process, and
  several processes (or machines) may open the same store at once.
- Records are append-only in spirit: candidates, trials and decisions are never deleted;
  only their state moves forward: `update_candidate` refuses a move that
  `farm.records.CANDIDATE_MOVES` does not allow (StateMoveRefused), in the same transaction
  as the write.
- Claims are leases. `claim_trials` moves queued trials to running under a lease that the
  claimer renews with `heartbeat`; `reap` returns lapsed trials to the queue (or to `dead`
  after `max_deliveries`), so a dead dispatcher's trials run elsewhere.
- `record_result` is idempotent by trial id: the first result wins, later ones are ignored,
  so a trial that ran twice (a lapsed lease, a zombie worker) is counted once.
- `record_decision` is idempotent by candidate: one decision per candidate. A keep that
  would make the incumbents' lineage loop (its new incumbent the one it replaced, or any
  before that) is refused.
- One driver per campaign: `take_lease` is a compare-and-set on the campaign's driver
  lease, which its holder renews and a dead holder lets lapse.
- `cas_incumbent` is a compare-and-set on the incumbent's sha: two controllers can never
  both move it from the same commit.
- `enqueue_trial` is idempotent by trial id, so a controller that crashed mid-step can
  redo the step.
- Aggregates (`stats`, and the counts behind `count_trials` and `count_candidates`) are
  updated in the same transaction as the record that moves them, so they always equal what
  `farm.store.stats.recount` makes of the records, and reading them costs the same at 40,000
  trials as at 40. So do `list_decisions(last=...)`, `list_decisions(kinds=...)` (in the
  number of decisions returned) and `recent_results`.
- `hold_call` records a paid proposer call in flight, whose worst case counts against the
  spend cap until `settle_call` settles it; the first settle wins (a call answered by one
  process and given up as lost by another is settled once).
- Versions: a store written by schema v1 (before aggregates), v2 (before the trial kinds
  `preflight` and `short` and the trial fields `reference`, `partner` and `prefer`, which a
  v2 farm cannot read) or v3 (before the trial kind `measure`, the candidate state `reverted`
  and proposer calls: a call in flight was a candidate in
  state `proposing` holding `reserved_usd`) is upgraded in place when opened (v1's
  aggregates recounted once; v3's holds become lost calls at their worst case, and every
  paid draft a call of its own carrying its cost, then the aggregates are recounted; stop
  every process of the older farm first: from then on it refuses the store). Any other
  version is refused with the version it holds.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from typing import Any

from farm.errors import StateMoveRefused, StoreError
from farm.records import (
    CallState,
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    DriverLease,
    Incumbent,
    ProposerCall,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store.stats import CampaignStats

SCHEMA_VERSION = 4
UPGRADABLE_FROM = (1, 2, 3)  # upgraded in place on open (see Versions above)

CLAIM_WINDOW = 64  # queued trials a claim with `hold` looks through, beyond the n it takes
# Claim order: trials that decide a candidate already in progress go before new screens
# (a pre-flight too: it is short, and its candidate's screen waits for it).
KIND_PRIORITY = {
    TrialKind.BASELINE: 0,
    TrialKind.CONFIRM: 1,
    TrialKind.REBASE: 1,
    TrialKind.MEASURE: 1,
    TrialKind.PREFLIGHT: 1,
    TrialKind.CANDIDATE: 2,
    TrialKind.SHORT: 2,
}


class Store(abc.ABC):
    url: str = ""
    # Called with each failure the store retries through (a lost connection), as it
    # happens: an operation may retry for half a minute before it fails, and an outage
    # should show in the role's metrics while it lasts (farm/metrics.py sets it).
    on_retry: Callable[[Exception], None] | None = None

    def local_paths(self) -> list[str]:
        """Where this store keeps its files on this machine (none for a server)."""
        return []

    # -- campaigns and the incumbent ------------------------------------------------------
    @abc.abstractmethod
    def create_campaign(self, campaign: Campaign, incumbent: Incumbent) -> Campaign:
        """Create the campaign with its starting incumbent; if it exists, return it unchanged."""

    @abc.abstractmethod
    def get_campaign(self, campaign_id: str) -> Campaign | None: ...

    @abc.abstractmethod
    def list_campaigns(self) -> list[Campaign]: ...

    @abc.abstractmethod
    def set_baseline(self, campaign_id: str, *, metric: float, runs: int, sigma: float) -> None:
        """Record the start commit's baseline: its mean over `runs` runs and their noise σ."""

    @abc.abstractmethod
    def get_incumbent(self, campaign_id: str) -> Incumbent: ...

    @abc.abstractmethod
    def cas_incumbent(self, campaign_id: str, *, expected_sha: str, new: Incumbent) -> bool:
        """Replace the incumbent only if its sha is still `expected_sha`. True if replaced."""

    # -- candidates -----------------------------------------------------------------------
    @abc.abstractmethod
    def next_candidate_id(self, campaign_id: str) -> int:
        """A fresh candidate number (1, 2, ...), never handed out twice."""

    @abc.abstractmethod
    def add_candidate(self, candidate: Candidate) -> None: ...

    @abc.abstractmethod
    def update_candidate(self, candidate: Candidate) -> None:
        """Overwrite a candidate's record (state, commit, rebased files, reason). Its state
        must be one its stored state may move to (`CandidateState.may_become`), else
        StateMoveRefused and nothing is written."""

    @abc.abstractmethod
    def get_candidate(self, campaign_id: str, candidate_id: int) -> Candidate | None: ...

    @abc.abstractmethod
    def list_candidates(
        self, campaign_id: str, states: set[CandidateState] | None = None
    ) -> list[Candidate]:
        """Candidates by id, optionally only those in `states`."""

    def is_quiet(self, campaign_id: str, *, waiting: set[CandidateState]) -> bool:
        """The baseline is measured, no trial is queued or running and no candidate is in
        `waiting`: nothing more happens unless something new is proposed."""
        camp = self.get_campaign(campaign_id)
        if camp is None or camp.sigma is None:
            return False
        trials = self.count_trials(campaign_id)
        if trials[TrialState.QUEUED] or trials[TrialState.RUNNING]:
            return False
        cands = self.count_candidates(campaign_id)
        return not any(cands[state] for state in waiting)

    def count_candidates(self, campaign_id: str) -> dict[CandidateState, int]:
        """How many candidates are in each state (every state present, zeros included)."""
        return self.stats(campaign_id).candidates

    # -- paid proposer calls ---------------------------------------------------------------
    @abc.abstractmethod
    def hold_call(self, call: ProposerCall) -> None:
        """Record a call in flight: its `reserved_usd` counts as held spend until settled."""

    @abc.abstractmethod
    def settle_call(self, call: ProposerCall) -> bool:
        """Settle a call in flight as `call` says (state, cost, tokens, drafts, reason); its
        hold is what `hold_call` recorded. False, and no change, if it was settled already."""

    @abc.abstractmethod
    def list_calls(
        self, campaign_id: str, states: set[CallState] | None = None
    ) -> list[ProposerCall]:
        """Calls in the order they were held, optionally only those in `states`."""

    # -- trials ---------------------------------------------------------------------------
    @abc.abstractmethod
    def enqueue_trial(self, trial: Trial) -> bool:
        """Queue a trial. False (and no change) if a trial with this id exists."""

    @abc.abstractmethod
    def claim_trials(
        self, campaign_id: str, *, worker: str, n: int, lease_s: float, hold: Collection[str] = ()
    ) -> list[Trial]:
        """Lease up to n queued trials to `worker`, by kind priority then age. A trial that
        prefers a hardware class in `hold` (no slot of it is free) comes after all others
        among the first CLAIM_WINDOW queued, for a later claim where one is; none is left
        out for it."""

    @abc.abstractmethod
    def heartbeat(
        self, campaign_id: str, trial_ids: list[str], *, worker: str, lease_s: float
    ) -> list[str]:
        """Extend the leases `worker` still holds; return the ids it still holds."""

    @abc.abstractmethod
    def release(
        self, campaign_id: str, trial_id: str, *, worker: str, max_deliveries: int, failed: bool
    ) -> bool:
        """Give a leased trial back to the queue now.

        `failed`: an infrastructure failure, which counts towards `max_deliveries` (then the
        trial is dead); otherwise (an interrupted dispatcher) the claim is not counted.
        """

    @abc.abstractmethod
    def reap(self, campaign_id: str, *, now: float, max_deliveries: int) -> list[str]:
        """Requeue running trials whose lease lapsed before `now`; dead after max_deliveries."""

    @abc.abstractmethod
    def record_result(self, campaign_id: str, result: TrialResult) -> bool:
        """Store the result and mark the trial done. False if it already had one."""

    @abc.abstractmethod
    def get_trial(self, campaign_id: str, trial_id: str) -> Trial | None: ...

    @abc.abstractmethod
    def list_trials(
        self,
        campaign_id: str,
        *,
        candidate_id: int | None = None,
        states: set[TrialState] | None = None,
    ) -> list[Trial]:
        """Trials in creation order, optionally of one candidate and/or in `states`."""

    @abc.abstractmethod
    def count_trials(self, campaign_id: str) -> dict[TrialState, int]: ...

    @abc.abstractmethod
    def recent_results(self, campaign_id: str, n: int) -> list[Trial]:
        """The last `n` trials that got a result, in the order the results came in."""

    @abc.abstractmethod
    def stats(self, campaign_id: str) -> CampaignStats:
        """The campaign's running aggregates (zeros for a campaign with no records)."""

    # -- decisions ------------------------------------------------------------------------
    def refuse_cycle(self, decision: Decision) -> None:
        """A keep may not make the incumbents' lineage loop: its new incumbent may not be
        the one it replaced, nor any incumbent before that (StoreError, nothing written)."""
        if decision.kind is not DecisionKind.KEPT:
            return
        parent = {
            d.incumbent_after: d.incumbent_before
            for d in self.list_decisions(decision.campaign, kinds={DecisionKind.KEPT})
            if d.candidate_id != decision.candidate_id
        }
        sha, seen = decision.incumbent_before, set()
        while sha and sha not in seen:
            if sha == decision.incumbent_after:
                raise StoreError(
                    f"c{decision.candidate_id} would make {sha[:10]} the incumbent after "
                    "itself: a keep may not make the incumbents' lineage loop"
                )
            seen.add(sha)
            sha = parent.get(sha, "")

    # -- the driver ------------------------------------------------------------------------
    @abc.abstractmethod
    def take_lease(self, campaign_id: str, *, holder: str, ttl_s: float, now: float) -> DriverLease:
        """Take the campaign's driver lease for `holder`, or renew it if theirs, until
        `now + ttl_s`; a lease another holder let lapse is taken over. Returns the lease as
        it stands after the call: someone else's while they hold it (nothing changed)."""

    @abc.abstractmethod
    def drop_lease(self, campaign_id: str, *, holder: str) -> None:
        """Give the lease up, if `holder` holds it."""

    @abc.abstractmethod
    def record_decision(self, decision: Decision) -> bool:
        """Record the decision on a candidate. False (and no change) if it already has one."""

    @abc.abstractmethod
    def get_decision(self, campaign_id: str, candidate_id: int) -> Decision | None: ...

    @abc.abstractmethod
    def list_decisions(
        self,
        campaign_id: str,
        *,
        kinds: set[DecisionKind] | None = None,
        last: int | None = None,
    ) -> list[Decision]:
        """Decisions in the order they were made: only those of `kinds`, only the `last` n."""

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027
        """Release connections; the default has none to release."""

    def seen_hashes(self, campaign_id: str) -> set[str]:
        """Edit hashes of every candidate so far, rejected ones included."""
        return {c.edit_hash for c in self.list_candidates(campaign_id)}


def refused_move(candidate: Candidate, was: str) -> StateMoveRefused:
    return StateMoveRefused(
        f"candidate c{candidate.id} of campaign {candidate.campaign!r} is {was}: it cannot "
        f"become {candidate.state.value} (a finished record is frozen, a state never moves "
        "back)"
    )


def calls_from_v3(candidates: list[dict[str, Any]]) -> tuple[list[Candidate], list[ProposerCall]]:
    """A v3 store's candidate records as this schema keeps them: (candidates, calls).

    A `proposing` row was a call in flight; no process of v3 is left to answer it, so it is
    a lost call at its worst case and no candidate. A draft that carries a cost or tokens
    becomes a call of its own with them (v3 did not record which drafts shared a call), so
    spend, read from calls, stays what v3 counted. A candidate that names its call already
    is as this schema keeps it.
    """
    cands, calls = [], []
    for raw in candidates:
        d = dict(raw)
        reserved = float(d.pop("reserved_usd", 0.0) or 0.0)
        call = ProposerCall(
            campaign=d["campaign"],
            id=f"v3-c{d['id']}",
            proposer=d.get("proposer", ""),
            strategy=d.get("strategy", ""),
            model=d.get("model", ""),
            batch_id=d.get("batch_id", ""),
            label=d.get("strategy", ""),
            created_at=d.get("created_at", 0.0),
        )
        if d["state"] == "proposing":
            call.state, call.reserved_usd, call.cost_usd = CallState.LOST, reserved, reserved
            call.reason = "in flight when the store was upgraded to schema v4"
            calls.append(call)
            continue
        if not d.get("call") and (d.get("cost_usd") or d.get("tokens_in") or d.get("tokens_out")):
            call.state, call.drafts = CallState.ANSWERED, 1
            call.cost_usd = d.get("cost_usd", 0.0)
            call.tokens_in, call.tokens_out = d.get("tokens_in", 0), d.get("tokens_out", 0)
            calls.append(call)
            d["call"] = call.id
        cands.append(Candidate.from_dict(d))
    return cands, calls
