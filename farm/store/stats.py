"""Running aggregates of a campaign, kept by the store in the same transaction as each record.

A scrape and `farm status` read these instead of the ledger, so they cost the same at 40,000
trials as at 40. A backend keeps them as a flat map of field name -> number (a SQLite table,
a Redis hash). This module is the one place that names the fields, says how each record moves
them (`Upkeep`), recounts them from the records (store upgrades, and the contract test's
oracle) and reads them back (`CampaignStats`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from farm.config import stored_config
from farm.records import (
    CallState,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Outcome,
    ProposerCall,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)

DEAD = "dead"  # the outcome of a trial whose infrastructure kept failing
OUTCOMES = [*(o.value for o in Outcome), DEAD]

# Trial durations are bucketed by fractions of the campaign's budget, fixed when it is
# created: training usually takes most of the budget, so that is where resolution matters.
BUDGET_FRACTIONS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25)

# Field names. A name may hold a proposer or a hardware class (bounded by configuration).
STATE = "trials:"  # + TrialState: trials in that state now (SQLite; Redis counts its sets)
DEAD_BY_KIND = "dead:"  # + TrialKind: trials dead now
BOUND = "bound:"  # + index: the upper bounds of the duration buckets
LAST_RESULT = "last_result_at"
LAST_DECISION = "last_decision_at"
SIGMA = "sigma"  # the σ of the latest decision that had one


def outcome_key(kind: str, outcome: str) -> str:
    return f"outcome:{kind}:{outcome}"


def duration_key(kind: str, part: str) -> str:
    """`part`: count, sum, or b<i> (the i-th bucket, not cumulative; b<len(bounds)> is +Inf)."""
    return f"duration:{kind}:{part}"


def hardware_key(hardware: str, part: str) -> str:
    """`part`: trials or seconds (training time)."""
    return f"hardware:{hardware or 'unknown'}:{part}"


def candidate_key(state: str) -> str:
    return f"candidates:{state}"


def proposer_key(proposer: str, part: str) -> str:
    """`part`: a field of ProposerTally. Drafts (valid, rejected, extra) move with candidates,
    spend (in_flight, calls, failed_calls, tokens_in, tokens_out, cost_usd, held_usd) with
    calls."""
    return f"proposer:{proposer or 'unknown'}:{part}"


_FLOAT_PARTS = ("cost_usd", "held_usd")


def decision_key(kind: str) -> str:
    return f"decisions:{kind}"


@dataclass
class Upkeep:
    """How one write moves the aggregates: `add` increments, `top` raises, `put` sets."""

    add: dict[str, float] = field(default_factory=dict)
    top: dict[str, float] = field(default_factory=dict)
    put: dict[str, float] = field(default_factory=dict)

    def inc(self, name: str, by: float = 1.0) -> Upkeep:
        self.add[name] = self.add.get(name, 0.0) + by
        return self

    def to_json(self) -> str:
        """For Redis scripts: numbers as exact strings (Lua would print 14 digits)."""
        return json.dumps(
            {
                op: {k: repr(float(v)) for k, v in values.items()}
                for op, values in vars(self).items()
            }
        )


def duration_bounds(budget_s: float) -> list[float]:
    return [float(f"{f * budget_s:.3g}") for f in BUDGET_FRACTIONS]


def bounds_of(config: dict[str, object]) -> list[float]:
    """The bucket bounds of a campaign, from the farm.toml snapshot it started with."""
    return duration_bounds(stored_config(config).budget_s)


def bounds_upkeep(bounds: list[float]) -> Upkeep:
    return Upkeep(put={f"{BOUND}{i}": b for i, b in enumerate(bounds)})


def bucket(bounds: list[float], seconds: float) -> int:
    """The index of the first bound >= seconds; len(bounds) for +Inf."""
    return next((i for i, b in enumerate(bounds) if seconds <= b), len(bounds))


def result_upkeep(result: TrialResult, *, kind: str, bounds: list[float]) -> Upkeep:
    d = result.duration_s
    up = Upkeep(top={LAST_RESULT: result.finished_at or time.time()})
    up.inc(outcome_key(kind, result.outcome.value))
    up.inc(duration_key(kind, "count")).inc(duration_key(kind, "sum"), d)
    up.inc(duration_key(kind, f"b{bucket(bounds, d)}"))
    up.inc(hardware_key(result.hardware, "trials")).inc(hardware_key(result.hardware, "seconds"), d)
    return up


def trial_move(old: TrialState | None, new: TrialState, *, kind: str) -> Upkeep:
    """A trial entering `new` from `old` (None: just enqueued)."""
    up = Upkeep()
    if old is new:
        return up
    if old is not None:
        up.inc(STATE + old.value, -1)
        if old is TrialState.DEAD:
            up.inc(DEAD_BY_KIND + kind, -1)
    up.inc(STATE + new.value)
    if new is TrialState.DEAD:
        up.inc(DEAD_BY_KIND + kind)
    return up


def candidate_upkeep(c: Candidate) -> Upkeep:
    """A new candidate: its state, and its proposer's drafts by validation result (its
    share of a call's cost is attribution only: spend moves with the call)."""
    result = "extra" if c.extra else "rejected" if c.state is CandidateState.REJECTED else "valid"
    return Upkeep().inc(candidate_key(c.state.value)).inc(proposer_key(c.proposer, result))


