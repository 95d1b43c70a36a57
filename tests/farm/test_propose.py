"""The proposer role's ledger: holds against the spend cap, recording, settling leftovers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import TOY_TRAIN

from farm.config import TargetConfig, config_from_dict
from farm.errors import SpendCapReached
from farm.propose import Feeder, StoreBook, build_context, ledger_spend
from farm.records import Campaign, CandidateState, Draft, Edit, Incumbent
from farm.store.sqlite import SQLiteStore
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


def test_a_hold_counts_until_its_answer_replaces_it(store: SQLiteStore, cfg: TargetConfig) -> None:
    b = book(store, cfg)
    hold = b.hold(WORST, cap_usd=0.6, label="single")
    assert ledger_spend(store, "c") == pytest.approx(WORST)
    (row,) = store.list_candidates("c")
    assert row.state is CandidateState.PROPOSING
    b.hold(WORST, cap_usd=0.6, label="single")  # two worst cases fit under 0.6
    with pytest.raises(SpendCapReached, match=r"\$0.5 spent.*may cost up to \$0.25"):
        b.hold(WORST, cap_usd=0.6, label="single")
    b.record(drafts("1.0", "1.5", "2.0"), hold=hold)
    assert ledger_spend(store, "c") == pytest.approx(WORST + 0.03)
    states = [c.state for c in store.list_candidates("c")]
    assert states.count(CandidateState.QUEUED) == 3 and states.count(CandidateState.PROPOSING) == 1


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
    hold = b.hold(WORST, cap_usd=0.0, label="single")
    store.add_candidate = add_then_die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        b.record(drafts("1.0", "1.5", "2.0", cost=0.05), hold=hold)
    assert ledger_spend(store, "c") >= 0.15  # what the call cost, at least


def test_holds_left_by_a_dead_proposer_are_settled_at_their_worst_case(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    book(store, cfg).hold(WORST, cap_usd=0.0, label="single")
    (row,) = store.list_candidates("c")
    row.created_at = time.time() - 3600  # older than any call can take
    store.update_candidate(row)
    feeder = Feeder(store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0))
    feeder.deliver(1)
    settled = store.get_candidate("c", row.id)
    assert settled is not None and settled.state is CandidateState.REJECTED
    assert settled.cost_usd == WORST and settled.reserved_usd == 0
    assert "stays counted against the spend cap" in settled.reason
    assert store.get_decision("c", row.id) is not None
    assert ledger_spend(store, "c") == pytest.approx(WORST)


def test_a_feeder_at_its_limit_is_not_done_while_its_last_call_is_in_flight(
    store: SQLiteStore, cfg: TargetConfig
) -> None:
    feeder = Feeder(
        store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0), max_candidates=1
    )
    b = feeder._book(build_context(store, cfg, "c"), batch_size=1)
    hold = b.hold(WORST, cap_usd=0.0, label="single")
    # The hold takes the last place under the limit, but its answer is still to come: a
    # campaign that ended now would leave the draft it brings queued and never run.
    assert feeder.wanted() == 0 and not feeder.done
    b.record(drafts("1.0"), hold=hold)
    assert feeder.done
    (row,) = store.list_candidates("c")
    assert row.state is CandidateState.QUEUED


def test_a_stop_counts_the_calls_still_in_flight(store: SQLiteStore, cfg: TargetConfig) -> None:
    feeder = Feeder(store=store, cfg=cfg, campaign="c", proposer=MutateProposer(seed=0))
    feeder._book(build_context(store, cfg, "c")).hold(WORST, cap_usd=0.0, label="single")
    assert feeder.stop(grace_s=0) == 1
    (row,) = store.list_candidates("c")
    assert (row.state, row.title, row.cost_usd) == (
        CandidateState.REJECTED,
        "(call lost in flight)",
        WORST,
    )
