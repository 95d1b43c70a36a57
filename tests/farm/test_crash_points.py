"""Each role killed at every write boundary, on both stores.

The controller: a campaign (a baseline, a keep, a winner merged untried and then measured,
a discard) is run once to count the controller's writes (store and git); then once for
every N, with the process "killed" right after its N-th write and restarted (a new store
connection, a new controller, as `farm run` starts). Every run must end where the
crash-free one did, with the campaign's invariants intact: every trial done once, one
decision per candidate, the incumbents' lineage acyclic, the best branch where the store
says and every candidate's branch at its commit, counters equal to a recount.

The dispatcher (one short cycle: requeue a lapsed claim, claim, run on Ray, record) and
the proposer (one short cycle of LLM calls against the local Messages API: held calls
answered, failed and lost, valid and rejected drafts) likewise, with their own
invariants. A write whose reply says it changed nothing (False, an empty list) is no
boundary: a kill there leaves what a kill before it does. A role is killed as its process
would be: its id names a process that is gone, and what it ran on Ray dies with it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fake_anthropic import FakeAnthropic, Received, Reply, draft, drafts_reply, overloaded
from helpers import (
    LINEAGE_DRAFTS,
    LINEAGE_TOML,
    LINEAGE_TRAIN,
    MakeTarget,
    flat,
    git,
    lineage_metric,
    recounted,
)

from farm.campaign import prepare
from farm.config import TargetConfig, load_config
from farm.controller import Controller
from farm.dispatch import Dispatcher
from farm.gitops import Repo, best_branch, candidate_branch
from farm.propose import Feeder, StoreBook, build_context, record_drafts
from farm.records import (
    CallState,
    CandidateState,
    DecisionKind,
    Draft,
    Outcome,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store import Store, open_store
from farm.store.stats import llm_spend
from proposer.anthropic import AnthropicProposer
from proposer.mutate import MutateProposer

STORE_WRITES = {"enqueue_trial", "update_candidate", "cas_incumbent", "record_decision"}
STORE_WRITES |= {"set_baseline"}
GIT_WRITES = {"commit_files", "set_branch", "fast_forward"}


class Killed(BaseException):
    """The role's process died here (no `except Exception` of the role's may catch it)."""


class Fault:
    """Counts the writes; kills the process right after the `at`-th (0: never). `log` holds
    every write that counted: (name, arguments, reply)."""

    def __init__(self, at: int) -> None:
        self.at, self.writes = at, 0
        self.log: list[tuple[str, tuple[Any, ...], Any]] = []

    @property
    def fired(self) -> bool:
        return 0 < self.at <= self.writes

    def wrap(self, inner: Any, names: set[str]) -> Any:
        fault = self

        class Faulty:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(inner, name)
                if name not in names:
                    return attr

                def write(*args: Any, **kwargs: Any) -> Any:
                    value = attr(*args, **kwargs)
                    if value is False or value == []:  # it changed nothing
                        return value
                    fault.writes += 1
                    fault.log.append((name, args, value))
                    if fault.writes == fault.at:
                        raise Killed(name)
                    return value

                return write

        return Faulty()


def gone_process() -> str:
    """host:pid:nonce of a process of this host that is gone: a killed role's id."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:killed"


def campaign(
    url: str, target: Path, cfg: TargetConfig, fault: Fault, *, slots: int = 8
) -> tuple[Store, int]:
    """Run the campaign to its end; returns its store and how many restarts it took."""
    store = open_store(url)
    prepare(target, cfg, store, check_command=False)

    def start() -> Controller:
        ctl = Controller(
            store=fault.wrap(store, STORE_WRITES),
            repo=fault.wrap(Repo(target), GIT_WRITES),
            cfg=cfg,
            campaign="default",
        )
        ctl.sync_best_branch()
        return ctl

    ctl: Controller | None = None
    restarts = 0
    drafts = LINEAGE_DRAFTS
    record_drafts(store, cfg, "default", drafts, build_context(store, cfg, "default"))
    for _ in range(60):
        try:
            ctl = ctl or start()
            ctl.step(slots=slots)
        except Killed:
            store.close()
            store = open_store(url)  # the restart: a new connection, a new controller
            ctl, restarts = None, restarts + 1
            continue
        for t in store.claim_trials("default", worker="w", n=100, lease_s=60):
            result = TrialResult(t.id, Outcome.OK, metric=lineage_metric(t.id))
            store.record_result("default", result)
        states = collections.Counter(c.state for c in store.list_candidates("default"))
        quiet = not (states[CandidateState.RUNNING] or states[CandidateState.QUEUED])
        if quiet and not store.get_incumbent("default").estimated:
            return store, restarts
    raise AssertionError(f"the campaign did not end (killed after write {fault.at})")


