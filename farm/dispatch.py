"""The dispatcher: claims trials from the store and runs each as a Ray task.

The git repo stays with the driver; each base commit travels once as a git bundle through
Ray's object store, the candidate's changed files beside it. Infrastructure failures (a
worker or node died, materialising failed) give the trial back to the queue; after
`MAX_DELIVERIES` claims it is dead. A candidate's own failure is a result, never retried.
On a mixed fleet a re-run that prefers a hardware class (`Trial.prefer`) is claimed for a
slot of that class that has just come free and asked of Ray for its nodes, softly: with
none free it runs elsewhere rather than wait.
"""

from __future__ import annotations

import logging
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray

from farm.config import TargetConfig
from farm.errors import ResourceError
from farm.gitops import Repo
from farm.processes import gone_here, process_id
from farm.progress import ClusterView, plural
from farm.records import Trial, TrialKind, TrialResult, TrialSpec, TrialState
from farm.store import Store
from workers.isolation import Policy, SandboxError, resolve
from workers.materialize import make_bundle
from workers.trial import run_trial

log = logging.getLogger(__name__)

LEASE_S = 30.0  # a claim lapses this long after the last heartbeat
HEARTBEAT_S = 5.0  # a multiple of this, never the trial budget, is what the lease covers
REAP_EVERY_S = 5.0
MAX_DELIVERIES = 3  # claims of one trial before it is dead (infrastructure kept failing)
NODE_ID_LABEL = "ray.io/node-id"  # a label Ray gives every node


@ray.remote(max_retries=0)
def _trial_task(spec: dict[str, Any], bundle: bytes) -> dict[str, Any]:
    # Ray's own retries would bypass the store's delivery count; the store owns retries.
    result = run_trial(TrialSpec.from_dict(spec), bundle)
    result.node = ray.get_runtime_context().get_node_id()  # where it ran, as Ray names nodes
    return result.to_dict()


@ray.remote(max_retries=0)
def _policy_task(isolation: str, network: str) -> dict[str, Any]:
    return resolve(isolation, network).to_dict()


def sandbox_policy(cfg: TargetConfig) -> Policy:
    """The sandbox a trial gets, probed on a node that runs trials.

    Raises SandboxError when `[sandbox]` asks for what that node cannot give.
    """
    task = _policy_task.options(**{**resource_options(cfg), "num_cpus": 0, "num_gpus": 0})
    try:
        found: dict[str, Any] = ray.get(task.remote(cfg.sandbox.isolation, cfg.sandbox.network))
        return Policy.from_dict(found)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, SandboxError):
            raise SandboxError(str(e.cause)) from None
        raise


