"""Records that travel between roles: dataclasses for rows, `str` Enums for states.

These are the only types the store, the controller, the workers and the proposers share.
Everything here is plain data (JSON-serialisable through `to_dict`/`from_dict`) so any
store backend can keep it and any process can read it back.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any


class TrialKind(enum.StrEnum):
    BASELINE = "baseline"  # the incumbent, run `repeats` times to estimate noise
    CANDIDATE = "candidate"  # the screening run of a new candidate
    CONFIRM = "confirm"  # independent re-runs of a candidate that looked better
    REBASE = "rebase"  # a winner re-applied on a newer incumbent, re-evaluated
    # A run of a keep merged onto the incumbent untried (on the evidence it had): its own
    # level, measured, replaces the estimate (before schema v4, filed as CONFIRM).
    MEASURE = "measure"
    # A short run of a new candidate before its screen ([merge] preflight_s): it catches a
    # crash, a NaN or a missing metric early; its metric is never judged.
    PREFLIGHT = "preflight"
    # A new candidate's screen at [merge] screen_budget_s: only the best of those ranked
    # against the same incumbent go on to a full-budget screen; its metric is never judged.
    SHORT = "short"


class TrialState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"  # claimed under a lease
    DONE = "done"  # a result is recorded (any outcome)
    DEAD = "dead"  # infrastructure kept failing: delivered too often, never ran to an outcome

    def is_finished(self) -> bool:
        return self in (TrialState.DONE, TrialState.DEAD)


class Outcome(enum.StrEnum):
    """How a trial ended. A failure is an outcome, never a score."""

    OK = "ok"  # finite metric
    CRASHED = "crashed"  # non-zero exit
    TIMEOUT = "timeout"  # killed at the wall-clock budget
    NO_METRIC = "no_metric"  # exited 0 but never printed the metric
    INVALID_METRIC = "invalid_metric"  # NaN or inf
    TAMPERED = "tampered"  # a protected file differed before or after the run

    def is_ok(self) -> bool:
        return self is Outcome.OK


class CandidateState(enum.StrEnum):
    QUEUED = "queued"  # validated, waiting for a slot
    RUNNING = "running"  # trials in flight or a decision pending
    KEPT = "kept"
    DISCARDED = "discarded"
    CRASHED = "crashed"
    REJECTED = "rejected"  # failed validation: never got GPU time
    SUPERSEDED = "superseded"  # won, but its edits no longer apply on the incumbent
    # Kept, then undone: its own runs could not measure it (they failed), so it is no
    # reference for anything after it.
    REVERTED = "reverted"

    def is_finished(self) -> bool:
        return self not in (CandidateState.QUEUED, CandidateState.RUNNING)

    def may_become(self, new: CandidateState) -> bool:
        """Whether a candidate in this state may be written in state `new` (the store refuses
        every other move: a finished record is frozen, a state never moves back)."""
        return new in CANDIDATE_MOVES[self]


# The moves a candidate's state may make. An unfinished state may be written again (a
# rebase, a commit); a finished one only moves on where a later fact undoes it.
CANDIDATE_MOVES: dict[CandidateState, frozenset[CandidateState]] = {
    CandidateState.QUEUED: frozenset(
        {CandidateState.QUEUED, CandidateState.RUNNING, CandidateState.SUPERSEDED}
    ),
    CandidateState.RUNNING: frozenset(
        {
            CandidateState.RUNNING,
            CandidateState.KEPT,
            CandidateState.DISCARDED,
            CandidateState.CRASHED,
            CandidateState.SUPERSEDED,
        }
    ),
    CandidateState.KEPT: frozenset({CandidateState.REVERTED}),
    CandidateState.DISCARDED: frozenset(),
    CandidateState.CRASHED: frozenset(),
    CandidateState.REJECTED: frozenset(),
    CandidateState.SUPERSEDED: frozenset(),
    CandidateState.REVERTED: frozenset(),
}


class DecisionKind(enum.StrEnum):
    KEPT = "kept"
    DISCARDED = "discarded"
    CRASHED = "crashed"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


class Direction(enum.StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    def improvement(self, *, old: float, new: float) -> float:
        """Positive when `new` is better than `old`."""
        return old - new if self is Direction.MINIMIZE else new - old

    def shift(self, value: float, *, by: float) -> float:
        """`value` made better by `by` (the inverse of `improvement`)."""
        return value - by if self is Direction.MINIMIZE else value + by


@dataclass(frozen=True)
class Edit:
    """An exact search/replace block on one editable file. An empty `search` creates the file."""

    path: str
    search: str
    replace: str


@dataclass
class Draft:
    """What a proposer returns: an idea and its edits, not yet validated."""

    title: str
    hypothesis: str
    edits: list[Edit]
    expected_effect: str = ""
    # Provenance, filled by the proposer backend for accounting and `farm report`.
    proposer: str = ""
    strategy: str = ""
    model: str = ""
    batch_id: str = ""
    prompt_hash: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    # Set by a proposer when the model's answer could not be read as a draft: the draft is
    # recorded as rejected with this reason (and keeps its cost in the ledger).
    problem: str = ""
    batch_size: int = 0  # drafts asked for in the proposer call this came from
    # hybrid: the numeric knobs a structural change declares worth tuning (ParamConfig
    # fields: file, name, low, high, log, int), the values a draft sets for its family's
    # knobs, and the structural candidate a tuning draft builds on.
    knobs: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, float] = field(default_factory=dict)
    parent: int | None = None
    # Beyond the number of drafts its call asked for (or the candidate limit): recorded as
    # rejected, never run, no failure of the call, and no bar to the same edit later.
    extra: bool = False


@dataclass
class Candidate:
    """A validated (or rejected) draft, numbered per campaign; branch farm/<campaign>/c<id>."""

    campaign: str
    id: int
    base_sha: str
    title: str
    hypothesis: str
    edits: list[Edit]
    files: dict[str, str]  # every editable file's text at this candidate (base + edits)
    edit_hash: str  # normalised-edit hash used for duplicate detection
    state: CandidateState = CandidateState.QUEUED
    commit_sha: str = ""  # the candidate's commit on its branch (set by the controller)
    generation: int = 0  # how often it was rebased onto a newer incumbent
    reason: str = ""  # why rejected / discarded / superseded
    expected_effect: str = ""
    proposer: str = ""
    strategy: str = ""
    model: str = ""
    batch_id: str = ""
    prompt_hash: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    created_at: float = field(default_factory=time.time)
    batch_size: int = 0  # drafts asked for in its proposer call (0: not recorded)
    knobs: list[dict[str, Any]] = field(default_factory=list)  # see Draft
    params: dict[str, float] = field(default_factory=dict)
    parent: int | None = None
    call: str = ""  # the paid proposer call (ProposerCall.id) that brought it, if any
    extra: bool = False  # see Draft.extra

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        d = dict(d)
        d["edits"] = [Edit(**e) for e in d["edits"]]
        d["state"] = CandidateState(d["state"])
        return cls(**d)


class CallState(enum.StrEnum):
    """Where a paid proposer call stands. Only IN_FLIGHT moves, once, to one of the others."""

    IN_FLIGHT = "in_flight"  # sent: its worst case is held against the spend cap
    ANSWERED = "answered"  # its drafts are recorded; it costs what its answer's usage says
    # It brought no draft: the API answered an error or not at all (billed nothing), or an
    # answer that held none (billed as it says).
    FAILED = "failed"
    # Its answer was never recorded (the proposer stopped or died): it stays counted at its
    # worst case, as the API may have billed it.
    LOST = "lost"

    def is_finished(self) -> bool:
        return self is not CallState.IN_FLIGHT


@dataclass
class ProposerCall:
    """One paid proposer call (an LLM request), the ledger's record of LLM spend.

    While in flight it holds `reserved_usd`, the call's worst case, against the spend cap;
    once settled it costs `cost_usd` (a lost call: its worst case). Its drafts are
    candidates that name it (`Candidate.call`) and carry a share of its cost and tokens for
    attribution; spend itself is read from calls only, so a call that brought no draft
    (a failure, an unreadable answer) still counts, and never as a candidate.
    """

    campaign: str
    id: str
    proposer: str = ""
    strategy: str = ""
    model: str = ""
    batch_id: str = ""
    label: str = ""  # what the call was for: its strategy, "… repair"
    batch_size: int = 0  # drafts the proposer batch it belongs to asked for
    state: CallState = CallState.IN_FLIGHT
    reserved_usd: float = 0.0
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    drafts: int = 0  # drafts its answer brought (extras included)
    reason: str = ""  # why it failed or was lost
    created_at: float = field(default_factory=time.time)
    settled_at: float = 0.0
    holder: str = ""  # the process that sent it (farm.processes.process_id)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProposerCall:
        d = dict(d)
        d["state"] = CallState(d["state"])
        return cls(**d)


@dataclass
class TrialResult:
    """What a worker reports for one trial. `metric` is set only when outcome is ok."""

    trial_id: str
    outcome: Outcome
    metric: float | None = None
    summary: dict[str, float] = field(default_factory=dict)  # every `key: value` line seen
    exit_code: int | None = None
    duration_s: float = 0.0  # training process wall time
    hardware: str = ""  # GPU model, or "cpu"
    node: str = ""  # the Ray node id it ran on
    protected_hash: str = ""
    output_tail: str = ""
    isolation: str = ""  # the sandbox it ran in: strict | basic
    peak_memory_mb: float = 0.0  # the most its processes held together
    # Worker-side timings (unix seconds) for overhead accounting.
    started_at: float = 0.0  # worker began materialising
    process_started_at: float = 0.0
    process_ended_at: float = 0.0
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialResult:
        d = dict(d)
        d["outcome"] = Outcome(d["outcome"])
        return cls(**d)


@dataclass
class TrialSpec:
    """Everything a worker needs to run one trial; the git bundle travels beside it."""

    trial_id: str
    repo_key: str  # names the per-node cache repo of this target
    base_sha: str  # must be in the bundle
    files: dict[str, str]  # written over the base checkout: the editable files of the commit
    command: str
    seed: int
    seed_env: str
    metric: str
    metric_regex: str
    budget_s: float
    grace_s: float
    env_allow: list[str]
    env: dict[str, str]
    output_cap_bytes: int
    network: str  # isolated | host | auto
    memory_mb: int  # 0: no limit
    protected_hashes: dict[str, str]  # path -> sha256 hex expected before and after the run
    isolation: str = "auto"  # auto | strict | basic
    read_only_paths: list[str] = field(default_factory=list)  # beyond the runtime
    deny_paths: list[str] = field(default_factory=list)  # never shown, even as runtime
    evaluate: str = ""  # the protected measuring command; "" = the metric is the command's
    evaluate_budget_s: float = 0.0
    artifacts: list[str] = field(default_factory=list)  # what training leaves for `evaluate`
    artifacts_safe_load: bool = False  # the evaluator never unpickles them: not checked
    cpus: float = 1.0  # its CPU weight against the node's other trials ([resources] cpus_per_trial)
    bounds: list[float] = field(default_factory=list)  # [lo, hi]; a metric outside is invalid
    # A pre-flight: `budget_s` is [merge] preflight_s, a run still going at it has passed,
    # `evaluate` is not run and no metric is reported (workers/trial.py).
    preflight: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        return cls(**d)


@dataclass
class Trial:
    """One evaluation of one commit with one seed."""

    id: str
    campaign: str
    kind: TrialKind
    commit_sha: str  # what runs (for the ledger; workers never need this commit)
    base_sha: str  # the campaign's start commit, shipped as a bundle; `files` go on top
    seed: int
    candidate_id: int | None = None  # None for baseline trials
    files: dict[str, str] = field(default_factory=dict)
    state: TrialState = TrialState.QUEUED
    worker: str = ""
    lease_expires: float = 0.0
    deliveries: int = 0  # how many times it was claimed (infra retries)
    result: TrialResult | None = None
    created_at: float = field(default_factory=time.time)
    reference: str = ""  # a short screen: the incumbent it is ranked against
    partner: str = ""  # a screen: the reference's run whose seed it shares (paired)
    # A re-run on a mixed fleet: the hardware class to run on where a slot of it is free,
    # the one its reference ran on most (the offsets between classes then cancel).
    prefer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        d = dict(d)
        d["kind"] = TrialKind(d["kind"])
        d["state"] = TrialState(d["state"])
        if d.get("result") is not None:
            d["result"] = TrialResult.from_dict(d["result"])
        return cls(**d)


@dataclass
class Decision:
    """What the controller did with a candidate, and why. One per candidate."""

    campaign: str
    candidate_id: int
    kind: DecisionKind
    reason: str
    metric: float | None = None  # the candidate's estimate (confirmation runs when any)
    delta: float | None = None  # improvement over the incumbent, positive = better
    sigma: float | None = None
    incumbent_before: str = ""
    incumbent_after: str = ""
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        d = dict(d)
        d["kind"] = DecisionKind(d["kind"])
        return cls(**d)


@dataclass(frozen=True)
class DriverLease:
    """Who drives a campaign (`farm run` or `farm control`): one process at a time, by a
    lease it renews; a holder that dies lets it lapse at `expires`."""

    holder: str
    since: float  # when this holder took it
    expires: float


@dataclass
class Incumbent:
    """The campaign's current best commit. Moved only by compare-and-set on `sha`."""

    sha: str
    metric: float | None = None  # estimate from its baseline / confirmation runs
    runs: int = 0  # how many trials that estimate averages
    candidate_id: int | None = None  # None for the starting commit
    files: dict[str, str] = field(default_factory=dict)  # editable files' text at `sha`
    updated_at: float = field(default_factory=time.time)
    # The incumbent this one replaced: a keep whose process died before its decision was
    # written is recorded against it on restart ("": the start commit, or an older store).
    replaced: str = ""

    @property
    def estimated(self) -> bool:
        """A keep merged untried, its metric an estimate until its own runs measure it."""
        return self.candidate_id is not None and self.runs == 0

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Incumbent:
        return cls(**d)


@dataclass
class Campaign:
    """One optimisation effort on a target. `config` is the farm.toml snapshot it started with."""

    id: str
    target: str  # path of the target repo on the driver
    start_sha: str
    config: dict[str, Any]
    program: str = ""  # program.md at the start: proposers read it from the store
    # The protected files' text at the start (read-only context for LLM proposers).
    protected_files: dict[str, str] = field(default_factory=dict)
    sigma: float | None = None  # baseline seed noise, once the baseline repeats are in
    baseline_metric: float | None = None  # the start commit's mean over its baseline runs
    baseline_runs: int = 0
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Campaign:
        return cls(**d)


def edit_hash(edits: list[Edit]) -> str:
    """Hash of edits with whitespace at line ends and blank lines normalised away."""

    def norm(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())

    payload = sorted((e.path, norm(e.search), norm(e.replace)) for e in edits)
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def _to_dict(obj: Any) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = convert(obj)
    return result
