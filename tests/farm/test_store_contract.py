"""The store contract (farm/store/base.py), run against every backend with real servers."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm.errors import StoreError
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Edit,
    Incumbent,
    Outcome,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store import Store, open_store

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
    import sqlite3

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