def trial_memory_mb(cfg: TargetConfig) -> int:
    """`[sandbox] memory_mb`, or else a fair share: the least memory any node that runs trials
    has per trial it holds at once (Ray's `memory` resource, which respects container limits)."""
    if cfg.sandbox.memory_mb:
        return cfg.sandbox.memory_mb
    fits = fitting_nodes(cfg)
    shares = [
        n["Resources"].get("memory", 0) / fits[n["NodeID"]]
        for n in ray.nodes()
        if n.get("NodeID") in fits and fits[n["NodeID"]] > 0
    ]
    return int(min(shares) // 2**20) if shares else 0


def resource_options(cfg: TargetConfig) -> dict[str, Any]:
    """The Ray resource request of every trial, from farm.toml's [resources]."""
    r = cfg.resources
    opts: dict[str, Any] = {"num_cpus": r.cpus_per_trial, "num_gpus": r.gpus_per_trial}
    if r.accelerator_type:
        opts["accelerator_type"] = r.accelerator_type
    if r.custom:
        opts["resources"] = dict(r.custom)
    if r.labels:
        opts["label_selector"] = dict(r.labels)
    return opts


def prefer_nodes(opts: dict[str, Any], nodes: set[str]) -> dict[str, Any]:
    """`opts` asking Ray for one of `nodes` while one of them has room, and for any node
    `opts` allows when none has (Ray's fallback strategy)."""
    hard = dict(opts.get("label_selector", {}))
    wanted = {**hard, NODE_ID_LABEL: f"in({','.join(sorted(nodes))})"}
    return {**opts, "label_selector": wanted, "fallback_strategy": [{"label_selector": hard}]}


def _request(cfg: TargetConfig) -> dict[str, float]:
    r = cfg.resources
    need = {"CPU": r.cpus_per_trial, "GPU": r.gpus_per_trial, **r.custom}
    if r.accelerator_type:
        need[f"accelerator_type:{r.accelerator_type}"] = 0.001
    return {k: v for k, v in need.items() if v > 0}


def fitting_nodes(cfg: TargetConfig, nodes: list[dict[str, Any]] | None = None) -> dict[str, int]:
    """Alive nodes that can ever run a trial, with how many trials each holds at once
    (`nodes`: what ray.nodes() said, if the caller has asked)."""
    need = _request(cfg)
    fits = {}
    for node in ray.nodes() if nodes is None else nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        labels = node.get("Labels", {}) or {}
        if any(labels.get(k) != v for k, v in cfg.resources.labels.items()):
            continue
        if all(have.get(k, 0) >= v for k, v in need.items()):
            per = [int(have[k] // v) for k, v in need.items() if not k.startswith("accelerator")]
            fits[node["NodeID"]] = min(per) if per else 1
    return fits


def check_feasible(cfg: TargetConfig) -> int:
    """Raise ResourceError if no node can ever run a trial; else the cluster's slot count."""
    fits = fitting_nodes(cfg)
    if not fits:
        nodes = [
            f"{n.get('NodeManagerAddress')} {n.get('Resources')} labels={n.get('Labels')}"
            for n in ray.nodes()
            if n.get("Alive")
        ]
        raise ResourceError(
            f"no node of the Ray cluster can run a trial needing {_request(cfg)}"
            + (f" with labels {cfg.resources.labels}" if cfg.resources.labels else "")
            + ". Alive nodes:\n  "
            + "\n  ".join(nodes)
            + "\nLower [resources] in farm.toml (gpus_per_trial = 0 on a CPU-only machine), "
            "or start nodes that have them (ray start --resources/--labels)."
        )
    return sum(fits.values())


@dataclass
class _InFlight:
    trial: Trial
    ref: ray.ObjectRef
    submitted_at: float


@dataclass
class Dispatcher:
    store: Store
    repo: Repo
    cfg: TargetConfig
    campaign: str
    slots: int
    worker_id: str = field(default_factory=process_id)
    on_result: Callable[[Trial, TrialResult], None] | None = None
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S
    _in_flight: dict[ray.ObjectRef, _InFlight] = field(default_factory=dict)
    _bundles: dict[str, ray.ObjectRef] = field(default_factory=dict)
    _hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    _memory_mb: int | None = None
    # The Ray nodes of each hardware class that results have come from (read from the
    # store at the first trial that prefers a class, then kept up to date).
    _nodes: dict[str, set[str]] | None = None
    _freed: set[str] = field(default_factory=set)  # classes whose trials ended since a claim
    # Said once each, for the role to print: nodes lost and back, trials left unplaced.
    notices: list[str] = field(default_factory=list)
    view: ClusterView = field(init=False)  # the nodes that can run trials, as last seen
    _alive: set[str] = field(default_factory=set)  # live node ids, as Ray said at the last look
    _fits: dict[str, int] | None = None  # node id -> trials it holds (None: not looked yet)
    _peak: int = 0  # the most slots the live nodes have held
    _most_nodes: int = 0  # the most live nodes that could run trials
    _said_classes: set[str] = field(default_factory=set)  # said to have no live node
    _said_trials: set[str] = field(default_factory=set)  # said to wait for a node
    _last_beat: float = 0.0
    _last_reap: float = 0.0

    def reclaim_orphans(self) -> list[str]:
        """Give back at once the trials a dead dispatcher on this host held.

        A restarted `farm run` need not wait for their leases to lapse: a worker id names
        its host and pid, and a pid that no longer exists holds nothing.
        """
        freed = []
        for t in self.store.list_trials(self.campaign, states={TrialState.RUNNING}):
            if gone_here(t.worker):
                self._give_back(t.id, worker=t.worker, failed=False)
                freed.append(t.id)
        return freed

    def __post_init__(self) -> None:
        self.view = ClusterView(slots=self.slots, asked=self.slots)

    @property
    def busy(self) -> int:
        return len(self._in_flight)

    def step(self, wait_s: float = 0.5) -> int:
        """Reap, claim into free slots, collect finished tasks. Returns results recorded."""
        now = time.time()
        if now - self._last_reap >= REAP_EVERY_S:
            self._last_reap = now
            for trial_id in self.store.reap(self.campaign, now=now, max_deliveries=MAX_DELIVERIES):
                log.warning("trial %s: lease lapsed; back in the queue", trial_id)
            self._look()
        free = self.view.slots - len(self._in_flight)
        if free > 0:
            for trial in self.store.claim_trials(
                self.campaign,
                worker=self.worker_id,
                n=free,
                lease_s=self.lease_s,
                hold=self._held(),
            ):
                self._submit(trial)
            self._freed.clear()
        if now - self._last_beat >= self.heartbeat_s and self._in_flight:
            self._last_beat = now
            ids = [f.trial.id for f in self._in_flight.values()]
            self.store.heartbeat(self.campaign, ids, worker=self.worker_id, lease_s=self.lease_s)
        if not self._in_flight:
            time.sleep(wait_s)
            return 0
        # Back as soon as one trial ends (a free slot waits for no poll period), with every
        # other one that has ended by then.
        ready, rest = ray.wait(list(self._in_flight), num_returns=1, timeout=wait_s)
        if ready and rest:
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            self._collect(self._in_flight.pop(ref))
        return len(ready)

    def _submit(self, trial: Trial) -> None:
        if trial.base_sha not in self._bundles:
            self._bundles[trial.base_sha] = ray.put(make_bundle(self.repo.path, trial.base_sha))
        spec = self._spec(trial)
        opts = resource_options(self.cfg)
        nodes = self._nodes_of(trial.prefer) if trial.prefer else set()
        if nodes and len(self._nodes or {}) > 1:  # a mixed fleet: the class matters
            opts = prefer_nodes(opts, nodes)
        ref = _trial_task.options(**opts).remote(spec.to_dict(), self._bundles[trial.base_sha])
        self._in_flight[ref] = _InFlight(trial=trial, ref=ref, submitted_at=time.time())

    def _held(self) -> set[str]:
        """The hardware classes with no slot just come free: a trial that prefers one waits
        behind the others for a claim where one is (nothing is held before a trial ends,
        nor a class whose nodes are gone)."""
        if not self._freed or not self._nodes or len(self._nodes) < 2:
            return set()
        return {c for c, ids in self._nodes.items() if ids & self._alive} - self._freed

    def _look(self) -> None:
        """Which nodes can run trials now (one GCS call, every REAP_EVERY_S): the slots
        follow them once one is lost, and a node lost or back, a hardware class left with
        no live node and a trial waiting longer than a budget for a node are said once."""
        nodes = ray.nodes()
        self._alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        where = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
        fits, first, before = fitting_nodes(self.cfg, nodes), self._fits is None, self._fits or {}
        self._fits = fits
        held = sum(fits.values())
        self._peak = max(self._peak, held)
        self._most_nodes = max(self._most_nodes, len(fits))
        # Asking beyond what the nodes hold is kept (an autoscaler adds nodes for pending
        # trials) until a node is lost: then no more than the live nodes hold.
        slots = self.slots if held >= self._peak else min(self.slots, held)
        lost = sorted(before.keys() - fits.keys())
        for node in lost:
            self.notices.append(
                f"node {where.get(node, '?')} ({node[:8]}) lost: it held "
                f"{plural(before[node], 'trial')}; {plural(slots, 'slot')} left"
                + ("" if slots else ": no live node can run a trial, the trials wait")
            )
        for node in [] if first else sorted(fits.keys() - before.keys()):
            self.notices.append(
                f"node {where.get(node, '?')} ({node[:8]}) can run trials: "
                f"{plural(slots, 'slot')} now"
            )
        # The classes trials ran on, read from the store at the first loss (or preference).
        classes = self._classes() if lost or self._nodes is not None else {}
        for c, n in sorted(classes.items()):
            if n == 0 and c not in self._said_classes:
                self._said_classes.add(c)
                self.notices.append(f"hardware class {c}: no live node left")
            elif n:
                self._said_classes.discard(c)
        waits = {f.trial.id: self._placement_wait(f) for f in self._in_flight.values()}
        waits = {t: w for t, w in waits.items() if w > 0}
        for trial_id in sorted(waits.keys() - self._said_trials):
            self._said_trials.add(trial_id)
            self.notices.append(
                f"trial {trial_id} has waited over a budget for a node that can run it "
                "(the [resources] of farm.toml, the Ray cluster's nodes)"
            )
        self.view = ClusterView(
            slots=slots,
            asked=self.slots,
            alive=len(fits),
            lost=self._most_nodes - len(fits),
            classes=classes,
            unplaced=len(waits),
            placement_wait_s=max(waits.values(), default=0.0),
        )

    def _classes(self) -> dict[str, int]:
        """Live nodes of each hardware class trials have run on."""
        self._nodes_of("")  # read from the store once
        return {c: len(ids & self._alive) for c, ids in (self._nodes or {}).items()}

    def _budget(self, trial: Trial) -> float:
        return {
            TrialKind.PREFLIGHT: self.cfg.merge.preflight_s,
            TrialKind.SHORT: self.cfg.merge.screen_budget_s,
        }.get(trial.kind, self.cfg.budget_s)

    def _placement_wait(self, flight: _InFlight) -> float:
        """How long a trial has waited for a node, once that is over a budget (else 0): a
        trial in flight for longer than its run may take (budget and grace, the evaluation's
        too) has spent the rest waiting to be placed."""
        run = self._budget(flight.trial) + self.cfg.sandbox.grace_s
        if self.cfg.evaluate:
            run += self.cfg.evaluate_budget_s + self.cfg.sandbox.grace_s
        waited = time.time() - flight.submitted_at - run
        return waited if waited > self._budget(flight.trial) else 0.0

    def _nodes_of(self, hardware: str) -> set[str]:
        if self._nodes is None:
            self._nodes = {}
            for t in self.store.list_trials(self.campaign, states={TrialState.DONE}):
                if t.result:
                    self._learn(t.result)
        return self._nodes.get(hardware, set())

    def _learn(self, result: TrialResult) -> None:
        if self._nodes is not None and result.node:
            self._nodes.setdefault(result.hardware, set()).add(result.node)

    def _spec(self, trial: Trial) -> TrialSpec:
        if trial.base_sha not in self._hashes:
            self._hashes[trial.base_sha] = self.repo.file_hashes(trial.base_sha, self.cfg.protected)
        sb = self.cfg.sandbox
        if self._memory_mb is None:
            self._memory_mb = trial_memory_mb(self.cfg)
        preflight = trial.kind is TrialKind.PREFLIGHT
        budget_s = self._budget(trial)
        return TrialSpec(
            trial_id=trial.id,
            repo_key=f"{trial.base_sha[:12]}-{self.repo.path.name}",
            base_sha=trial.base_sha,
            files=trial.files,
            command=self.cfg.command,
            seed=trial.seed,
            seed_env=self.cfg.seed_env,
            metric=self.cfg.metric,
            metric_regex=self.cfg.metric_regex,
            budget_s=budget_s,
            grace_s=sb.grace_s,
            env_allow=self.cfg.env_allow,
            env=dict(sb.env),
            output_cap_bytes=sb.output_cap_kb * 1024,
            network=sb.network,
            memory_mb=self._memory_mb,
            protected_hashes=self._hashes[trial.base_sha],
            isolation=sb.isolation,
            read_only_paths=list(sb.read_only_paths),
            # Where this driver keeps the repo and the store: never shown to a trial, not
            # even as part of a runtime path.
            deny_paths=[str(self.repo.path), *self.store.local_paths()],
            evaluate=self.cfg.evaluate,
            evaluate_budget_s=self.cfg.evaluate_budget_s,
            artifacts=list(self.cfg.artifacts),
            artifacts_safe_load=self.cfg.artifacts_safe_load,
            cpus=self.cfg.resources.cpus_per_trial or 1.0,
            bounds=list(self.cfg.bounds),
            preflight=preflight,
        )

    def _collect(self, flight: _InFlight) -> None:
        trial = flight.trial
        try:
            result = TrialResult.from_dict(ray.get(flight.ref))
        except (ray.exceptions.RayError, OSError) as e:
            # The worker, its node or materialising failed: not the candidate's fault.
            log.warning("trial %s: infrastructure failure, retrying: %s", trial.id, _first_line(e))
            self._give_back(trial.id, worker=self.worker_id, failed=True)
            return
        self._learn(result)
        self._freed.add(result.hardware)
        if self.store.record_result(self.campaign, result) and self.on_result:
            self.on_result(trial, result)

    def _give_back(self, trial_id: str, *, worker: str, failed: bool) -> None:
        self.store.release(
            self.campaign, trial_id, worker=worker, max_deliveries=MAX_DELIVERIES, failed=failed
        )

    def shutdown(self, *, timeout_s: float = 10.0) -> None:
        """Stop what runs (the worker kills each training process group) and give it back.

        A trial that has already ended keeps its result, and only the others are cancelled:
        Ray's core can abort this process with "Check failed … Tried to complete task that
        was not pending" when a cancel meets a task's completion (ray-project/ray#54846),
        so no task is cancelled that has ended, and the cancelled ones have `timeout_s` to
        answer before the caller shuts Ray down.
        """
        refs = list(self._in_flight)
        ended = ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
        for ref in ended:
            self._collect(self._in_flight.pop(ref))
        for flight in self._in_flight.values():
            ray.cancel(flight.ref, force=False)
        deadline = time.time() + timeout_s
        refs = list(self._in_flight)
        while refs and time.time() < deadline:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        for flight in self._in_flight.values():
            self._give_back(flight.trial.id, worker=self.worker_id, failed=False)
        self._in_flight.clear()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def announce_sandbox(cfg: TargetConfig, *, out: TextIO) -> Policy:
    """Say which sandbox trials get and what it leaves out (SandboxError when refused)."""
    policy = sandbox_policy(cfg)
    lines = policy.describe(evaluate=bool(cfg.evaluate))
    if not cfg.evaluate:
        lines.append(
            f"note: {cfg.metric} comes from code the candidate can edit (no `evaluate` in "
            "farm.toml): a claim, not a measurement"
        )
    for line in lines:  # 80 columns, as every line of a campaign
        print(textwrap.fill(line, 80, initial_indent="farm: ", subsequent_indent="  "), file=out)
    out.flush()
    return policy
