from __future__ import annotations

import pytest

from farm.config import ParamConfig
from farm.errors import ConfigError
from farm.records import Direction, Draft, edit_hash
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
    with pytest.raises(ConfigError, match="MOMENTUM is not a number knob"):
        OptunaProposer(missing, seed=0).propose(ctx, 1)


CLASSIFIER = """\
clf = RandomForestClassifier(n_estimators=100, max_depth=5, random_state=0)
print(f"accuracy: {clf.score():.4f}")
"""


def test_without_declared_params_it_tunes_the_knobs_it_finds(ctx: ProposalContext) -> None:
    proposer = OptunaProposer([], seed=0)
    assert proposer.nothing_to_try(ctx) == ""
    drafts = proposer.propose(ctx, 2)
    assert {p.name: (p.low, p.high, p.int) for p in proposer.params} == {
        "LEARNING_RATE": (7.5e-5, 1.2e-3, False),
        "WEIGHT_DECAY": (0.025, 0.4, False),
        "BATCH_SIZE": (16, 256, True),
        "DEPTH": (1, 16, True),
        "LOGIT_SCALE_MAX": (0.125, 2.0, False),
        "TOTAL_TOKENS": (500_000, 8_000_000, True),
        "EVAL_EVERY": (12, 200, True),
    }
    assert len(drafts) == 2


def test_keyword_knobs_on_one_line_are_set_by_one_edit_and_read_back() -> None:
    ctx = ProposalContext(
        "c", "", {"train.py": CLASSIFIER}, ["train.py"], "accuracy", Direction.MAXIMIZE
    )
    params = [
        ParamConfig(
            file="train.py",
            name="RandomForestClassifier.n_estimators",
            low=10,
            high=400,
            int=True,
            log=True,
        ),
        ParamConfig(
            file="train.py", name="RandomForestClassifier.max_depth", low=1, high=20, int=True
        ),
    ]
    proposer = OptunaProposer(params, seed=0)
    drafts = proposer.propose(ctx, 3)
    verdicts = validate_batch(
        drafts, files=ctx.files, editable=ctx.editable, seen_hashes=set(), max_edit_bytes=20_000
    )
    assert all(isinstance(v, Validated) for v in verdicts), verdicts
    assert all(len(d.edits) == 1 for d in drafts)
    record(ctx, drafts, "discarded", 0.8)
    (nxt,) = OptunaProposer(params, seed=0).propose(ctx, 1)
    assert nxt.hypothesis == "TPE suggestion after 3 earlier trials"  # all three read back


def test_nothing_to_tune_is_said_before_anything_runs() -> None:
    ctx = ProposalContext(
        "c", "", {"run.py": "print('loss: 1')\n"}, ["run.py"], "loss", Direction.MINIMIZE
    )
    assert "found no number to tune" in OptunaProposer([], seed=0).nothing_to_try(ctx)
    missing = [ParamConfig(file="run.py", name="LR", low=0.1, high=0.9)]
    assert "LR is not a number knob in run.py" in OptunaProposer(missing, seed=0).nothing_to_try(
        ctx
    )


def test_the_default_range_of_a_value_just_below_one_stays_below_one() -> None:
    ctx = ProposalContext(
        "c", "", {"train.py": "BETA = 0.9\n"}, ["train.py"], "loss", Direction.MINIMIZE
    )
    proposer = OptunaProposer([], seed=0)
    drafts = proposer.propose(ctx, 3)
    (p,) = proposer.params
    assert (round(p.low, 9), round(p.high, 9)) == (0.6, 0.975)
    assert all(0.6 <= float(d.title.split("=")[1]) <= 0.975 for d in drafts)
