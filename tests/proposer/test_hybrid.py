"""The hybrid proposer: structural changes from Claude (local Messages API), knobs by TPE."""

from __future__ import annotations

from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, drafts_reply

from farm.config import ProposerConfig
from farm.records import Edit
from proposer.base import LedgerEntry, MemoryBook, ProposalContext
from proposer.hybrid import HybridProposer
from proposer.validate import Rejected, Validated, validate_batch

OLD = (
    "def lr_at(step):\n"
    "    warmup = 10  # a local, not a hyperparameter\n"
    "    return LEARNING_RATE * min(1.0, step / warmup) * math.cos(0.0)"
)
NEW = (
    "WARMUP = 10  # steps of linear warmup\n\n\n"
    "def lr_at(step):\n"
    "    return LEARNING_RATE * min(1.0, step / WARMUP) * math.cos(0.0)"
)
WARMUP = {"path": "train.py", "name": "WARMUP", "low": 1, "high": 100, "int": True}
LR = {"path": "train.py", "name": "LEARNING_RATE", "low": 1e-5, "high": 1e-2, "log": True}


def structural(*knobs: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "Warmup as a module constant, tuned with the LR",
        "hypothesis": "warmup length and peak LR interact",
        "expected_effect": "-0.01",
        "edits": [{"path": "train.py", "search": OLD, "replace": NEW}],
        "knobs": list(knobs),
    }


def hybrid(fake: FakeAnthropic, **overrides: Any) -> HybridProposer:
    settings: dict[str, Any] = {"base_url": fake.url, "max_retries": 0, "tune_trials": 3}
    return HybridProposer(ProposerConfig(kind="hybrid", **{**settings, **overrides}), api_key="k")


def deliver(fake: FakeAnthropic, ctx: ProposalContext, n: int) -> MemoryBook:
    book = MemoryBook(ctx, max_edit_bytes=20_000)
    hybrid(fake).propose_into(ctx, n, book)
    return book


def structure_entry(status: str, **kw: Any) -> LedgerEntry:
    return LedgerEntry(
        1,
        "Warmup as a module constant",
        "",
        status,
        [Edit("train.py", OLD, NEW)],
        metric=1.0 if status in ("kept", "discarded") else None,
        proposer="hybrid",
        strategy="structure",
        knobs=[
            {
                "file": "train.py",
                "name": "WARMUP",
                "low": 1.0,
                "high": 100.0,
                "log": False,
                "int": True,
            },
            {
                "file": "train.py",
                "name": "LEARNING_RATE",
                "low": 1e-5,
                "high": 1e-2,
                "log": True,
                "int": False,
            },
        ],
        params={"WARMUP": 10.0, "LEARNING_RATE": 3e-4},
        **kw,
    )