def outcome(store: Store) -> tuple[object, ...]:
    """What a campaign decided: each candidate's decision, and the incumbent it ended on."""
    inc = store.get_incumbent("default")
    kinds = sorted((d.candidate_id, d.kind.value) for d in store.list_decisions("default"))
    return tuple(kinds), inc.candidate_id, round(inc.metric or 0.0, 9), inc.runs


def assert_invariants(store: Store, target: Path) -> None:
    trials = store.list_trials("default")
    assert all(t.result is not None and t.result.outcome is Outcome.OK for t in trials)
    cands = store.list_candidates("default")
    decisions = store.list_decisions("default")
    assert collections.Counter(d.candidate_id for d in decisions) == {c.id: 1 for c in cands}
    assert all(c.state.is_finished() for c in cands)
    # The lineage: from the incumbent back to the start commit, every commit once.
    parent = {
        d.incumbent_after: d.incumbent_before for d in decisions if d.kind is DecisionKind.KEPT
    }
    camp = store.get_campaign("default")
    assert camp is not None
    sha, seen = store.get_incumbent("default").sha, set()
    while sha != camp.start_sha:
        assert sha not in seen, "the lineage loops"
        seen.add(sha)
        sha = parent[sha]
    # An incumbent merged untried is measured on the commit kept.
    kept = {d.candidate_id: d.incumbent_after for d in decisions if d.kind is DecisionKind.KEPT}
    measured = [t for t in trials if t.kind is TrialKind.MEASURE]
    assert measured and all(t.commit_sha == kept[t.candidate_id or 0] for t in measured)
    # The best branch where the store says, every candidate's branch at its commit, and no
    # branch of a candidate the store does not know.
    refs = git(target, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/farm")
    want = {candidate_branch("default", c.id): c.commit_sha for c in cands if c.commit_sha}
    want[best_branch("default")] = store.get_incumbent("default").sha
    assert dict(line.split() for line in refs.splitlines()) == want
    assert_counted(store)


def assert_counted(store: Store) -> None:
    """The store's counters (spend among them) equal a recount of its records."""
    assert flat(store.stats("default")) == pytest.approx(
        flat(recounted(store, "default")), rel=1e-9, abs=1e-9
    )


@pytest.fixture(params=["sqlite", "redis"])
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[int], str]:
    """A URL of an empty store for run `i`."""
    if request.param == "sqlite":
        return lambda i: f"sqlite:///{tmp_path / f'farm-{i}.db'}"
    url = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

    def flushed(_: int) -> str:
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    return flushed


# Short screens on two slots: c3 is held below the cut and, once c1 is kept, moved onto it
# for its second look (asserted below).
LOOKS = "screen_budget_s = 5\npromote = 0.5\nlooks = 2\n"


@pytest.mark.parametrize(("extra", "slots"), [("", 8), (LOOKS, 2)], ids=["full", "looks"])
def test_a_controller_killed_after_any_write_resumes_to_the_same_end(
    make_target: MakeTarget,
    fresh_store: Callable[[int], str],
    tmp_path: Path,
    extra: str,
    slots: int,
) -> None:
    toml = LINEAGE_TOML + extra
    pristine = make_target({"train.py": LINEAGE_TRAIN}, extra_toml=toml)

    def target(i: int) -> Path:
        copy = tmp_path / f"run-{i}"
        shutil.copytree(pristine, copy)
        return copy

    cfg = load_config(pristine)
    clean = Fault(0)
    store, restarts = campaign(fresh_store(0), target(0), cfg, clean, slots=slots)
    want = outcome(store)
    looked = store.get_trial("default", "c3-g0-short1")
    store.close()
    assert restarts == 0 and clean.writes > 30
    # c1 kept, c2 merged onto it untried and measured, c3 discarded.
    assert want[0] == ((1, "kept"), (2, "kept"), (3, "discarded")) and want[1] == 2
    assert (looked is not None) == bool(extra)  # c3's second look, on c1
    print(f"controller: {clean.writes} crash points")  # for the notes (pytest -rP)
    for n in range(1, clean.writes + 1):
        run = target(n)
        store, restarts = campaign(fresh_store(n), run, cfg, Fault(n), slots=slots)
        try:
            assert restarts == 1, f"write {n} was never reached"
            assert outcome(store) == want, f"killed after write {n}"
            assert_invariants(store, run)
        finally:
            store.close()


# -- the dispatcher ---------------------------------------------------------------------------
DISPATCH_WRITES = {"reap", "claim_trials", "heartbeat", "release", "record_result"}
RUNS = 3  # baseline trials: the first is claimed by a dispatcher elsewhere that went quiet


