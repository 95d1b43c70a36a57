"""The store contract (farm/store/base.py), run against every backend with real servers."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from helpers import flat, recounted

from farm.errors import StateMoveRefused, StoreError
from farm.records import (
    CallState,
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Edit,
    Incumbent,
    Outcome,
    ProposerCall,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store import Store, open_store
from farm.store.base import SCHEMA_VERSION
from farm.store.sqlite import SQLiteStore
from farm.store.stats import llm_spend

BACKENDS = ["sqlite", "redis"]
# A database index of the tests' own: flushed before and after every test that uses it.
REDIS_URL = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = f"sqlite:///{tmp_path / 'farm.db'}"
    s = open_store(url)
    s.create_campaign(
        Campaign(id="c", target="/t", start_sha="a" * 40, config={"metric": "loss"}),
        Incumbent(sha="a" * 40, files={"train.py": "x = 1\n"}),
    )
    yield s
    s.close()


def trial(i: int, kind: TrialKind = TrialKind.CANDIDATE, candidate: int | None = 1) -> Trial:
    return Trial(
        id=f"t{i}",
        campaign="c",
        kind=kind,
        commit_sha="b" * 40,
        base_sha="a" * 40,
        seed=i,
        candidate_id=candidate,
        files={"train.py": "x = 2\n"},
    )


def result(trial_id: str, metric: float = 1.0) -> TrialResult:
    return TrialResult(trial_id=trial_id, outcome=Outcome.OK, metric=metric, duration_s=1.0)


def test_create_campaign_twice_returns_the_first(store: Store) -> None:
    again = store.create_campaign(
        Campaign(id="c", target="/other", start_sha="f" * 40, config={}),
        Incumbent(sha="f" * 40),
    )
    assert again.target == "/t"
    assert store.get_incumbent("c").sha == "a" * 40
    assert [c.id for c in store.list_campaigns()] == ["c"]


def test_enqueue_is_idempotent_by_trial_id(store: Store) -> None:
    assert store.enqueue_trial(trial(1))
    assert not store.enqueue_trial(trial(1))
    assert [t.id for t in store.list_trials("c")] == ["t1"]


def test_claims_go_by_kind_priority_then_age(store: Store) -> None:
    store.enqueue_trial(trial(1, TrialKind.CANDIDATE))
    store.enqueue_trial(trial(2, TrialKind.CONFIRM))
    store.enqueue_trial(trial(3, TrialKind.BASELINE, candidate=None))
    store.enqueue_trial(trial(4, TrialKind.CANDIDATE))
    got = store.claim_trials("c", worker="w", n=3, lease_s=30)
    assert [t.id for t in got] == ["t3", "t2", "t1"]
    assert all(t.state is TrialState.RUNNING and t.worker == "w" for t in got)
    assert [t.id for t in store.claim_trials("c", worker="w", n=5, lease_s=30)] == ["t4"]
    assert store.claim_trials("c", worker="w", n=5, lease_s=30) == []


def test_a_claim_leaves_trials_that_prefer_a_held_class_for_later(store: Store) -> None:
    def queued(i: int, kind: TrialKind, prefer: str = "") -> None:
        store.enqueue_trial(dataclasses.replace(trial(i, kind), prefer=prefer))

    queued(1, TrialKind.CONFIRM, prefer="h100")
    queued(2, TrialKind.CONFIRM, prefer="rtx4090")
    queued(3, TrialKind.CANDIDATE)
    queued(4, TrialKind.CONFIRM, prefer="h100")
    # An RTX 4090 slot is free, the H100s are busy: the re-runs that want an H100 wait.
    got = store.claim_trials("c", worker="w", n=2, lease_s=30, hold={"h100"})
    assert [t.id for t in got] == ["t2", "t3"]
    assert got[0].prefer == "rtx4090"
    # Held trials still go rather than leave a slot idle; without `hold`, in plain order.
    got = store.claim_trials("c", worker="w", n=1, lease_s=30, hold={"h100", "rtx4090"})
    assert [t.id for t in got] == ["t1"]
    assert [t.id for t in store.claim_trials("c", worker="w", n=5, lease_s=30)] == ["t4"]


def test_concurrent_claimers_never_share_a_trial(store: Store) -> None:
    for i in range(40):
        store.enqueue_trial(trial(i))
    claimed: list[list[str]] = [[] for _ in range(4)]

    def claimer(k: int) -> None:
        while True:
            got = store.claim_trials("c", worker=f"w{k}", n=3, lease_s=30)
            if not got:
                return
            claimed[k].extend(t.id for t in got)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for ids in claimed for i in ids]
    assert sorted(ids) == sorted(f"t{i}" for i in range(40))


def test_lapsed_lease_returns_to_queue_then_dies(store: Store) -> None:
    store.enqueue_trial(trial(1))
    for delivery in (1, 2):
        (t,) = store.claim_trials("c", worker="dead", n=1, lease_s=0.01)
        assert t.deliveries == delivery
        time.sleep(0.02)
        assert store.reap("c", now=time.time(), max_deliveries=2) == ["t1"]
    got = store.get_trial("c", "t1")
    assert got is not None and got.state is TrialState.DEAD
    assert store.claim_trials("c", worker="w", n=1, lease_s=30) == []


def test_heartbeat_keeps_a_lease_and_only_for_its_holder(store: Store) -> None:
    store.enqueue_trial(trial(1))
    store.claim_trials("c", worker="w", n=1, lease_s=0.2)
    assert store.heartbeat("c", ["t1"], worker="other", lease_s=60) == []
    assert store.heartbeat("c", ["t1"], worker="w", lease_s=60) == ["t1"]
    time.sleep(0.3)
    assert store.reap("c", now=time.time(), max_deliveries=3) == []


def test_release_counts_failures_but_not_interruptions(store: Store) -> None:
    store.enqueue_trial(trial(1))
    store.claim_trials("c", worker="w", n=1, lease_s=30)
    assert store.release("c", "t1", worker="w", max_deliveries=1, failed=False)
    t = store.get_trial("c", "t1")
    assert t is not None and t.state is TrialState.QUEUED and t.deliveries == 0
    store.claim_trials("c", worker="w", n=1, lease_s=30)
    assert not store.release("c", "t1", worker="someone-else", max_deliveries=1, failed=True)
    assert store.release("c", "t1", worker="w", max_deliveries=1, failed=True)
    t = store.get_trial("c", "t1")
    assert t is not None and t.state is TrialState.DEAD


def test_first_result_wins(store: Store) -> None:
    store.enqueue_trial(trial(1))
    store.claim_trials("c", worker="w", n=1, lease_s=30)
    assert store.record_result("c", result("t1", 1.5))
    assert not store.record_result("c", result("t1", 9.9))
    t = store.get_trial("c", "t1")
    assert t is not None and t.state is TrialState.DONE
    assert t.result is not None and t.result.metric == 1.5
    assert store.count_trials("c")[TrialState.DONE] == 1


def test_a_result_from_a_lapsed_lease_still_counts_once(store: Store) -> None:
    store.enqueue_trial(trial(1))
    store.claim_trials("c", worker="slow", n=1, lease_s=0.01)
    time.sleep(0.02)
    store.reap("c", now=time.time(), max_deliveries=3)
    store.claim_trials("c", worker="fast", n=1, lease_s=30)
    assert store.record_result("c", result("t1", 2.0))
    assert not store.record_result("c", result("t1", 3.0))  # the slow worker, late
    assert store.claim_trials("c", worker="w", n=1, lease_s=30) == []


def test_incumbent_compare_and_set(store: Store) -> None:
    new = Incumbent(sha="b" * 40, metric=0.5, runs=2, candidate_id=1)
    assert store.cas_incumbent("c", expected_sha="a" * 40, new=new)
    other = Incumbent(sha="c" * 40, metric=0.4, runs=2, candidate_id=2)
    assert not store.cas_incumbent("c", expected_sha="a" * 40, new=other)
    inc = store.get_incumbent("c")
    assert (inc.sha, inc.metric, inc.candidate_id) == ("b" * 40, 0.5, 1)


def test_racing_incumbent_moves_have_one_winner(store: Store) -> None:
    wins = []

    def move(k: int) -> None:
        new = Incumbent(sha=f"{k:040d}", metric=float(k))
        if store.cas_incumbent("c", expected_sha="a" * 40, new=new):
            wins.append(k)

    threads = [threading.Thread(target=move, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_incumbent("c").sha == f"{wins[0]:040d}"


def test_candidate_ids_are_unique_and_records_round_trip(store: Store) -> None:
    ids = [store.next_candidate_id("c") for _ in range(3)]
    assert ids == [1, 2, 3]
    cand = Candidate(
        campaign="c",
        id=ids[0],
        base_sha="a" * 40,
        title="LR up",
        hypothesis="faster",
        edits=[Edit("train.py", "x = 1", "x = 2")],
        files={"train.py": "x = 2\n"},
        edit_hash="h1",
    )
    store.add_candidate(cand)
    cand.state = CandidateState.RUNNING
    cand.commit_sha = "b" * 40
    store.update_candidate(cand)
    got = store.get_candidate("c", ids[0])
    assert got == cand
    assert store.list_candidates("c", {CandidateState.QUEUED}) == []
    assert store.seen_hashes("c") == {"h1"}
    store.add_candidate(dataclasses.replace(cand, id=ids[1], state=CandidateState.QUEUED))
    counts = store.count_candidates("c")
    assert counts[CandidateState.RUNNING] == 1 and counts[CandidateState.QUEUED] == 1
    assert sum(counts.values()) == 2 and set(counts) == set(CandidateState)


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([CandidateState.RUNNING], CandidateState.QUEUED),  # a state never moves back
        ([CandidateState.RUNNING, CandidateState.DISCARDED], CandidateState.RUNNING),
        ([CandidateState.RUNNING, CandidateState.DISCARDED], CandidateState.KEPT),  # frozen
        ([CandidateState.RUNNING, CandidateState.KEPT], CandidateState.RUNNING),
        ([], CandidateState.KEPT),  # never judged: it never ran
    ],
)
def test_a_state_move_the_table_does_not_allow_is_refused_and_writes_nothing(
    store: Store, path: list[CandidateState], refused: CandidateState
) -> None:
    cand = Candidate("c", 1, "a" * 40, "t", "h", [], {}, "h1")
    store.add_candidate(cand)
    for state in path:
        cand.state = state
        store.update_candidate(cand)
    before = store.get_candidate("c", 1)
    counts = store.count_candidates("c")
    with pytest.raises(StateMoveRefused, match=f"c1 .* cannot become {refused.value}"):
        store.update_candidate(dataclasses.replace(cand, state=refused, reason="late"))
    assert store.get_candidate("c", 1) == before
    assert store.count_candidates("c") == counts


def test_a_kept_candidate_may_be_reverted_and_no_further(store: Store) -> None:
    cand = Candidate("c", 1, "a" * 40, "t", "h", [], {}, "h1")
    store.add_candidate(cand)
    for state in (CandidateState.RUNNING, CandidateState.KEPT, CandidateState.REVERTED):
        cand.state = state
        store.update_candidate(cand)
    assert store.count_candidates("c")[CandidateState.REVERTED] == 1
    with pytest.raises(StateMoveRefused):
        store.update_candidate(dataclasses.replace(cand, state=CandidateState.KEPT))


def test_a_keep_that_would_make_the_lineage_loop_is_refused(store: Store) -> None:
    a, b, c = "a" * 40, "b" * 40, "c" * 40

    def keep(cid: int, before: str, after: str) -> Decision:
        return Decision(
            "c", cid, DecisionKind.KEPT, "kept", incumbent_before=before, incumbent_after=after
        )

    assert store.record_decision(keep(1, a, b))
    assert store.record_decision(keep(2, b, c))
    for bad in (keep(3, c, c), keep(3, c, a), keep(3, c, b)):
        with pytest.raises(StoreError, match="lineage loop"):
            store.record_decision(bad)
    assert store.get_decision("c", 3) is None
    assert store.record_decision(keep(1, a, b)) is False  # a repeat is still just ignored


def test_one_decision_per_candidate(store: Store) -> None:
    d = Decision(campaign="c", candidate_id=1, kind=DecisionKind.DISCARDED, reason="worse")
    assert store.record_decision(d)
    again = Decision(campaign="c", candidate_id=1, kind=DecisionKind.KEPT, reason="later")
    assert not store.record_decision(again)
    got = store.get_decision("c", 1)
    assert got is not None and got.kind is DecisionKind.DISCARDED
    assert [x.reason for x in store.list_decisions("c")] == ["worse"]


def test_the_baseline_is_kept(store: Store) -> None:
    store.set_baseline("c", metric=1.5, runs=3, sigma=0.25)
    camp = store.get_campaign("c")
    assert camp is not None
    assert (camp.sigma, camp.baseline_metric, camp.baseline_runs) == (0.25, 1.5, 3)


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unknown store URL scheme 'postgres'"):
        open_store("postgres://localhost/farm")


def test_sqlite_store_from_another_schema_version_is_refused(tmp_path: Path) -> None:

    url = f"sqlite:///{tmp_path / 'farm.db'}"
    open_store(url).close()
    with sqlite3.connect(tmp_path / "farm.db") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema v99"):
        open_store(url)


def test_redis_store_from_another_schema_version_is_refused(redis_url: str) -> None:
    open_store(redis_url).close()
    with redis.Redis.from_url(redis_url) as client:
        client.hset("farm:meta", "schema_version", "99")
    with pytest.raises(StoreError, match="schema v99"):
        open_store(redis_url)


# -- aggregates ---------------------------------------------------------------------------
def assert_aggregates_match_the_records(store: Store) -> None:
    kept, counted = flat(store.stats("c")), flat(recounted(store))
    assert kept.keys() == counted.keys()
    assert kept == pytest.approx(counted, rel=1e-9, abs=1e-9)
    assert store.count_trials("c") == store.stats("c").trials
    assert store.count_candidates("c") == store.stats("c").candidates
    assert_the_state_index_matches_a_scan(store)


def assert_the_state_index_matches_a_scan(store: Store) -> None:
    """Candidates listed by state are those a full scan finds in that state, in id order."""
    every = store.list_candidates("c")
    for wanted in [{s} for s in CandidateState] + [set(CandidateState), set()]:
        assert store.list_candidates("c", wanted) == [c for c in every if c.state in wanted]


def workload(store: Store, *, check: Callable[[Store], None] = lambda s: None) -> None:
    """A campaign's every kind of write, in a random order: `check` runs after each round."""
    rng = random.Random(7)
    kinds = list(TrialKind)
    outcomes = list(Outcome)
    for i in range(60):
        kind = rng.choice(kinds)
        store.enqueue_trial(trial(i, kind, None if kind is TrialKind.BASELINE else 1))
    store.enqueue_trial(trial(0))  # a repeat changes nothing
    for step in range(12):
        claimed = store.claim_trials("c", worker="w", n=rng.randint(1, 6), lease_s=30)
        for t in claimed:
            roll = rng.random()
            if roll < 0.15:
                store.release("c", t.id, worker="w", max_deliveries=1, failed=True)
            elif roll < 0.25:
                store.release("c", t.id, worker="w", max_deliveries=3, failed=False)
            else:
                outcome = rng.choice(outcomes)
                r = TrialResult(
                    trial_id=t.id,
                    outcome=outcome,
                    metric=rng.random() if outcome is Outcome.OK else None,
                    duration_s=rng.choice([0.5, 3.0, 150.0, 299.9, 300.0, 1e4]),
                    hardware=rng.choice(["cpu", "NVIDIA A100-SXM4-80GB", ""]),
                    finished_at=1000.0 + step * 10 + rng.random(),
                )
                assert store.record_result("c", r)
                assert not store.record_result("c", r)
        # Lapsed leases: back to the queue, or dead after their deliveries.
        store.claim_trials("c", worker="gone", n=2, lease_s=0.0)
        store.reap("c", now=time.time() + 1, max_deliveries=rng.choice([1, 3]))
        # A paid call: held, then answered with its draft, failed, or lost in flight; the
        # last one stays in flight.
        call = ProposerCall(
            campaign="c",
            id=f"call{step}",
            proposer="anthropic",
            reserved_usd=rng.random() / 3,
            tokens_in=rng.randint(0, 5000),
            tokens_out=rng.randint(0, 900),
            cost_usd=rng.random() / 7,
        )
        store.hold_call(dataclasses.replace(call, tokens_in=0, tokens_out=0, cost_usd=0.0))
        settled = rng.choice([CallState.ANSWERED] * 3 + [CallState.FAILED, CallState.LOST])
        paid = step < 11 and settled is CallState.ANSWERED
        cid = store.next_candidate_id("c")
        rejected = rng.random() < 0.3
        cand = Candidate(
            campaign="c",
            id=cid,
            base_sha="a" * 40,
            title=f"idea {cid}",
            hypothesis="h",
            edits=[Edit("train.py", "x = 1", f"x = {cid}")],
            files={},
            edit_hash=f"h{cid}",
            state=CandidateState.REJECTED if rejected else CandidateState.QUEUED,
            proposer="anthropic" if paid else "mutate",
            tokens_in=call.tokens_in if paid else 0,
            tokens_out=call.tokens_out if paid else 0,
            cost_usd=call.cost_usd if paid else 0.0,
            call=call.id if paid else "",
            extra=rejected and rng.random() < 0.5,
        )
        store.add_candidate(cand)
        if step < 11:
            assert store.settle_call(dataclasses.replace(call, state=settled))
            assert not store.settle_call(dataclasses.replace(call, state=CallState.LOST))
        if not rejected:
            cand.state = CandidateState.RUNNING
            store.update_candidate(cand)
            cand.state = rng.choice([CandidateState.KEPT, CandidateState.DISCARDED])
            store.update_candidate(cand)
        kind = DecisionKind(cand.state.value)
        d = Decision(
            campaign="c",
            candidate_id=cid,
            kind=kind,
            reason="r",
            sigma=rng.random() if kind is not DecisionKind.REJECTED else None,
            created_at=2000.0 + step,
        )
        assert store.record_decision(d)
        assert not store.record_decision(d)
        check(store)
    # A result that comes in for a dead trial (a zombie worker) moves it to done.
    dead = store.list_trials("c", states={TrialState.DEAD})
    assert dead, "the workload should leave dead trials"
    assert store.record_result("c", result(dead[0].id))


