"""`farm simulate`: the real controller, merge rule and proposer scheduling on a virtual clock.

Nothing trains and nothing sleeps. Trials are modelled (lognormal durations, crashes, whole
nodes lost and their leases lapsing), the proposer's calls take a modelled LLM latency, and
a synthetic target scores each trial: its true metric is a known function of its constants,

    loss = Σ_i w_i·d_i² + Σ_(i,j) v_ij·d_i·d_j   plus   noise · N(0, 1) per trial,

with d_i = log2 x_i − log2 x*_i and some pairs of knobs coupled (v_ij: a change that helps
alone can hurt next to another, as learning rate and batch size do),

so the simulator knows how far every incumbent really is from the optimum and which keeps
were mistakes. A short screen ([merge] screen_budget_s) sees the same loss, except for
"late" knobs (`late`: their share), whose benefit appears only at the full budget: short,
moving one toward its optimum looks as bad as moving it away does at the end (a larger
batch or a deeper model trains slower at first).

What is real: `Controller.step` (pre-flights, short and paired screens, confirmations, the
noise-aware rule, rebases), the `Feeder` (backlog or synchronous rounds, batch size,
validation, dedupe), the `mutate` proposer and a SQLite store. Git is modelled by `SimRepo`,
since commits play no part in a decision. The campaign runs a target's own `[merge]` and
proposer scheduling (`model_of`): the rule simulated is the rule `farm run` would apply.
Two runs with the same seed (a paired screen and its partner run) share `rho` of their seed
noise, as small changes to a real target do.

It answers two questions: how busy a farm of N slots stays, and how many experiments per
slot-hour and how much wall time it takes to reach a target against a one-slot sequential
loop (autoresearch: propose one change, train, decide, repeat); and, for batch proposal
tuning, which batch size and backlog keep N slots busy for a given LLM latency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import random
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from farm.config import MergeConfig, TargetConfig, config_from_dict, short_screens_on
from farm.controller import Controller
from farm.gitops import Repo
from farm.merge import Fidelity, fidelity
from farm.propose import Feeder, FeedSizes, ProposalBatch
from farm.records import (
    Campaign,
    CandidateState,
    Decision,
    DecisionKind,
    Incumbent,
    Outcome,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store import Store
from farm.store.sqlite import SQLiteStore
from proposer.mutate import MutateProposer

CAMPAIGN = "sim"
START_SHA = "0" * 40
TRAIN = "train.py"


def _synthetic(**keys: object) -> dict[str, object]:
    """The farm.toml of the synthetic target, with these keys."""
    return {"editable": [TRAIN], "command": "python train.py", "metric": "loss", **keys}


def default_config() -> TargetConfig:
    """farm's defaults, as `farm run` has them for a target that sets nothing and, like the
    synthetic target, trains for the FARM_BUDGET_S it is given (short screens on)."""
    return short_screens_on(config_from_dict(_synthetic(), source="farm simulate"))


_DEFAULTS = default_config()


class SimRepo:
    """The controller's git, modelled: a commit is a hash of its base and files."""

    path = Path("simulated")

    def __init__(self, start: str, files: dict[str, str]) -> None:
        self.branches: dict[str, str] = {}
        self.parents: dict[str, str] = {}
        self.files = {start: dict(files)}  # each commit's editable files

    def commit_files(self, base: str, files: dict[str, str], **_: object) -> str:
        sha = hashlib.sha1((base + repr(sorted(files.items()))).encode()).hexdigest()
        self.parents[sha] = base
        self.files[sha] = dict(files)
        return sha

    def read_files(self, sha: str, paths: list[str]) -> dict[str, str]:
        return {p: text for p, text in self.files[sha].items() if p in paths}

    def set_branch(self, branch: str, sha: str) -> None:
        self.branches[branch] = sha

    def fast_forward(self, branch: str, *, old: str, new: str) -> None:
        self.branches[branch] = new

    def ref_sha(self, ref: str) -> str | None:
        return self.branches.get(ref.removeprefix("refs/heads/"))

    def is_ancestor(self, old: str, new: str) -> bool:
        while new != old and new in self.parents:
            new = self.parents[new]
        return new == old