def queue_runs(url: str, target: Path, cfg: TargetConfig) -> None:
    """The cycle's start: trials queued, one of them held under a lease that has lapsed."""
    store = open_store(url)
    camp = prepare(target, cfg, store, check_command=False)
    for i in range(RUNS):
        run = Trial(f"base-{i}", "default", TrialKind.BASELINE, camp.start_sha, camp.start_sha, i)
        store.enqueue_trial(run)
    store.claim_trials("default", worker="elsewhere:1:gone", n=1, lease_s=-1)
    store.close()


def dispatch(url: str, target: Path, cfg: TargetConfig, fault: Fault) -> tuple[Store, int]:
    """Run every trial to its result, restarting the dispatcher where it is killed (as
    `farm work` is restarted on the same host); returns the store and the restarts."""
    store = open_store(url)
    disp: Dispatcher | None = None
    restarts, deadline = 0, time.monotonic() + 120
    while store.count_trials("default")[TrialState.DONE] < RUNS:
        assert time.monotonic() < deadline, f"trials left undone (killed after write {fault.at})"
        try:
            if disp is None:
                disp = Dispatcher(
                    store=fault.wrap(store, DISPATCH_WRITES),
                    repo=Repo(target),
                    cfg=cfg,
                    campaign="default",
                    slots=2,
                    heartbeat_s=1.5,
                )
                if not restarts:  # the one to be killed: its id is a process that is gone
                    disp.worker_id = gone_process()
                disp.reclaim_orphans()
            disp.step(wait_s=0.2)
        except Killed:  # what it left running on Ray ends unheard
            store.close()
            store, disp, restarts = open_store(url), None, restarts + 1
    return store, restarts


def assert_dispatched(store: Store, fault: Fault) -> None:
    """Every trial claimed once and its result recorded once; one claimed again only where
    the killed dispatcher held it."""
    trials = store.list_trials("default")
    assert all(t.state is TrialState.DONE and t.result is not None for t in trials)
    claims: collections.Counter[str] = collections.Counter()
    results: collections.Counter[str] = collections.Counter()
    held: set[str] = set()  # by the dispatcher when it was killed
    for i, (name, args, reply) in enumerate(fault.log, start=1):
        if name == "claim_trials":
            claims.update(t.id for t in reply)
        elif name == "record_result":
            results[args[1].trial_id] += 1
        if i == fault.at:
            held = {t for t in claims if not results[t]}
    writes = f"killed after write {fault.at} of {[name for name, _, _ in fault.log]}"
    assert results == {t.id: 1 for t in trials}, writes
    assert claims == {t.id: 1 + (t.id in held) for t in trials}, writes
    # The store counts a claim taken back from a dead dispatcher as never made; a lapsed
    # lease's claim stays counted (it counts towards the trial's being dead).
    deliveries = {t.id: t.deliveries for t in trials}
    assert deliveries == {t.id: 1 + (t.id == "base-0") for t in trials}, writes
    assert_counted(store)


def test_a_dispatcher_killed_after_any_write_resumes_with_nothing_run_twice_or_lost(
    ray_local: None,
    make_target: MakeTarget,
    fresh_store: Callable[[int], str],
) -> None:
    target = make_target()
    cfg = load_config(target)
    n, clean = 0, None
    while True:
        url = fresh_store(n)
        queue_runs(url, target, cfg)
        fault = Fault(n)
        store, restarts = dispatch(url, target, cfg, fault)
        try:
            metrics = {t.id: t.result.metric for t in store.list_trials("default") if t.result}
            assert metrics == (clean or metrics), f"killed after write {n}"
            assert restarts == fault.fired, f"killed after write {n}"
            assert_dispatched(store, fault)
        finally:
            store.close()
        if not fault.fired and n:  # the cycle ended before its n-th write
            break
        clean = clean or metrics
        n += 1
    print(f"dispatcher: {n - 1} crash points")
    assert n > 6  # the reap, claims, heartbeats and results were each a crash point


# -- the proposer -----------------------------------------------------------------------------
PROPOSE_WRITES = {"hold_call", "settle_call", "next_candidate_id", "add_candidate"}
PROPOSE_WRITES |= {"record_decision"}
# What the model proposes, in this order, each once: the second does not apply.
IDEAS = [
    draft("LR up", "LR = 0.5", "LR = 1.0"),
    draft("WD down", "WD = 0.3", "WD = 0.1"),
    draft("MOM up", "MOM = 0.1", "MOM = 0.9"),
]
PROPOSER_TOML = """
[proposer]
kind = "anthropic"
batch_size = 2
max_retries = 0
timeout_s = 10
backoff_s = 0
"""