def test_aggregates_always_equal_a_recount_of_the_records(store: Store) -> None:
    workload(store, check=assert_aggregates_match_the_records)
    assert_aggregates_match_the_records(store)
    s = store.stats("c")
    assert s.trials[TrialState.DONE] > 20 and sum(s.decisions.values()) == 12
    assert s.last_result_at is not None and s.last_decision_at == 2011.0


def test_duration_buckets_follow_the_campaign_budget(store: Store) -> None:
    store.create_campaign(
        Campaign(id="b", target="/t", start_sha="a" * 40, config={"budget_s": 600}),
        Incumbent(sha="a" * 40),
    )
    for i, seconds in enumerate([5.0, 600.0, 601.0, 9999.0]):
        t = dataclasses.replace(trial(i), campaign="b")
        store.enqueue_trial(t)
        r = TrialResult(trial_id=t.id, outcome=Outcome.OK, metric=1.0, duration_s=seconds)
        store.record_result("b", r)
    hist = store.stats("b").durations["candidate"]
    assert hist.bounds[0] == 6.0 and 600.0 in hist.bounds and hist.bounds[-1] == 750.0
    cumulative = dict(hist.cumulative())
    assert (cumulative["6.0"], cumulative["600.0"], cumulative["660.0"]) == (1, 2, 3)
    assert cumulative["+Inf"] == hist.count == 4
    assert hist.sum == pytest.approx(5 + 600 + 601 + 9999)
    assert store.stats("c").durations["candidate"].count == 0  # per campaign