def call_hold_upkeep(call: ProposerCall) -> Upkeep:
    """A paid call sent: its worst case is held."""
    up = Upkeep().inc(proposer_key(call.proposer, "in_flight"))
    return up.inc(proposer_key(call.proposer, "held_usd"), call.reserved_usd)


def call_settle_upkeep(call: ProposerCall) -> Upkeep:
    """A held call settled (`call` in its finished state): the hold goes, the call counts."""
    p = call.proposer
    up = Upkeep().inc(proposer_key(p, "held_usd"), -call.reserved_usd)
    up.inc(proposer_key(p, "in_flight"), -1).inc(proposer_key(p, "calls"))
    if call.state in (CallState.FAILED, CallState.LOST):
        up.inc(proposer_key(p, "failed_calls"))
    up.inc(proposer_key(p, "tokens_in"), call.tokens_in)
    up.inc(proposer_key(p, "tokens_out"), call.tokens_out)
    return up.inc(proposer_key(p, "cost_usd"), call.cost_usd)


def candidate_move(old: str, new: str) -> Upkeep:
    return Upkeep() if old == new else Upkeep().inc(candidate_key(old), -1).inc(candidate_key(new))


def decision_upkeep(d: Decision) -> Upkeep:
    up = Upkeep(top={LAST_DECISION: d.created_at}).inc(decision_key(d.kind.value))
    if d.sigma is not None:
        up.put[SIGMA] = d.sigma
    return up


def recount(
    trials: Iterable[Trial],
    candidates: Iterable[Candidate],
    decisions: Iterable[Decision],
    calls: Iterable[ProposerCall] = (),
    *,
    bounds: list[float],
) -> dict[str, float]:
    """Every field from the records themselves: what the upkeep of each write adds up to."""
    total: dict[str, float] = {}

    def apply(up: Upkeep) -> None:
        for k, v in up.add.items():
            total[k] = total.get(k, 0.0) + v
        for k, v in up.top.items():
            total[k] = max(total.get(k, v), v)
        total.update(up.put)

    apply(bounds_upkeep(bounds))
    for t in trials:
        apply(trial_move(None, t.state, kind=t.kind.value))
        if t.result is not None:
            apply(result_upkeep(t.result, kind=t.kind.value, bounds=bounds))
    for c in candidates:
        apply(candidate_upkeep(c))
    for d in sorted(decisions, key=lambda d: d.created_at):
        apply(decision_upkeep(d))
    for call in calls:
        apply(call_hold_upkeep(call))
        if call.state.is_finished():
            apply(call_settle_upkeep(call))
    return total


