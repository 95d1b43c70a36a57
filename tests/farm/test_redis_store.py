"""What only the Redis store does: URLs, credentials, a server that is down or restarts.

These tests start their own redis-server (loopback, a free port, AOF in a temp dir) so
they can stop and restart it without touching the shared one.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import TOY_TRAIN, MakeTarget, RedisServer, RunCampaign

from farm.errors import StoreError
from farm.records import (
    Campaign,
    Candidate,
    CandidateState,
    Incumbent,
    Outcome,
    ProposerCall,
    Trial,
    TrialKind,
    TrialResult,
    TrialState,
)
from farm.store import open_store
from farm.store.redis import RedisStore

PASSWORD = "s3cret-pw"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(
        tmp_path, "--save", "", "--appendonly", "yes", "--appendfsync", "always", password=PASSWORD
    ).start()  # it survives SIGKILL: every write is fsynced to its AOF
    yield srv
    srv.kill()


def campaign_store(url: str) -> RedisStore:
    store = RedisStore(url)
    store.create_campaign(
        Campaign(id="c", target="/t", start_sha="a" * 40, config={}), Incumbent(sha="a" * 40)
    )
    return store


def trial(i: int) -> Trial:
    return Trial(
        id=f"t{i}",
        campaign="c",
        kind=TrialKind.CANDIDATE,
        commit_sha="b" * 40,
        base_sha="a" * 40,
        seed=i,
        candidate_id=1,
    )


def test_an_unreachable_server_is_one_clear_error_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0: .*"):
        open_store("redis://127.0.0.1:1/0")
    assert time.monotonic() - start < 5


def test_rediss_urls_open_a_redis_store() -> None:
    with pytest.raises(StoreError, match=r"cannot reach Redis at rediss://127\.0\.0\.1:1/0"):
        open_store("rediss://127.0.0.1:1/0")


def test_an_unknown_scheme_names_both_schemes() -> None:
    with pytest.raises(StoreError, match=r"sqlite:///path/farm\.db or redis://host:port/db"):
        open_store("mongodb://127.0.0.1/farm")


def test_the_url_password_is_used_and_never_shown(server: RedisServer) -> None:
    store = campaign_store(server.url)
    assert store.get_incumbent("c").sha == "a" * 40
    assert PASSWORD not in store.url
    assert store.url == f"redis://:***@127.0.0.1:{server.port}/0"
    store.close()


def test_a_wrong_password_is_a_clear_error_at_once(server: RedisServer) -> None:
    start = time.monotonic()
    with pytest.raises(StoreError, match="refused the credentials") as err:
        open_store(f"redis://:wrong@127.0.0.1:{server.port}/0")
    assert "wrong" not in str(err.value)
    assert time.monotonic() - start < 5


def test_keys_live_under_the_campaign_prefix(server: RedisServer) -> None:
    store = campaign_store(server.url)
    store.enqueue_trial(trial(1))
    store.claim_trials("c", worker="w", n=1, lease_s=30)
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        keys = set(client.keys("*"))
        assert keys == {
            "farm:meta",
            "farm:campaigns",
            "farm:c:campaign",
            "farm:c:incumbent",
            "farm:c:trials",
            "farm:c:trial:t1",
            "farm:c:candidate_trials:1",
            "farm:c:running",
            "farm:c:stats",
        }
        assert client.zscore("farm:c:running", "t1") == pytest.approx(time.time() + 30, abs=5)
    store.close()


def test_a_redis_restart_mid_campaign_is_survived(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = campaign_store(server.url)
    for i in (1, 2):
        store.enqueue_trial(trial(i))
    store.claim_trials("c", worker="w", n=1, lease_s=60)
    server.kill()
    restart = threading.Timer(0.5, server.start)
    restart.start()
    with caplog.at_level(logging.WARNING, logger="farm.store.redis"):
        # Issued while the server is down: retried until it is back.
        assert store.record_result("c", TrialResult(trial_id="t1", outcome=Outcome.CRASHED))
    restart.join()
    assert "retry 1 of" in caplog.text
    assert PASSWORD not in caplog.text
    # Everything written before the kill came back from the AOF, the claim included.
    assert [(t.id, t.state, t.worker, t.deliveries) for t in store.list_trials("c")] == [
        ("t1", TrialState.DONE, "w", 1),
        ("t2", TrialState.QUEUED, "", 0),
    ]
    assert [t.id for t in store.claim_trials("c", worker="w", n=5, lease_s=60)] == ["t2"]
    store.close()


def test_a_repeated_incumbent_move_reports_its_win(server: RedisServer) -> None:
    # What a retry sees when the server applied the move but its reply was lost.
    store = campaign_store(server.url)
    new = Incumbent(sha="b" * 40, metric=0.5)
    assert store.cas_incumbent("c", expected_sha="a" * 40, new=new)
    assert store.cas_incumbent("c", expected_sha="a" * 40, new=new)
    assert not store.cas_incumbent("c", expected_sha="a" * 40, new=Incumbent(sha="c" * 40))
    store.close()


def test_a_record_added_again_as_it_is_counts_once(server: RedisServer) -> None:
    # What a retry sees when the server added the record but its reply was lost: the same
    # record is taken as the write that landed; another under the same id is refused.
    store = campaign_store(server.url)
    cand = Candidate("c", 1, "a" * 40, "t", "h", [], {}, "h1")
    store.add_candidate(cand)
    store.add_candidate(cand)
    assert store.stats("c").candidates[CandidateState.QUEUED] == 1
    with pytest.raises(StoreError, match="already exists"):
        store.add_candidate(Candidate("c", 1, "a" * 40, "other", "h", [], {}, "h2"))
    call = ProposerCall(campaign="c", id="k1", reserved_usd=0.5)
    store.hold_call(call)
    store.hold_call(call)
    assert [c.id for c in store.list_calls("c")] == ["k1"]
    with pytest.raises(StoreError, match="already exists"):
        store.hold_call(ProposerCall(campaign="c", id="k1", reserved_usd=0.9))
    store.close()


def test_a_redis_that_stays_down_is_a_clear_error(server: RedisServer) -> None:
    store = RedisStore(server.url, retries=2)
    server.kill()
    with pytest.raises(StoreError, match=r"lost Redis at .* did not come back after 2 retries"):
        store.list_campaigns()
    store.close()


def test_a_campaign_survives_a_redis_kill_and_restart_with_nothing_lost(
    server: RedisServer, make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    slow = TOY_TRAIN.replace("import random\n", "import random\nimport time\n\ntime.sleep(0.5)\n")
    target = make_target({"train.py": slow})
    watcher = RedisStore(server.url)
    outage: dict[str, float] = {}

    def kill_mid_campaign() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            started = watcher.get_campaign("default") is not None
            if started and watcher.count_trials("default")[TrialState.DONE] >= 4:
                break
            time.sleep(0.1)
        server.kill()
        outage["killed"] = time.time()
        time.sleep(2.0)
        server.start()
        outage["back"] = time.time()

    chaos = threading.Thread(target=kill_mid_campaign)
    chaos.start()
    done = run_campaign(target, max_candidates=6, store_url=server.url)
    chaos.join()
    assert done.code == 0, done.output
    assert "killed" in outage and "back" in outage  # the fault really happened mid-run
    trials = done.store.list_trials("default")
    assert all(t.state is TrialState.DONE and t.result is not None for t in trials)
    cands = done.store.list_candidates("default")
    # max_candidates counts valid candidates (a repeat rejected on the way is extra); the
    # toy's one knob may run out first.
    valid = [c for c in cands if c.state is not CandidateState.REJECTED]
    assert 4 <= len(valid) <= 6
    assert "finished" in done.output
    decisions = done.store.list_decisions("default")
    assert sorted(d.candidate_id for d in decisions) == sorted(c.id for c in cands)
    watcher.close()


def test_the_exporter_answers_at_once_while_redis_is_down_and_recovers(
    server: RedisServer,
) -> None:
    import sys
    import urllib.request

    from helpers import free_port
    from prometheus_client.parser import text_string_to_metric_families

    campaign_store(server.url).close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "exporter", "--store", server.url,
         "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def ledger_up() -> tuple[float, float]:
        """farm_ledger_up, and how long the scrape took."""
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        took = time.monotonic() - started
        (up,) = (
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "farm_ledger_up"
        )
        return up, took

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert ledger_up()[0] == 1
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        server.kill()
        up, took = ledger_up()
        assert up == 0 and took < 2.0  # Prometheus's default scrape timeout is 10 s
        server.start()
        assert ledger_up()[0] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "Traceback" not in out