def test_aggregates_stay_exact_under_concurrent_writers(store: Store) -> None:
    for i in range(40):
        store.enqueue_trial(trial(i))

    def worker(k: int) -> None:
        while got := store.claim_trials("c", worker=f"w{k}", n=2, lease_s=30):
            for t in got:
                store.record_result("c", result(t.id))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = store.stats("c")
    assert s.trials[TrialState.DONE] == 40 and s.outcomes["candidate", "ok"] == 40
    assert_aggregates_match_the_records(store)


def test_recent_results_and_decisions_come_in_the_order_they_were_made(store: Store) -> None:
    for i in range(5):
        store.enqueue_trial(trial(i))
    store.claim_trials("c", worker="w", n=5, lease_s=30)
    for i in (3, 0, 4, 1):
        store.record_result("c", result(f"t{i}"))
    assert [t.id for t in store.recent_results("c", 3)] == ["t0", "t4", "t1"]
    assert [t.id for t in store.recent_results("c", 10)] == ["t3", "t0", "t4", "t1"]
    kinds = [DecisionKind.KEPT, DecisionKind.DISCARDED, DecisionKind.KEPT, DecisionKind.CRASHED]
    for cid, kind in enumerate(kinds, start=1):
        store.record_decision(Decision(campaign="c", candidate_id=cid, kind=kind, reason=""))
    assert [d.candidate_id for d in store.list_decisions("c", last=2)] == [3, 4]
    kept = store.list_decisions("c", kinds={DecisionKind.KEPT})
    assert [d.candidate_id for d in kept] == [1, 3]
    either = {DecisionKind.KEPT, DecisionKind.CRASHED}
    assert [d.candidate_id for d in store.list_decisions("c", kinds=either, last=2)] == [3, 4]
    assert store.list_decisions("c", last=0) == []