# -- the synthetic target ----------------------------------------------------------------------
_KNOB_NOTE = "  # a knob"
_KNOB_LINE = re.compile(rf"^(K\d+) = (\S+){re.escape(_KNOB_NOTE)}$", re.M)


@dataclass(frozen=True)
class Landscape:
    """A target whose true loss is known: every constant has an optimum a few doublings away."""

    names: tuple[str, ...]
    optima: tuple[float, ...]  # log2 of each constant's best value (all start at 1.0)
    weights: tuple[float, ...]
    pairs: tuple[tuple[int, int, float], ...]  # coupled knobs (i, j, v_ij)
    noise: float  # σ of one trial
    late: tuple[int, ...] = ()  # knobs whose benefit a short screen does not see
    _losses: dict[tuple[str, bool], float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def make(cls, *, constants: int, noise: float, seed: int, late: float = 0.0) -> Landscape:
        rng = random.Random(f"landscape/{seed}")
        lates = random.Random(f"late/{seed}").sample(range(constants), round(late * constants))
        weights = tuple(rng.uniform(0.5, 2.0) for _ in range(constants))
        knobs = list(range(constants))
        rng.shuffle(knobs)
        # Half of the knobs coupled in pairs, strongly (|v| < 2·sqrt(w_i·w_j) keeps one
        # optimum).
        pairs = tuple(
            (i, j, rng.choice((-1, 1)) * 1.2 * math.sqrt(weights[i] * weights[j]))
            for i, j in zip(
                knobs[: constants // 2 : 2], knobs[1 : constants // 2 : 2], strict=False
            )
        )
        return cls(
            names=tuple(f"K{i:03d}" for i in range(constants)),
            optima=tuple(float(rng.choice((-3, -2, -1, 1, 2, 3))) for _ in range(constants)),
            weights=weights,
            pairs=pairs,
            noise=noise,
            late=tuple(sorted(lates)),
        )

    def train_py(self) -> str:
        """The start file: every constant at 1.0, as autoresearch-style globals."""
        lines = ['"""Synthetic target of farm simulate."""', ""]
        lines += [f"{name} = 1.0{_KNOB_NOTE}" for name in self.names]
        return "\n".join(lines) + "\n"

    def true_loss(self, text: str, *, short: bool = False) -> float:
        """The loss at the full budget, or (`short`) at a short screen's."""
        # Parsed once per file content: every run of a commit, and the incumbent at every
        # tick, read the same text (parsing it per trial was a third of a run).
        key = (text, short)
        if key not in self._losses:
            self._losses[key] = self._loss(text, short=short)
        return self._losses[key]

    def _loss(self, text: str, *, short: bool) -> float:
        # The file `train_py` writes, with the values drafts set: read by its own pattern
        # (a Python parse of 1,024 knobs per commit was most of a long one-slot run).
        values = {name: float(value) for name, value in _KNOB_LINE.findall(text)}
        if min(values.values()) <= 0:
            return math.inf
        optima = [-o if short and i in self.late else o for i, o in enumerate(self.optima)]
        d = [math.log2(values[n]) - opt for n, opt in zip(self.names, optima, strict=True)]
        return sum(w * x * x for w, x in zip(self.weights, d, strict=True)) + sum(
            v * d[i] * d[j] for i, j, v in self.pairs
        )

    def draw(self, text: str, seed: int, *, short: bool = False, rho: float = 0.0) -> float:
        """One trial's metric: the true loss plus seed noise. Two commits run with the same
        seed share `rho` of its variance (common random numbers: the same initialisation
        and data order), the rest is their own."""
        shared = random.Random(seed).gauss(0.0, 1.0)
        own = random.Random(f"{seed}/{text}").gauss(0.0, 1.0)
        eps = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own
        return self.true_loss(text, short=short) + self.noise * eps


# -- the model of the farm --------------------------------------------------------------------
@dataclass(frozen=True)
class SimModel:
    """What the simulator assumes about the cluster, the trials and the LLM."""

    slots: int = 16
    # The proposer's scheduling and the merge rule: farm.toml's [proposer] and [merge]
    # (`model_of`), farm's defaults unless given.
    schedule: str = _DEFAULTS.proposer.schedule  # backlog | rounds
    # Drafts per proposer call, validated candidates kept ready; None: sized from the slots
    # and the LLM's latency, as `farm run` sizes them (farm.propose.feed_sizes).
    batch_size: int | None = _DEFAULTS.proposer.batch_size
    backlog: int | None = _DEFAULTS.proposer.backlog
    trial_s: float = 300.0  # median trial duration
    trial_jitter: float = 0.1  # lognormal σ of trial durations
    crash_rate: float = 0.05  # share of candidates whose code crashes, part-way through
    llm_s: float = 75.0  # median latency of one proposer call
    llm_jitter: float = 0.3  # lognormal σ of that latency
    node_slots: int = 8  # slots per node; a lost node takes all of its trials with it
    node_loss_per_h: float = 0.0  # losses per node and hour
    node_down_s: float = 600.0  # a lost node comes back after this long
    lease_s: float = 30.0  # a lost trial returns to the queue when its lease lapses
    tick_s: float = 1.0  # the roles' poll period
    constants: int = 64  # knobs of the synthetic target
    noise: float = 0.5  # its seed noise σ
    rho: float = 0.0  # the share of it two commits run with the same seed have in common
    target: float = 0.2  # stop at this share of the starting loss (0: run to the end)
    max_candidates: int = 1000
    max_hours: float = 24 * 14
    seed: int = 0
    merge: MergeConfig = field(default_factory=lambda: _DEFAULTS.merge)
    # A mixed fleet: (hardware class, slots, metric offset) each; empty = `slots` of one
    # class. A faster card trains more steps in the same budget: a lower loss on every
    # commit alike, which the merge rule must not take for an improvement.
    fleet: tuple[tuple[str, int, float], ...] = ()
    blind: bool = False  # trials do not say their class: the rule cannot tell them apart
    anywhere: bool = False  # re-runs take any free slot, not one of their reference's class
    # Multi-fidelity ([merge] screen_budget_s > 0): the share of knobs whose benefit short
    # screens cannot see (the bias the rank monitor has to catch).
    late: float = 0.0

    @property
    def screen_fraction(self) -> float:
        """How long a short screen is, as a share of a (median) trial; 0: none."""
        return self.merge.screen_budget_s / self.trial_s

    def classes(self) -> tuple[tuple[str, int, float], ...]:
        return self.fleet or (("", self.slots, 0.0),)

    def sequential(self) -> SimModel:
        """The one-slot loop to compare with: propose one change, train, decide, repeat (on
        the fleet's first class)."""
        one = self.fleet[:1] and ((self.fleet[0][0], 1, self.fleet[0][2]),)
        return replace(
            self,
            slots=1,
            schedule="rounds",
            batch_size=1,
            backlog=0,
            fleet=one,
            merge=replace(self.merge, screen_budget_s=0.0),
            late=0,
        )


def model_of(cfg: TargetConfig, model: SimModel | None = None) -> SimModel:
    """The model of a farm running the target `cfg` describes: its [merge] rule and its
    proposer's scheduling (the proposer itself is `mutate`), on `model`'s cluster, trials
    and synthetic target."""
    p = cfg.proposer
    return replace(
        model or SimModel(),
        schedule=p.schedule,
        batch_size=p.batch_size,
        backlog=p.backlog,
        merge=cfg.merge,
    )


@dataclass
class SimResult:
    model: SimModel
    wall_s: float  # virtual time at the end (the target reached, or the run over)
    trials: int  # trials with a result
    busy_s: float  # slot-seconds of trials that produced a result
    lost_s: float  # slot-seconds of trials lost with their node
    candidates: int  # valid candidates created
    kept: int
    false_keeps: int  # kept although the true loss did not improve
    start_loss: float
    best_loss: float  # the final incumbent's true loss
    reached_s: float | None  # when the incumbent first reached the target
    proposer_calls: int
    feed: FeedSizes  # the batch size and backlog in force at the end
    starved_s: float  # slot-seconds idle while no trial waited in the queue
    fidelity: Fidelity  # the rank monitor of short screens at the end
    short_off_s: float | None  # when the rank monitor stopped short screens
    decided: list[Decided]  # every decision, in order, with what the simulator knows of it
    notices: list[str]  # what the controller said to the person running the campaign

    @property
    def utilisation(self) -> float:
        return self.busy_s / (self.model.slots * self.wall_s) if self.wall_s else 0.0

    @property
    def budgets_per_candidate(self) -> float:
        """Slot time per candidate created, in median trial lengths: what a decision costs."""
        return self.busy_s / (self.model.trial_s * self.candidates) if self.candidates else 0.0

    def kept_near(self, gain: float, *, tested: bool = False) -> tuple[int, int]:
        """Of the candidates judged (kept or discarded) whose true gain over what they were
        judged against was within half a σ of `gain` σ: how many were kept, of how many.
        At 2σ the merge rule's goal is 90% judged fresh; inside a campaign the incumbent's
        recorded value is what they are judged against. `tested`: only those the test
        judged on full-budget runs (not ranked out by a short screen)."""
        judged = [
            d
            for d in self.decided
            if d.decision.kind in (DecisionKind.KEPT, DecisionKind.DISCARDED)
            and abs((d.true_before - d.true_after) / self.model.noise - gain) < 0.5
            and not (tested and d.stage == SHORT_STAGE)
        ]
        return sum(d.decision.kind is DecisionKind.KEPT for d in judged), len(judged)

    @property
    def trials_per_slot_hour(self) -> float:
        return self.trials / (self.model.slots * self.wall_s / 3600) if self.wall_s else 0.0


SHORT_STAGE = "at a short screen"
# Where a candidate was decided: the latest kind of trial it ran (a rebase runs after the
# confirmations, a screen after a short screen, which runs after a pre-flight).
STAGES = (
    (TrialKind.REBASE, "after rebase runs"),
    (TrialKind.CONFIRM, "after confirmations"),
    (TrialKind.CANDIDATE, "at the screen"),
    (TrialKind.SHORT, SHORT_STAGE),
    (TrialKind.PREFLIGHT, "in pre-flight"),
)


def stage_of(kinds: set[TrialKind]) -> str:
    """Where a candidate that ran trials of these kinds was decided."""
    return next((said for kind, said in STAGES if kind in kinds), "before a run")


@dataclass(frozen=True)
class Decided:
    """A decision of the controller beside the truth only the simulator knows."""

    decision: Decision
    stage: str  # where it was decided (STAGES), "before a run" for none
    paired: bool  # its screen shared its seed with a run of its reference
    true_before: float  # the true loss of the commit it was judged against
    true_after: float  # the candidate's own

    def describe(self) -> str:
        d = self.decision
        return (
            f"c{d.candidate_id} {d.kind.value} {self.stage}"
            f"{' (paired)' if self.paired else ''}: true loss {self.true_before:.4g} → "
            f"{self.true_after:.4g}; {d.reason}"
        )


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)  # done | lost | node_up | node_down | proposal
    data: object = field(compare=False, default=None)


@dataclass
class _Running:
    trial: Trial
    node: int
    started: float
    result: TrialResult


class Simulation:
    """One campaign on a virtual clock. `run` returns what happened."""

    def __init__(self, model: SimModel, store_dir: Path, *, store: Store | None = None) -> None:
        self.model = model
        self.land = Landscape.make(
            constants=model.constants, noise=model.noise, seed=model.seed, late=model.late
        )
        self.start_text = self.land.train_py()
        self.start_loss = self.land.true_loss(self.start_text)
        self.cfg = sim_config(model)
        # A store of its own (SQLite), or one given (scripts/bench/ledger_growth.py: Redis).
        self.store = store or SQLiteStore(store_dir / f"sim-{model.slots}-{model.seed}.db")
        self.store.create_campaign(
            Campaign(id=CAMPAIGN, target="", start_sha=START_SHA, config=self.cfg.to_dict()),
            Incumbent(sha=START_SHA, files={TRAIN: self.start_text}),
        )
        self.repo = SimRepo(START_SHA, {TRAIN: self.start_text})
        self.controller = Controller(
            store=self.store, repo=cast(Repo, self.repo), cfg=self.cfg, campaign=CAMPAIGN
        )
        self.feeder = Feeder(
            store=self.store,
            cfg=self.cfg,
            campaign=CAMPAIGN,
            proposer=MutateProposer(seed=model.seed),
            max_candidates=model.max_candidates,
            slots=model.slots,
            latency_s=model.llm_s,
        )
        self.rng = random.Random(f"sim/{model.seed}")
        self.now = 0.0
        self._events: list[_Event] = []
        self._seq = itertools.count()
        # Nodes of `node_slots` slots (the last of a class smaller), each of one class.
        self.nodes: list[tuple[int, str, float]] = [
            (min(model.node_slots, n - first), name, offset)
            for name, n, offset in model.classes()
            for first in range(0, n, model.node_slots)
        ]
        self.nodes_up = [True] * len(self.nodes)
        self.running: dict[str, _Running] = {}
        self.calls = 0
        self.calling = False
        self.busy_s = self.lost_s = self.starved_s = 0.0
        self.trials = 0
        self.reached_s: float | None = None
        self.short_off_s: float | None = None
        for node in range(len(self.nodes_up)):
            self._schedule_loss(node)

    # -- events -------------------------------------------------------------------------
    def _at(self, delay: float, kind: str, data: object = None) -> None:
        heapq.heappush(self._events, _Event(self.now + delay, next(self._seq), kind, data))

    def _schedule_loss(self, node: int) -> None:
        if self.model.node_loss_per_h > 0:
            self._at(self.rng.expovariate(self.model.node_loss_per_h / 3600), "node_down", node)

    def _apply(self, ev: _Event) -> None:
        if ev.kind == "done":
            run = cast(_Running, ev.data)
            if self.running.get(run.trial.id) is not run:
                return  # lost with its node before it finished
            del self.running[run.trial.id]
            self.store.record_result(CAMPAIGN, run.result)
            self.busy_s += run.result.duration_s
            self.trials += 1
        elif ev.kind == "proposal":
            self.feeder.settle(self.feeder.record(cast(ProposalBatch, ev.data)))
            self.calling = False
        elif ev.kind == "node_down":
            node = cast(int, ev.data)
            self.nodes_up[node] = False
            for run in [r for r in self.running.values() if r.node == node]:
                del self.running[run.trial.id]
                self.lost_s += self.now - run.started
                self._at(self.model.lease_s, "lost", run.trial.id)  # the reaper's delay
            self._at(self.model.node_down_s, "node_up", node)
        elif ev.kind == "node_up":
            node = cast(int, ev.data)
            self.nodes_up[node] = True
            self._schedule_loss(node)
        elif ev.kind == "lost":
            self.store.release(
                CAMPAIGN, cast(str, ev.data), worker="sim", max_deliveries=3, failed=True
            )

    # -- the roles' poll loop -------------------------------------------------------------
    def _free_slots(self) -> list[int]:
        """The node of every free slot on a node that is up."""
        used = [0] * len(self.nodes_up)
        for r in self.running.values():
            used[r.node] += 1
        free = []
        for node, up in enumerate(self.nodes_up):
            size = self.nodes[node][0]
            free += [node] * ((size - used[node]) if up else 0)
        return free

    def _classes_up(self) -> set[str]:
        return {self.nodes[n][1] for n, up in enumerate(self.nodes_up) if up}

    def _dispatch(self) -> None:
        free = self._free_slots()
        if len(self.nodes) > 1:  # Ray places a task on any node with room, not the first
            self.rng.shuffle(free)
        # As the dispatcher claims and asks Ray: a re-run goes to a slot of the class it
        # prefers while one is free, and waits behind the others while none is.
        held = (
            set() if self.model.anywhere else self._classes_up() - {self.nodes[n][1] for n in free}
        )
        trials = self.store.claim_trials(
            CAMPAIGN, worker="sim", n=len(free), lease_s=1e9, hold=held
        )
        for trial in trials:
            prefer = "" if self.model.anywhere else trial.prefer
            node = next((n for n in free if prefer and self.nodes[n][1] == prefer), free[0])
            free.remove(node)
            result = self._outcome(trial, node)
            run = _Running(trial=trial, node=node, started=self.now, result=result)
            self.running[trial.id] = run
            self._at(result.duration_s, "done", run)

    def _outcome(self, trial: Trial, node: int) -> TrialResult:
        m = self.model
        duration = m.trial_s * self.rng.lognormvariate(0.0, m.trial_jitter)
        text = (trial.files or {TRAIN: self.start_text})[TRAIN]
        _, hardware, offset = self.nodes[node]
        hardware = "" if m.blind else hardware
        # A crash belongs to the change (a bad value diverges, runs out of memory): every
        # run of a broken candidate crashes at the same point of its training; the baseline
        # and the merges work. A shorter run (a pre-flight, a short screen) ends before it
        # or not.
        key = f"{m.seed}/c{trial.candidate_id}"
        broken = random.Random(key).random() < m.crash_rate
        crash_at = random.Random(f"{key}/crash").uniform(0.05, 1.0) * duration
        until = {
            TrialKind.PREFLIGHT: m.merge.preflight_s,
            TrialKind.SHORT: m.screen_fraction * duration,
        }.get(trial.kind, duration)
        if trial.candidate_id is not None and broken and crash_at < until:
            return TrialResult(
                trial_id=trial.id,
                outcome=Outcome.CRASHED,
                exit_code=1,
                duration_s=crash_at,
                output_tail="RuntimeError: CUDA error: an illegal memory access (simulated)",
                hardware=hardware,
            )
        if trial.kind is TrialKind.PREFLIGHT:  # still running at preflight_s: passed, stopped
            return TrialResult(
                trial_id=trial.id, outcome=Outcome.OK, duration_s=until, hardware=hardware
            )
        seed = trial.seed * 7919 + self.model.seed
        short = trial.kind is TrialKind.SHORT
        metric = self.land.draw(text, seed, short=short, rho=m.rho) + offset
        return TrialResult(
            trial_id=trial.id,
            outcome=Outcome.OK,
            metric=metric,
            duration_s=until,
            hardware=hardware,
        )

    def _propose(self) -> None:
        if self.calling or self.feeder.done:
            return
        n = self.feeder.wanted()
        if not n:
            return
        batch = self.feeder.ask(n)  # drafted from what the store holds now, landing later
        self.calls += 1
        self.calling = True
        self._at(
            self.model.llm_s * self.rng.lognormvariate(0.0, self.model.llm_jitter),
            "proposal",
            batch,
        )

    def _incumbent_loss(self) -> float:
        return self.land.true_loss(self.store.get_incumbent(CAMPAIGN).files[TRAIN])

    def _finished(self) -> bool:
        if self.reached_s is not None:
            return True
        waiting = {CandidateState.QUEUED, CandidateState.RUNNING}
        done = not self.calling and self.feeder.done
        return done and self.store.is_quiet(CAMPAIGN, waiting=waiting)

    def run(self) -> SimResult:
        target = self.model.target * self.start_loss
        limit = self.model.max_hours * 3600
        tick = self.model.tick_s
        while True:
            while self._events and self._events[0].at <= self.now:
                self._apply(heapq.heappop(self._events))
            self.controller.step(slots=self.model.slots)
            if self.short_off_s is None and self.controller.screening_stopped():
                self.short_off_s = self.now
            if self.model.target and self._incumbent_loss() <= target:
                self.reached_s = self.now
            self._propose()
            self._dispatch()
            if self._finished() or self.now >= limit:
                break
            if not self._events:
                break  # nothing can happen any more (a stuck campaign ends the run)
            # Jump to the next event, on the poll grid: idle ticks change nothing.
            nxt = max(self.now + tick, math.ceil(self._events[0].at / tick) * tick)
            idle = len(self._free_slots())
            if idle and not self.store.count_trials(CAMPAIGN)[TrialState.QUEUED]:
                self.starved_s += idle * (nxt - self.now)
            self.now = nxt
        return self._result()

    def _result(self) -> SimResult:
        decisions = self.store.list_decisions(CAMPAIGN)
        cands = {c.id: c for c in self.store.list_candidates(CAMPAIGN)}
        loss_at = {START_SHA: self.start_loss}  # of every incumbent
        for d in decisions:
            if d.kind is DecisionKind.KEPT:
                loss_at[d.incumbent_after] = self.land.true_loss(cands[d.candidate_id].files[TRAIN])
        false_keeps = sum(
            loss_at[d.incumbent_after] >= loss_at[d.incumbent_before]
            for d in decisions
            if d.kind is DecisionKind.KEPT
        )
        trials = self.store.list_trials(CAMPAIGN)
        kinds: dict[int, set[TrialKind]] = {}
        paired: set[int] = set()
        for t in trials:
            if t.candidate_id is not None:
                kinds.setdefault(t.candidate_id, set()).add(t.kind)
                if t.partner:
                    paired.add(t.candidate_id)
        decided = [
            Decided(
                decision=d,
                stage=stage_of(kinds.get(d.candidate_id, set())),
                paired=d.candidate_id in paired,
                true_before=loss_at[
                    d.incumbent_before
                    if d.kind is DecisionKind.KEPT
                    else cands[d.candidate_id].base_sha
                ],
                true_after=self.land.true_loss(cands[d.candidate_id].files[TRAIN]),
            )
            for d in decisions
            if d.kind is not DecisionKind.REJECTED  # drafts that never ran
        ]
        return SimResult(
            model=self.model,
            wall_s=self.now,
            trials=self.trials,
            busy_s=self.busy_s,
            lost_s=self.lost_s,
            candidates=sum(c.state is not CandidateState.REJECTED for c in cands.values()),
            kept=sum(d.kind is DecisionKind.KEPT for d in decisions),
            false_keeps=false_keeps,
            start_loss=self.start_loss,
            best_loss=self._incumbent_loss(),
            reached_s=self.reached_s,
            proposer_calls=self.calls,
            feed=self.feeder.sizes(),
            starved_s=self.starved_s,
            fidelity=fidelity(trials, self.cfg.merge),
            short_off_s=self.short_off_s,
            decided=decided,
            notices=list(self.controller.notices),
        )

    def close(self) -> None:
        self.store.close()


def sim_config(model: SimModel) -> TargetConfig:
    """The farm.toml a simulated campaign runs with: the model's [merge] rule and proposer
    scheduling, on the synthetic target."""
    cfg = config_from_dict(
        _synthetic(
            budget_s=model.trial_s * 3,
            proposer={
                "kind": "mutate",
                "schedule": model.schedule,
                "seed": model.seed,
                **{
                    k: v
                    for k, v in (("batch_size", model.batch_size), ("backlog", model.backlog))
                    if v is not None  # unset: sized as `farm run` sizes them
                },
            },
        ),
        source="farm simulate",
    )
    return dataclasses.replace(cfg, merge=model.merge)


def merge_with(
    merge: MergeConfig, keys: dict[str, object], *, trial_s: float, source: str
) -> MergeConfig:
    """`merge` with these keys set, each checked as farm.toml's would be (`source` names
    where they came from in a message)."""
    checked = config_from_dict(_synthetic(budget_s=trial_s * 3, merge=keys), source=source)
    return replace(merge, **{k: getattr(checked.merge, k) for k in keys})


def simulate(model: SimModel) -> SimResult:
    with tempfile.TemporaryDirectory(prefix="farm-sim-", dir=_fast_tmp()) as tmp:
        sim = Simulation(model, Path(tmp))
        try:
            return sim.run()
        finally:
            sim.close()


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None