@dataclass
class Histogram:
    bounds: list[float]
    buckets: list[int]  # per bucket, not cumulative; the last is above every bound
    count: int
    sum: float

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) pairs, +Inf last, as Prometheus exposes them."""
        out, running = [], 0
        for b, n in zip([*self.bounds, float("inf")], self.buckets, strict=True):
            running += n
            out.append(("+Inf" if b == float("inf") else repr(b), running))
        return out


@dataclass
class ProposerTally:
    """A proposer's drafts and LLM spend (or, from `llm_spend`, every proposer's)."""

    valid: int = 0
    rejected: int = 0
    extra: int = 0  # beyond the number asked for: recorded, never run, no failure
    in_flight: int = 0  # paid calls sent and not yet settled
    calls: int = 0  # paid calls settled (answered, failed or lost)
    failed_calls: int = 0  # of those, failed or lost
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0  # what settled calls cost (a lost call at its worst case)
    held_usd: float = 0.0  # the worst cases of the calls in flight

    @property
    def counted_usd(self) -> float:
        """The spend the cap counts: paid, and held for the calls in flight."""
        return self.cost_usd + self.held_usd


@dataclass
class HardwareTally:
    trials: int = 0
    seconds: float = 0.0


@dataclass
class CampaignStats:
    """A campaign's aggregates, every enumerable combination present (zeros included)."""

    trials: dict[TrialState, int]
    outcomes: dict[tuple[str, str], int]  # (TrialKind value, Outcome value or DEAD)
    durations: dict[str, Histogram]  # by TrialKind value
    hardware: dict[str, HardwareTally]
    candidates: dict[CandidateState, int]
    proposers: dict[str, ProposerTally]
    decisions: dict[DecisionKind, int]
    sigma: float | None
    last_result_at: float | None
    last_decision_at: float | None

    @classmethod
    def parse(
        cls, fields: dict[str, float], *, trials: dict[TrialState, int] | None = None
    ) -> CampaignStats:
        """Read the flat fields; `trials` overrides the state counts (Redis counts its sets)."""

        def n(name: str) -> int:
            return round(fields.get(name, 0.0))

        bounds = bounds_from(fields)
        outcomes = {(k.value, o): n(outcome_key(k.value, o)) for k in TrialKind for o in OUTCOMES}
        for k in TrialKind:
            outcomes[k.value, DEAD] = n(DEAD_BY_KIND + k.value)
        durations = {
            k.value: Histogram(
                bounds=bounds,
                buckets=[n(duration_key(k.value, f"b{i}")) for i in range(len(bounds) + 1)],
                count=n(duration_key(k.value, "count")),
                sum=fields.get(duration_key(k.value, "sum"), 0.0),
            )
            for k in TrialKind
        }
        hardware: dict[str, HardwareTally] = {}
        proposers: dict[str, ProposerTally] = {}
        for name, value in fields.items():
            family, _, rest = name.partition(":")
            who, _, part = rest.rpartition(":")
            if family == "hardware":
                tally = hardware.setdefault(who, HardwareTally())
                setattr(tally, part, value if part == "seconds" else round(value))
            elif family == "proposer":
                p = proposers.setdefault(who, ProposerTally())
                setattr(p, part, value if part in _FLOAT_PARTS else round(value))
        return cls(
            trials=trials if trials is not None else {s: n(STATE + s.value) for s in TrialState},
            outcomes=outcomes,
            durations=durations,
            hardware=hardware,
            candidates={s: n(candidate_key(s.value)) for s in CandidateState},
            proposers=proposers,
            decisions={k: n(decision_key(k.value)) for k in DecisionKind},
            sigma=fields.get(SIGMA),
            last_result_at=fields.get(LAST_RESULT),
            last_decision_at=fields.get(LAST_DECISION),
        )


def llm_spend(s: CampaignStats) -> ProposerTally:
    """The campaign's LLM spend, calls and tokens over every proposer: the one figure the
    spend cap, the metrics, `farm status`, the live view and the report read."""
    total = ProposerTally()
    for p in s.proposers.values():
        for f in dataclasses.fields(ProposerTally):
            setattr(total, f.name, getattr(total, f.name) + getattr(p, f.name))
    total.held_usd = max(total.held_usd, 0.0)  # float residue of holds settled
    return total


def bounds_from(fields: dict[str, float]) -> list[float]:
    """The duration bucket bounds among a campaign's fields."""
    found = {int(k[len(BOUND) :]): v for k, v in fields.items() if k.startswith(BOUND)}
    return [found[i] for i in sorted(found)]