def downgrade_to_v1(store: Store) -> None:
    """Rewrite a store as schema v1 (before aggregates) left it: what the upgrade must undo."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.executescript(
                "DROP TABLE stats; DROP INDEX trials_done; DROP INDEX decisions_kind;"
                "DROP INDEX decisions_seq;"
                "ALTER TABLE trials DROP COLUMN done_seq; ALTER TABLE decisions DROP COLUMN kind;"
                "UPDATE meta SET value = '1' WHERE key = 'schema_version';"
            )
        return
    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter("farm:c:trial:*"):
            client.hdel(key, "kind")
        client.delete("farm:c:stats", "farm:c:done", *client.keys("farm:c:decisions:*"))
        client.hset("farm:meta", "schema_version", "1")


def test_a_store_written_before_aggregates_is_upgraded_when_opened(store: Store) -> None:
    workload(store)
    before = store.stats("c")
    kept = store.list_decisions("c", kinds={DecisionKind.KEPT})
    url = store.url if isinstance(store, SQLiteStore) else REDIS_URL
    store.close()
    downgrade_to_v1(store)

    upgraded = open_store(url)
    try:
        assert flat(upgraded.stats("c")) == pytest.approx(flat(before), rel=1e-9, abs=1e-9)
        assert_aggregates_match_the_records(upgraded)
        assert upgraded.list_decisions("c", kinds={DecisionKind.KEPT}) == kept
        finished = sorted(
            (t for t in upgraded.list_trials("c") if t.result), key=lambda t: t.result.finished_at
        )
        assert upgraded.recent_results("c", 5) == finished[-5:]
        # It is a current store now: another open does not redo it, and writes keep it exact.
        open_store(url).close()
        upgraded.enqueue_trial(trial(999))
        upgraded.claim_trials("c", worker="w", n=99, lease_s=30)
        upgraded.record_result("c", result("t999"))
        assert_aggregates_match_the_records(upgraded)
        assert upgraded.recent_results("c", 1)[0].id == "t999"
    finally:
        upgraded.close()


def schema_version(store: Store) -> int:
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            (found,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(found)
    with redis.Redis.from_url(REDIS_URL) as client:
        return int(client.hget("farm:meta", "schema_version") or 0)


def test_a_v2_store_is_stamped_current_and_its_queue_claims_as_before(store: Store) -> None:
    # v2 had no trial kinds `preflight`/`short` and no trial fields reference/partner/
    # prefer: a farm of v2 would fail on them, so the version changed and nothing else.
    workload(store)
    store.enqueue_trial(trial(500, TrialKind.CONFIRM))
    before = flat(store.stats("c"))
    url = store.url if isinstance(store, SQLiteStore) else REDIS_URL
    store.close()
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    else:
        with redis.Redis.from_url(REDIS_URL) as client:
            client.hdel("farm:c:trial:t500", "prefer")  # as v2 queued it
            client.hset("farm:meta", "schema_version", "2")
    upgraded = open_store(url)
    try:
        assert schema_version(upgraded) == SCHEMA_VERSION
        assert flat(upgraded.stats("c")) == pytest.approx(before, rel=1e-9, abs=1e-9)
        got = upgraded.claim_trials("c", worker="w", n=99, lease_s=30, hold={"h100"})
        assert "t500" in [t.id for t in got] and all(t.prefer == "" for t in got)
        assert_aggregates_match_the_records(upgraded)
    finally:
        upgraded.close()


# -- paid proposer calls ------------------------------------------------------------------
def test_a_call_holds_its_worst_case_until_it_is_settled_once(store: Store) -> None:
    call = ProposerCall(campaign="c", id="k1", proposer="anthropic", reserved_usd=0.25)
    store.hold_call(call)
    store.hold_call(dataclasses.replace(call, id="k2", reserved_usd=0.5))
    held = llm_spend(store.stats("c"))
    assert (held.in_flight, held.held_usd, held.cost_usd, held.counted_usd) == (2, 0.75, 0, 0.75)
    answered = dataclasses.replace(
        call, state=CallState.ANSWERED, cost_usd=0.01, tokens_in=900, tokens_out=100
    )
    assert store.settle_call(answered)
    # Given up as lost by another process once answered: the first settle wins.
    assert not store.settle_call(dataclasses.replace(call, state=CallState.LOST, cost_usd=0.25))
    assert store.settle_call(dataclasses.replace(call, id="k2", state=CallState.FAILED))
    s = llm_spend(store.stats("c"))
    assert (s.in_flight, s.calls, s.failed_calls, s.tokens_in, s.tokens_out) == (0, 2, 1, 900, 100)
    assert (s.cost_usd, s.held_usd) == (pytest.approx(0.01), pytest.approx(0.0))
    assert [(c.id, c.state) for c in store.list_calls("c")] == [
        ("k1", CallState.ANSWERED),
        ("k2", CallState.FAILED),
    ]
    assert store.list_calls("c", {CallState.IN_FLIGHT}) == []
    assert store.list_calls("c", {CallState.FAILED})[0].reserved_usd == 0.5
    assert_aggregates_match_the_records(store)


def downgrade_to_v3(store: Store, cands: list[dict[str, object]]) -> None:
    """Rewrite a store as schema v3 kept LLM spend: no calls, candidates as `cands`."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("DROP TABLE calls")
            db.execute("DELETE FROM candidates")
            for c in cands:
                db.execute(
                    "INSERT INTO candidates (campaign, id, state, data) VALUES (?, ?, ?, ?)",
                    ("c", c["id"], c["state"], json.dumps(c)),
                )
            db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        return
    with redis.Redis.from_url(REDIS_URL) as client:
        client.delete("farm:c:calls", "farm:c:candidates")
        for c in cands:
            client.hset("farm:c:candidates", str(c["id"]), json.dumps(c))
        client.hset("farm:meta", "schema_version", "3")