def test_a_structural_change_declares_the_knobs_worth_tuning(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    bad = {"path": "train.py", "name": "MOMENTUM", "low": 0.1, "high": 0.99}
    fake_api.push(drafts_reply([structural(WARMUP, bad, LR)]))
    book = deliver(fake_api, ctx, 4)
    (d,) = book.drafts
    assert isinstance(book.verdicts[0], Validated)
    assert [k["name"] for k in d.knobs] == ["WARMUP", "LEARNING_RATE"]
    assert d.params == {"WARMUP": 10.0, "LEARNING_RATE": 3e-4}
    assert (d.proposer, d.strategy) == ("hybrid", "structure")
    (req,) = fake_api.requests
    item = req.body["tools"][0]["input_schema"]["properties"]["drafts"]["items"]
    assert "knobs" in item["required"] and item["properties"]["knobs"]["items"]["required"]
    assert "Propose 1 structural change" in req.user_text
    assert "farm runs 3 TPE trials of your change" in req.user_text


def test_a_structure_without_a_usable_knob_is_repaired(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    missing = {"path": "train.py", "name": "MOMENTUM", "low": 0.1, "high": 0.99}
    outside = {**WARMUP, "low": 20}
    fake_api.push(drafts_reply([structural(missing, outside)]), drafts_reply([structural(WARMUP)]))
    book = deliver(fake_api, ctx, 1)
    first, fixed = book.verdicts
    assert isinstance(first, Rejected) and isinstance(fixed, Validated)
    assert first.reason.startswith("declare at least one knob to tune: knob 'MOMENTUM': after ")
    assert "knob 'WARMUP': its value 10 is outside [20, 100]" in first.reason
    assert "declare at least one knob" in str(fake_api.requests[1].body["messages"][2])


def test_tuning_drafts_carry_the_structure_with_its_knobs_set(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.history = [structure_entry("discarded")]
    book = deliver(fake_api, ctx, 2)
    assert fake_api.requests == []  # TPE, not the LLM
    assert len(book.drafts) == 2 and all(isinstance(v, Validated) for v in book.verdicts)
    for d in book.drafts:
        assert (d.proposer, d.strategy, d.parent) == ("hybrid", "tpe", 1)
        assert d.edits[0] == Edit("train.py", OLD, NEW)  # the structure, not kept: first
        assert d.title.startswith("tune #1: ")
        assert 1 <= d.params["WARMUP"] <= 100 and 1e-5 <= d.params["LEARNING_RATE"] <= 1e-2
    # The drafts apply to the incumbent: the structure's edit, then the knobs'.
    verdicts = validate_batch(
        book.drafts,
        files={"train.py": ctx.files["train.py"]},
        editable=ctx.editable,
        seen_hashes=set(),
        max_edit_bytes=20_000,
    )
    assert all(isinstance(v, Validated) for v in verdicts)


def test_a_kept_structure_is_tuned_in_place(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    ctx.history = [structure_entry("kept")]
    ctx.files = {"train.py": ctx.files["train.py"].replace(OLD, NEW)}
    book = deliver(fake_api, ctx, 2)
    assert book.drafts and all(isinstance(v, Validated) for v in book.verdicts)
    for d in book.drafts:
        assert Edit("train.py", OLD, NEW) not in d.edits
        assert {e.search.split(" =")[0] for e in d.edits} <= {"WARMUP", "LEARNING_RATE"}


@pytest.mark.parametrize(
    ("status", "children", "calls"),
    [
        ("queued", [], 0),  # its outcome decides whether tuning is worth it: wait
        ("running", [], 0),
        ("crashed", [], 1),  # nothing to tune: the next structure
        ("discarded", ["discarded", "kept", "queued"], 0),  # the last may yet be superseded
        ("discarded", ["discarded", "kept", "running"], 1),  # tuned tune_trials times: next
    ],
)
def test_one_structure_at_a_time(
    fake_api: FakeAnthropic, ctx: ProposalContext, status: str, children: list[str], calls: int
) -> None:
    ctx.history = [structure_entry(status)]
    ctx.history += [
        LedgerEntry(2 + i, f"tune #1: {i}", "", child, [], metric=1.0, parent=1, runs=[1.0])
        for i, child in enumerate(children)
    ]
    fake_api.push(drafts_reply([structural(WARMUP)]))
    book = deliver(fake_api, ctx, 2)
    assert len(fake_api.requests) == calls
    assert [d.strategy for d in book.drafts] == ["structure"] * calls


def test_a_tuning_draft_superseded_before_it_ran_is_replaced(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.history = [structure_entry("kept")]
    ctx.files = {"train.py": ctx.files["train.py"].replace(OLD, NEW)}
    ran = [LedgerEntry(2, "tune #1: a", "", "kept", [], metric=0.9, parent=1, runs=[0.9])]
    lost = [LedgerEntry(3 + i, f"tune #1: {i}", "", "superseded", [], parent=1) for i in range(2)]
    ctx.history += ran + lost  # tune_trials = 3: two of them never ran
    book = deliver(fake_api, ctx, 4)
    assert fake_api.requests == []
    assert [d.strategy for d in book.drafts] == ["tpe", "tpe"]