def model(received: Received) -> Reply:
    """A model that proposes the ideas its ledger does not show yet, and is overloaded
    whenever asked to repair a draft (a failed call)."""
    if len(received.body["messages"]) > 1:
        return overloaded()
    asked = re.search(r"Propose (\d+)", received.user_text)
    assert asked is not None, received.user_text
    n = int(asked[1])
    sent = json.dumps(received.body)
    return drafts_reply([d for d in IDEAS if d["title"] not in sent][:n])


def propose(url: str, cfg: TargetConfig, fault: Fault) -> tuple[Store, int]:
    """Propose two valid candidates, restarting the proposer where it is killed (as `farm
    propose` is restarted on the same host); returns the store and the restarts."""
    store = open_store(url)
    for restarts in range(2):
        feeder = Feeder(
            store=fault.wrap(store, PROPOSE_WRITES),
            cfg=cfg,
            campaign="default",
            proposer=AnthropicProposer(cfg.proposer, api_key="sk-ant-crash-points"),
            max_candidates=2,
        )
        if not restarts:  # the one to be killed: its id is a process that is gone
            feeder.holder = gone_process()
        try:
            feeder.recover()  # what `start` does, then its thread's body, here
            feeder.run()
        except Killed:
            store.close()
            store = open_store(url)
            continue
        assert feeder.error is None and feeder.done, feeder.error
        return store, restarts
    raise AssertionError(f"killed twice (after write {fault.at})")


def assert_proposed(store: Store) -> None:
    """Every call settled (a lost one at its worst case), every rejected draft decided
    once, each valid one queued once, spend and counters equal to a recount."""
    calls = store.list_calls("default")
    assert all(c.state.is_finished() for c in calls), calls
    assert all(c.cost_usd == c.reserved_usd for c in calls if c.state is CallState.LOST)
    cands = store.list_candidates("default")
    rejected = {c.id for c in cands if c.state is CandidateState.REJECTED}
    decisions = store.list_decisions("default")
    assert collections.Counter(d.candidate_id for d in decisions) == dict.fromkeys(rejected, 1)
    assert all(d.kind is DecisionKind.REJECTED for d in decisions)
    queued = sorted(c.title for c in cands if c.state is CandidateState.QUEUED)
    assert queued == ["LR up", "MOM up"] and len(rejected) + 2 == len(cands)
    assert {c.call for c in cands} <= {c.id for c in calls}
    assert llm_spend(store.stats("default")).counted_usd == pytest.approx(
        sum(c.cost_usd for c in calls)
    )
    assert_counted(store)


def test_a_proposer_killed_after_any_write_resumes_with_every_call_settled(
    make_target: MakeTarget, fresh_store: Callable[[int], str], fake_api: FakeAnthropic
) -> None:
    fake_api.respond = model
    target = make_target(
        {"train.py": LINEAGE_TRAIN + "WD = 0.2  # weight decay\n"},
        extra_toml=f'{PROPOSER_TOML}base_url = "{fake_api.url}"\n',
    )
    cfg = load_config(target)
    n = 0
    while True:
        url = fresh_store(n)
        store = open_store(url)
        prepare(target, cfg, store, check_command=False)
        store.set_baseline("default", metric=1.0, runs=4, sigma=0.1)  # the LLM waits for it
        store.close()
        fault = Fault(n)
        store, restarts = propose(url, cfg, fault)
        try:
            assert restarts == fault.fired, f"killed after write {n}"
            assert_proposed(store)
        finally:
            store.close()
        if not fault.fired and n:  # the cycle ended before its n-th write
            break
        n += 1
    # Calls held, answered and failed; drafts numbered, recorded and rejected.
    print(f"proposer: {n - 1} crash points")
    assert n > 12


def test_a_proposer_restarted_at_its_limit_first_settles_the_call_its_dead_process_held(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    target = make_target({"train.py": LINEAGE_TRAIN}, extra_toml='[proposer]\nkind = "mutate"\n')
    cfg = load_config(target)
    store = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    prepare(target, cfg, store, check_command=False)
    tag = Draft("", "", [], proposer="anthropic", strategy="single")
    book = StoreBook(store, cfg, "default", build_context(store, cfg, "default"))
    book.holder = gone_process()
    book.hold(0.25, cap_usd=10.0, label="single", tag=tag)
    # That call takes the only place under the limit until it is settled.
    feeder = Feeder(store, cfg, "default", MutateProposer(seed=0), max_candidates=1)
    feeder.start()
    feeder.wait()
    assert feeder.error is None and feeder.done
    ((call, lost),) = [(c.state, c.cost_usd) for c in store.list_calls("default")]
    assert (call, lost) == (CallState.LOST, 0.25)
    assert [c.state for c in store.list_candidates("default")] == [CandidateState.QUEUED]
    store.close()