def test_candidates_listed_by_state_match_a_scan_after_every_move(store: Store) -> None:
    """The per-state index (Redis: a set per state, moved in the same script as the record)
    agrees with the records after allowed and refused moves, and after an upgrade from v4,
    which had no index."""
    rng = random.Random(11)
    for cid in range(1, 41):
        start = rng.choice([CandidateState.QUEUED, CandidateState.REJECTED])
        store.add_candidate(Candidate("c", cid, "a" * 40, "t", "h", [], {}, f"h{cid}", start))
    for _ in range(200):
        cand = store.get_candidate("c", rng.randint(1, 40))
        assert cand is not None
        new = rng.choice(list(CandidateState))
        try:
            store.update_candidate(dataclasses.replace(cand, state=new))
        except StateMoveRefused:
            assert not cand.state.may_become(new)
        assert_the_state_index_matches_a_scan(store)
    assert len({c.state for c in store.list_candidates("c")}) >= 5  # the walk went places
    assert_aggregates_match_the_records(store)
    url = store.url if isinstance(store, SQLiteStore) else REDIS_URL
    store.close()
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("DROP INDEX candidates_state")
            db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    else:
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(*(f"farm:c:candidates:{s.value}" for s in CandidateState))
            client.hset("farm:meta", "schema_version", "4")
    upgraded = open_store(url)
    try:
        assert schema_version(upgraded) == SCHEMA_VERSION
        assert_the_state_index_matches_a_scan(upgraded)
    finally:
        upgraded.close()


