from __future__ import annotations

import pytest

from farm.config import ParamConfig
from farm.errors import ConfigError
from farm.records import Draft, edit_hash
from proposer.base import LedgerEntry, ProposalContext
from proposer.optuna import OptunaProposer
from proposer.validate import Validated, validate_batch

PARAMS = [
    ParamConfig(file="train.py", name="LEARNING_RATE", low=1e-5, high=1e-2, log=True),
    ParamConfig(file="train.py", name="DEPTH", low=2, high=12, int=True),
]


def record(ctx: ProposalContext, drafts: list[Draft], status: str, metric: float | None) -> None:
    for d in drafts:
        ctx.history.append(
            LedgerEntry(len(ctx.history) + 1, d.title, d.hypothesis, status, d.edits, metric=metric)
        )
        ctx.seen_hashes.add(edit_hash(d.edits))


def test_drafts_edit_each_declared_line_once_within_range(ctx: ProposalContext) -> None:
    drafts = OptunaProposer(PARAMS, seed=0).propose(ctx, 4)
    assert len(drafts) == 4
    verdicts = validate_batch(
        drafts, files=ctx.files, editable=ctx.editable, seen_hashes=set(), max_edit_bytes=20_000
    )
    assert all(isinstance(v, Validated) for v in verdicts)
    for d in drafts:
        assert {e.search.split(" =")[0] for e in d.edits} <= {
            "LEARNING_RATE",
            "DEPTH: int",
            "DEPTH",
        }
        assert all(e.search.count("\n") == 0 for e in d.edits)  # one assignment line each
        values = dict(part.split("=") for part in d.title.removeprefix("optuna: ").split(", "))
        if "LEARNING_RATE" in values:
            assert 1e-5 <= float(values["LEARNING_RATE"]) <= 1e-2
        if "DEPTH" in values:
            assert 2 <= int(values["DEPTH"]) <= 12
        assert (d.proposer, d.strategy) == ("optuna", "tpe")


def test_seeded_and_rebuilt_from_the_ledger_alone(ctx: ProposalContext) -> None:
    first = [d.title for d in OptunaProposer(PARAMS, seed=3).propose(ctx, 3)]
    assert first == [d.title for d in OptunaProposer(PARAMS, seed=3).propose(ctx, 3)]
    assert first != [d.title for d in OptunaProposer(PARAMS, seed=4).propose(ctx, 3)]

    proposer = OptunaProposer(PARAMS, seed=0)
    ran = proposer.propose(ctx, 3)
    record(ctx, ran[:2], "discarded", 1.5)
    record(ctx, ran[2:], "crashed", None)
    record(ctx, proposer.propose(ctx, 1), "rejected", None)  # never ran: left out
    record(ctx, proposer.propose(ctx, 1), "running", None)
    (nxt,) = OptunaProposer(PARAMS, seed=0).propose(ctx, 1)
    # 2 complete + 1 failed + 1 running trials rebuilt from the edits, then this ask.
    assert nxt.hypothesis == "TPE suggestion after 4 earlier trials"
    assert edit_hash(nxt.edits) not in ctx.seen_hashes


def test_an_undeclared_constant_is_a_config_error(ctx: ProposalContext) -> None:
    missing = [ParamConfig(file="train.py", name="MOMENTUM", low=0.1, high=0.99)]
    with pytest.raises(ConfigError, match="MOMENTUM is not a module-level number"):
        OptunaProposer(missing, seed=0).propose(ctx, 1)
