"""The proposer role's ledger: holds against the spend cap, recording, settling leftovers."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
import redis
from helpers import TOY_TRAIN

from farm.config import DEFAULT_BACKLOG, DEFAULT_BATCH, TargetConfig, config_from_dict
from farm.errors import SpendCapReached
from farm.propose import Feeder, StoreBook, build_context, ledger_spend
from farm.records import CallState, Campaign, CandidateState, Draft, Edit, Incumbent
from farm.simulate import CAMPAIGN, SimModel, Simulation
from farm.store import open_store
from farm.store.sqlite import SQLiteStore
from farm.store.stats import llm_spend
from proposer.mutate import MutateProposer

WORST = 0.25


@pytest.fixture
def cfg() -> TargetConfig:
    return config_from_dict(
        {"editable": ["train.py"], "command": "python train.py", "metric": "loss"},
        source="farm.toml",
    )


@pytest.fixture
def store(tmp_path: Path, cfg: TargetConfig) -> SQLiteStore:
    db = SQLiteStore(tmp_path / "farm.db")
    db.create_campaign(
        Campaign(id="c", target="", start_sha="s0", config=cfg.to_dict()),
        Incumbent(sha="s0", files={"train.py": TOY_TRAIN}),
    )
    return db


def drafts(*values: str, cost: float = 0.01) -> list[Draft]:
    return [
        Draft(
            title=f"LR {v}",
            hypothesis="",
            edits=[Edit("train.py", "LR = 0.5", f"LR = {v}")],
            cost_usd=cost,
        )
        for v in values
    ]


def book(store: SQLiteStore, cfg: TargetConfig) -> StoreBook:
    return StoreBook(store, cfg, "c", build_context(store, cfg, "c"))


TAG = Draft(title="", hypothesis="", edits=[], proposer="anthropic", strategy="single")
NO_CAP = 1e9


def test_a_hold_counts_until_its_answer_settles_the_call(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    b = book(store, cfg)
    hold = b.hold(WORST, cap_usd=0.6, label="single", tag=TAG)
    assert ledger_spend(store, "c") == pytest.approx(WORST)
    assert store.list_candidates("c") == []  # a call in flight is no candidate
    (call,) = store.list_calls("c")
    assert (call.state, call.reserved_usd, call.proposer) == (
        CallState.IN_FLIGHT,
        WORST,
        "anthropic",
    )
    b.hold(WORST, cap_usd=0.6, label="single", tag=TAG)  # two worst cases fit under 0.6
    with pytest.raises(SpendCapReached, match=r"\$0.5 spent.*may cost up to \$0.25"):
        b.hold(WORST, cap_usd=0.6, label="single", tag=TAG)
    b.record(drafts("1.0", "1.5", "2.0"), hold=hold)
    assert ledger_spend(store, "c") == pytest.approx(WORST + 0.03)
    cands = store.list_candidates("c")
    assert [c.state for c in cands] == [CandidateState.QUEUED] * 3
    assert {c.call for c in cands} == {hold}
    answered = store.list_calls("c", {CallState.ANSWERED})
    assert [(c.id, c.drafts, c.cost_usd) for c in answered] == [(hold, 3, pytest.approx(0.03))]


def test_a_kill_while_recording_never_counts_less_than_was_paid(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    class Killed(BaseException):
        pass

    writes = 0
    add = store.add_candidate

    def add_then_die(cand: object) -> None:
        nonlocal writes
        writes += 1
        if writes == 2:  # one more draft recorded, then the process dies
            raise Killed
        add(cand)  # type: ignore[arg-type]

    b = book(store, cfg)
    hold = b.hold(WORST, cap_usd=NO_CAP, label="single", tag=TAG)
    store.add_candidate = add_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        b.record(drafts("1.0", "1.5", "2.0", cost=0.05), hold=hold)
    assert ledger_spend(store, "c") >= 0.15  # what the call cost, at least


def test_holds_left_by_a_dead_proposer_are_settled_lost_at_their_worst_case(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    book(store, cfg).hold(WORST, cap_usd=NO_CAP, label="single", tag=TAG)
    with sqlite3.connect(store.path) as db:  # held long ago, by a process that died
        (data,) = db.execute("SELECT data FROM calls").fetchone()
        old = {**json.loads(data), "created_at": time.time() - 3600}
        db.execute("UPDATE calls SET data = ?", (json.dumps(old),))
    feeder = Feeder(store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0))
    feeder.deliver(1)
    (call,) = store.list_calls("c")
    assert (call.state, call.cost_usd) == (CallState.LOST, WORST)
    assert "stays counted against the spend cap" in call.reason
    assert all(c.call == "" for c in store.list_candidates("c"))  # the mutate drafts
    assert ledger_spend(store, "c") == pytest.approx(WORST)


def test_a_feeder_at_its_limit_is_not_done_while_its_last_call_is_in_flight(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    feeder = Feeder(
        store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0), max_candidates=1
    )
    b = feeder._book(build_context(store, cfg, "c"), batch_size=1)
    hold = b.hold(WORST, cap_usd=NO_CAP, label="single", tag=TAG)
    # The hold takes the last place under the limit, but its answer is still to come: a
    # campaign that ended now would leave the draft it brings queued and never run.
    assert feeder.wanted() == 0 and not feeder.done
    b.record(drafts("1.0"), hold=hold)
    assert feeder.done
    (row,) = store.list_candidates("c")
    assert row.state is CandidateState.QUEUED


def test_a_stop_counts_the_calls_still_in_flight(store: SQLiteStore, cfg: TargetConfig) -> None:
    feeder = Feeder(store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0))
    feeder._book(build_context(store, cfg, "c")).hold(
        WORST, cap_usd=NO_CAP, label="single", tag=TAG
    )
    assert feeder.stop(grace_s=0) == 1
    (call,) = store.list_calls("c")
    assert (call.state, call.cost_usd) == (CallState.LOST, WORST)
    assert store.list_candidates("c") == []


def test_a_failed_call_is_a_failed_call_not_a_candidate(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    b = book(store, cfg)
    hold = b.hold(WORST, cap_usd=NO_CAP, label="single", tag=TAG)
    b.release(hold, reason="the API answered 529")
    assert store.list_candidates("c") == [] and store.list_decisions("c") == []
    (call,) = store.list_calls("c")
    assert (call.state, call.reason, call.cost_usd) == (CallState.FAILED, "the API answered 529", 0)
    assert b.outcome.problems == ["the API answered 529"]  # a failed batch, for the backoff
    assert ledger_spend(store, "c") == 0


def test_an_extra_is_recorded_and_never_bars_the_same_edit_later(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    (extra,) = drafts("1.5")
    extra.extra, extra.problem = True, "draft 2 is beyond the 1 asked for: recorded, not run"
    b = book(store, cfg)
    b.record([*drafts("1.0"), extra])
    assert (b.outcome.valid, b.outcome.problems) == (1, [])  # an extra is no failure
    cands = store.list_candidates("c")
    assert [(c.state, c.extra) for c in cands] == [
        (CandidateState.QUEUED, False),
        (CandidateState.REJECTED, True),
    ]
    assert llm_spend(store.stats("c")).extra == 1
    later = book(store, cfg)
    later.record(drafts("1.5"))
    assert later.outcome.valid == 1, store.list_candidates("c")[-1].reason


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_context_built_from_what_changed_is_the_one_a_full_read_builds(
    backend: str, tmp_path: Path
) -> None:
    """The Feeder's memo reads only the candidates added or still in play on each call: at
    the end of a campaign (dozens of calls, keeps, discards, rejects) what it builds is
    what reading the whole ledger builds."""
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    if backend == "redis":
        url = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
        redis.Redis.from_url(url).flushdb()
    model = SimModel(slots=4, constants=8, batch_size=4, backlog=4, max_candidates=30, seed=2)
    sim = Simulation(model, tmp_path, store=open_store(url))
    try:
        sim.run()
        states = {c.state for c in sim.store.list_candidates(CAMPAIGN)}
        assert {CandidateState.KEPT, CandidateState.DISCARDED} <= states
        memo = sim.feeder._ledger
        assert memo.settled  # built up over the run, not read whole at the end
        grown = build_context(sim.store, sim.cfg, CAMPAIGN, memo)
        assert grown == build_context(sim.store, sim.cfg, CAMPAIGN)
    finally:
        sim.close()
        if backend == "redis":
            redis.Redis.from_url(url).flushdb()


def test_unset_batch_and_backlog_are_sized_to_keep_the_slots_fed(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    # 64 slots, 75 s calls, 300 s trials (farm.toml says nothing of the budget: 300 s): a
    # call must bring what 64 slots start in 75 s, twice over.
    feeder = Feeder(
        store=store, cfg=cfg, campaign="c", proposer=MutateProposer(0), slots=64, latency_s=75
    )
    sizes = feeder.sizes()
    assert (sizes.batch, sizes.backlog) == (32, 32)
    assert feeder.wanted() == 32
    assert "sized for 64 slots, proposer calls of 75 s and trials of 300 s" in sizes.describe()
    # Short screens ranked together free most slots at once: a candidate per slot ready.
    cfg.merge.screen_budget_s = 75
    assert (feeder.sizes().batch, feeder.sizes().backlog) == (64, 64)
    cfg.merge.screen_budget_s = 0
    # One slot, or an offline proposer: the least, 4 and 4.
    one = Feeder(store=store, cfg=cfg, campaign="c", proposer=MutateProposer(0), slots=1)
    assert (one.sizes().batch, one.sizes().backlog) == (DEFAULT_BATCH, DEFAULT_BACKLOG)
    # What farm.toml sets stands, and nothing is said of sizing it.
    cfg.proposer.batch_size, cfg.proposer.backlog = 6, 2
    assert feeder.sizes().describe() == "batch 6, backlog 2"
    assert feeder.wanted() == 6