def test_a_v3_store_s_spend_holds_become_calls_and_its_spend_stays(store: Store) -> None:
    """v3 held a call in flight as a candidate in state `proposing`, and kept LLM cost on
    the drafts: upgraded, the hold is a lost call at its worst case, each paid draft a call
    carrying its cost, and the spend is what v3's ledger summed."""
    workload(store)

    def v3(cid: int, state: str, *, cost: float = 0.0, reserved: float = 0.0) -> dict[str, object]:
        c = Candidate(
            campaign="c",
            id=cid,
            base_sha="a" * 40,
            title=f"v3 row {cid}",
            hypothesis="",
            edits=[],
            files={},
            edit_hash=f"v3-{cid}",
            proposer="anthropic",
            tokens_in=1000 if cost else 0,
            cost_usd=cost,
        ).to_dict()
        del c["call"], c["extra"]
        return {**c, "state": state, "reserved_usd": reserved}

    rows = [
        v3(1, "queued", cost=0.01),
        v3(2, "rejected", cost=0.02),
        v3(3, "proposing", reserved=0.3),
    ]
    url = store.url if isinstance(store, SQLiteStore) else REDIS_URL
    store.close()
    downgrade_to_v3(store, rows)
    upgraded = open_store(url)
    try:
        assert schema_version(upgraded) == SCHEMA_VERSION
        assert [c.id for c in upgraded.list_candidates("c")] == [1, 2]
        calls = {c.id: c for c in upgraded.list_calls("c")}
        assert calls["v3-c3"].state is CallState.LOST and calls["v3-c3"].cost_usd == 0.3
        assert upgraded.get_candidate("c", 1).call == "v3-c1"  # type: ignore[union-attr]
        spend = llm_spend(upgraded.stats("c"))
        assert spend.cost_usd == pytest.approx(0.01 + 0.02 + 0.3)
        assert (spend.in_flight, spend.held_usd) == (0, pytest.approx(0.0))
        assert upgraded.stats("c").candidates[CandidateState.QUEUED] == 1
        assert_aggregates_match_the_records(upgraded)
    finally:
        upgraded.close()


def test_one_driver_holds_a_campaign_until_it_drops_or_lets_its_lease_lapse(
    store: Store,
) -> None:
    first = store.take_lease("c", holder="run A", ttl_s=30, now=1000.0)
    assert first.holder == "run A" and first.since == 1000.0 and first.expires == 1030.0
    # Another driver is refused: the lease it gets back is the holder's, unchanged.
    assert store.take_lease("c", holder="control B", ttl_s=30, now=1010.0) == first
    renewed = store.take_lease("c", holder="run A", ttl_s=30, now=1020.0)
    assert renewed.since == 1000.0 and renewed.expires == 1050.0
    store.drop_lease("c", holder="control B")  # not B's to drop
    assert store.take_lease("c", holder="control B", ttl_s=30, now=1049.0).holder == "run A"
    # A holder that died lets it lapse; the next driver takes over from then.
    taken = store.take_lease("c", holder="control B", ttl_s=30, now=1051.0)
    assert taken.holder == "control B" and taken.since == 1051.0
    store.drop_lease("c", holder="control B")
    assert store.take_lease("c", holder="run C", ttl_s=30, now=1052.0).holder == "run C"
    assert store.take_lease("other", holder="run D", ttl_s=30, now=1052.0).holder == "run D"
