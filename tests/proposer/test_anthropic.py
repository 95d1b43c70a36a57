"""The Claude proposer against a local Messages API, through the real SDK over HTTP."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import (
    FakeAnthropic,
    draft,
    drafts_reply,
    error_reply,
    overloaded,
    rate_limited,
    text_reply,
    tool_reply,
    usage,
)

from farm.config import ModelPrice, ProposerConfig
from farm.errors import ConfigError, ProposerError, SpendCapReached
from farm.records import Draft, Edit, edit_hash
from proposer.anthropic import AnthropicProposer, price_of
from proposer.base import LedgerEntry, ProposalContext
from proposer.registry import make_proposer
from proposer.validate import Rejected, Validated, validate_batch

KEY = "sk-ant-unit-test-key"
LR = "LEARNING_RATE = 3e-4  # AdamW peak LR"
WD = "WEIGHT_DECAY = 0.1  # on matrices only"
GOOD = [
    draft("Raise the LR", LR, "LEARNING_RATE = 6e-4  # AdamW peak LR"),
    draft("Less weight decay", WD, "WEIGHT_DECAY = 0.05  # on matrices only"),
]


def claude(fake: FakeAnthropic, **overrides: Any) -> AnthropicProposer:
    settings: dict[str, Any] = {"base_url": fake.url, "timeout_s": 2.0, "max_retries": 2}
    cfg = ProposerConfig(kind="anthropic", **{**settings, **overrides})
    return AnthropicProposer(cfg, api_key=KEY)


def verdicts(drafts: list[Draft], ctx: ProposalContext) -> list[Validated | Rejected]:
    return validate_batch(
        drafts,
        files=ctx.files,
        editable=ctx.editable,
        seen_hashes=ctx.seen_hashes,
        max_edit_bytes=20_000,
    )


def test_a_batch_carries_provenance_tokens_and_cost(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD, use=usage(1_000, 500, cache_creation=2_000)))
    drafts = claude(fake_api, batch_size=2).propose(ctx, 2)

    assert [d.title for d in drafts] == ["Raise the LR", "Less weight decay"]
    assert all(isinstance(v, Validated) for v in verdicts(drafts, ctx))
    # 1000 fresh x $3 + 2000 cache writes x $3.75 + 500 out x $15, per million, split in two.
    assert sum(d.cost_usd for d in drafts) == pytest.approx(0.018)
    assert [(d.tokens_in, d.tokens_out) for d in drafts] == [(1_500, 250), (1_500, 250)]
    assert {(d.proposer, d.strategy, d.model) for d in drafts} == {
        ("anthropic", "single", "claude-sonnet-4-6")
    }
    assert len({d.batch_id for d in drafts}) == 1 and drafts[0].batch_id.startswith("anthropic-")
    assert len({d.prompt_hash for d in drafts}) == 1 and len(drafts[0].prompt_hash) == 16
    assert drafts[0].expected_effect == "-0.1"

    (req,) = fake_api.requests
    body = req.body
    assert (body["model"], body["max_tokens"]) == ("claude-sonnet-4-6", 16_000)
    assert "temperature" not in body  # API version 2026-10-21 refuses it
    assert [t["name"] for t in body["tools"]] == ["submit_drafts"]
    assert body["tool_choice"] == {"type": "tool", "name": "submit_drafts"}
    # The stable prefix is cached: the instructions with program.md, then the code.
    system = body["system"]
    assert [b["cache_control"] for b in system] == [{"type": "ephemeral"}] * 2
    assert "Lower val_bpb." in system[0]["text"]
    assert LR in system[1]["text"]
    assert "Propose 2 diverse drafts" in req.user_text
    assert "# Experiments so far" in req.user_text
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["anthropic-version"]


def test_temperature_is_sent_when_set(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    fake_api.push(drafts_reply(GOOD[:1]))
    claude(fake_api, temperature=0.7, max_tokens=999, model="claude-haiku-4-5").propose(ctx, 1)
    body = fake_api.requests[0].body
    assert (body["temperature"], body["max_tokens"], body["model"]) == (
        0.7,
        999,
        "claude-haiku-4-5",
    )


def test_the_digest_reaches_the_model(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    ctx.sigma = 0.0123
    ctx.history = [
        LedgerEntry(1, "Deeper net", "more layers help", "kept", [], delta=0.05, sigma=0.0123),
        LedgerEntry(2, "Huge LR", "", "crashed", [], detail="loss is nan at step 7"),
        LedgerEntry(3, "Wider MLP", "", "queued", []),
    ]
    fake_api.push(drafts_reply(GOOD[:1]))
    claude(fake_api).propose(ctx, 1)
    text = fake_api.requests[0].user_text
    for fact in (
        "Deeper net (Δ +0.05 ± 0.0123)",
        "loss is nan at step 7",
        "Wider MLP",
        "σ = 0.0123",
    ):
        assert fact in text


def test_an_answer_without_a_tool_call_gets_one_repair_request(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(text_reply("Here are some ideas: raise the LR."), drafts_reply(GOOD[:1]))
    drafts = claude(fake_api).propose(ctx, 1)
    assert [d.title for d in drafts] == ["Raise the LR"]
    _, repair = fake_api.requests
    messages = repair.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Here are some ideas: raise the LR."}
    ]
    assert "did not call submit_drafts" in messages[2]["content"]
    # Both calls are paid for, by the drafts that came of them.
    assert drafts[0].cost_usd == pytest.approx(2 * (1_000 * 3 + 500 * 15) / 1e6)


def test_still_no_drafts_after_the_repair_leaves_a_costed_rejection(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(text_reply("I would rather chat."), text_reply("Still chatting."))
    (placeholder,) = claude(fake_api).propose(ctx, 2)
    assert len(fake_api.requests) == 2  # one repair, never more
    assert placeholder.cost_usd > 0 and placeholder.tokens_in == 2_000
    (verdict,) = verdicts([placeholder], ctx)
    assert isinstance(verdict, Rejected)
    assert "did not call submit_drafts" in verdict.reason
    assert "after a repair request" in verdict.reason


@pytest.mark.parametrize(
    ("tool_input", "why"),
    [
        ({"drafts": [{"title": "No edits", "hypothesis": "h", "expected_effect": ""}]}, "'edits'"),
        (
            {"drafts": [{"title": 7, "hypothesis": "h", "expected_effect": "", "edits": "x"}]},
            "'title' must be a non-empty string",
        ),
        ('{"drafts": []}', "input must be an object"),
        ({"drafts": ["just a string"]}, "must be an object"),
        ({"drafts": []}, "held no drafts"),
    ],
)
def test_malformed_tool_input_is_repaired_once_then_rejected_with_its_reason(
    fake_api: FakeAnthropic, ctx: ProposalContext, tool_input: Any, why: str
) -> None:
    fake_api.push(tool_reply(tool_input), tool_reply(tool_input))
    drafts = claude(fake_api).propose(ctx, 1)
    assert len(fake_api.requests) == 2
    # The repair answers the tool call with an error result naming the problem.
    (result,) = fake_api.requests[1].body["messages"][2]["content"]
    assert result["type"] == "tool_result" and result["is_error"] is True
    assert why in result["content"]
    reasons = [v.reason for v in verdicts(drafts, ctx) if isinstance(v, Rejected)]
    assert reasons and all(why in r for r in reasons), reasons


def test_bad_edits_are_repaired_and_what_still_fails_is_returned(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.seen_hashes = {edit_hash(_edits(GOOD[1]))}
    batch = [
        GOOD[0],
        draft("Not matching", "LEARNING_RATE = 1.0", "LEARNING_RATE = 2.0"),
        draft("Protected", "x", "y", path="prepare.py"),
        draft("Escaping", "x", "y", path="../outside.py"),
        draft("Huge", LR, LR + "\n" + "# padding\n" * 3_000),
        GOOD[1],  # a repeat of an earlier candidate
    ]
    fixed = draft("Bigger batch", "BATCH_SIZE = 64", "BATCH_SIZE = 128")
    fake_api.push(drafts_reply(batch), drafts_reply([fixed, batch[2]]))
    drafts = claude(fake_api, batch_size=6).propose(ctx, 6)

    (result,) = fake_api.requests[1].body["messages"][2]["content"]
    assert result["is_error"] is True
    for fact in (
        "draft 2 ('Not matching'): edit 1 ('train.py'): search text not found",
        "draft 3 ('Protected')",
        "draft 4 ('Escaping')",
        "over the limit of 20000",
        "draft 6 ('Less weight decay'): duplicate of an earlier candidate",
        "5 corrected drafts",
    ):
        assert fact in result["content"]
    # The valid draft stays; the repair's drafts replace the rejected ones.
    assert [d.title for d in drafts] == ["Raise the LR", "Bigger batch", "Protected"]
    kinds = [type(v) for v in verdicts(drafts, ctx)]
    assert kinds == [Validated, Validated, Rejected]


def test_near_duplicate_hypotheses_are_flagged(
    fake_api: FakeAnthropic, ctx: ProposalContext, caplog: pytest.LogCaptureFixture
) -> None:
    ctx.history = [LedgerEntry(1, "LR up", "Raise the LR: should lower the loss", "discarded", [])]
    fake_api.push(drafts_reply(GOOD[:1]))
    with caplog.at_level(logging.INFO, logger="proposer.anthropic"):
        (d,) = claude(fake_api).propose(ctx, 1)
    assert "resembles an earlier one" in caplog.text
    assert d.title == "Raise the LR"  # flagged, not refused


def test_rate_limits_and_overload_are_retried_with_backoff(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(rate_limited(retry_after_s=0.3), overloaded(), drafts_reply(GOOD))
    drafts = claude(fake_api, max_retries=2).propose(ctx, 2)
    assert len(drafts) == 2
    first, second, third = fake_api.requests
    assert second.at - first.at >= 0.3  # retry-after honoured
    assert third.at - second.at >= 0.2  # exponential backoff (0.5 s, jittered)
    assert first.body == second.body == third.body


def test_retries_are_configurable(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    fake_api.push(rate_limited(0.01), drafts_reply(GOOD))
    with pytest.raises(ProposerError, match="429 after 0 retries"):
        claude(fake_api, max_retries=0).propose(ctx, 2)
    assert len(fake_api.requests) == 1


def test_a_slow_answer_times_out_and_is_retried(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    slow = dataclasses.replace(drafts_reply(GOOD[:1]), delay_s=3.0)
    fake_api.push(slow, drafts_reply(GOOD[1:]))
    started = time.monotonic()
    drafts = claude(fake_api, timeout_s=1.0, max_retries=1).propose(ctx, 1)
    assert [d.title for d in drafts] == ["Less weight decay"]
    assert time.monotonic() - started < 2.9  # gave up on the slow one


def test_timeouts_past_the_retries_stop_with_a_clear_error(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(dataclasses.replace(drafts_reply(GOOD), delay_s=3.0))
    with pytest.raises(ProposerError, match="did not answer after 0 retries"):
        claude(fake_api, timeout_s=1.0, max_retries=0).propose(ctx, 1)


def test_a_refused_key_says_where_the_key_comes_from(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(error_reply(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(ProposerError, match=r"ANTHROPIC_API_KEY or proposer\.api_key_file"):
        claude(fake_api).propose(ctx, 1)


def test_no_call_once_the_ledger_reached_the_spend_cap(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.spent_usd = 1.0
    with pytest.raises(SpendCapReached, match=r"\$1.00 spent.*spend_cap_usd = \$1.00"):
        claude(fake_api, spend_cap_usd=1.0).propose(ctx, 1)
    assert fake_api.requests == []


def test_a_call_that_crosses_the_cap_is_kept_but_not_repaired(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.spent_usd = 0.99
    bad = draft("Not matching", "LEARNING_RATE = 1.0", "LEARNING_RATE = 2.0")
    fake_api.push(drafts_reply([GOOD[0], bad], use=usage(1_000, 2_000)))
    drafts = claude(fake_api, spend_cap_usd=1.0).propose(ctx, 2)
    assert [d.title for d in drafts] == ["Raise the LR", "Not matching"]
    assert len(fake_api.requests) == 1
    assert sum(d.cost_usd for d in drafts) == pytest.approx(0.033)


def test_focused_strategy_asks_in_parallel_with_a_focus_each(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    third = draft("Deeper", "DEPTH = 4  # transformer blocks", "DEPTH = 6  # transformer blocks")
    fake_api.push(*(drafts_reply([d]) for d in [*GOOD, third]))
    proposer = claude(
        fake_api, strategy="focused", focuses=["optimisation", "architecture", "data"]
    )
    drafts = proposer.propose(ctx, 3)
    assert sorted(d.strategy for d in drafts) == [
        "focused/architecture",
        "focused/data",
        "focused/optimisation",
    ]
    texts = sorted(r.user_text for r in fake_api.requests)
    assert all("Propose 1 draft" in t for t in texts)
    assert [t.count("Focus on: ") for t in texts] == [1, 1, 1]
    assert {t.split("Focus on: ")[1].split(".")[0] for t in texts} == {
        "optimisation",
        "architecture",
        "data",
    }
    assert len({d.batch_id for d in drafts}) == 1
    assert len({d.prompt_hash for d in drafts}) == 3


def test_mix_strategy_asks_once_for_half_and_focused_for_the_rest(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD), drafts_reply(GOOD), drafts_reply(GOOD))
    claude(fake_api, strategy="mix", focuses=["architecture"]).propose(ctx, 3)
    texts = sorted(r.user_text for r in fake_api.requests)
    assert len(texts) == 2
    assert sum("Propose 2 diverse drafts" in t for t in texts) == 1
    assert sum("Focus on: architecture" in t for t in texts) == 1


def test_one_failed_parallel_call_keeps_the_others_drafts(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD[:1]), error_reply(400, "invalid_request_error", "bad"))
    drafts = claude(fake_api, strategy="focused").propose(ctx, 2)
    assert [d.title for d in drafts] == ["Raise the LR"]


def test_key_from_the_environment_or_a_file_and_never_logged(
    fake_api: FakeAnthropic,
    ctx: ProposalContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_api.url)
    (tmp_path / "key.txt").write_text("sk-from-file\n")
    fake_api.push(drafts_reply(GOOD[:1]), drafts_reply(GOOD[1:]))
    with caplog.at_level(logging.DEBUG):
        make_proposer(ProposerConfig(kind="anthropic"), target=tmp_path).propose(ctx, 1)
        by_file = ProposerConfig(kind="anthropic", api_key_file="key.txt")
        make_proposer(by_file, target=tmp_path).propose(ctx, 1)
    assert [r.headers["authorization"] for r in fake_api.requests] == [
        "Bearer sk-from-env",
        "Bearer sk-from-file",
    ]
    assert "sk-from" not in caplog.text

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(
        ConfigError, match=r"export ANTHROPIC_API_KEY or set proposer\.api_key_file"
    ):
        make_proposer(ProposerConfig(kind="anthropic"), target=tmp_path)
    with pytest.raises(ConfigError, match=r"proposer.api_key_file: cannot read .*missing"):
        make_proposer(ProposerConfig(kind="anthropic", api_key_file="missing"), target=tmp_path)


def test_prices_come_from_the_table_or_the_config() -> None:
    assert price_of("claude-sonnet-4-5-20250929", {}).output == 15.0  # a dated id
    mine = ModelPrice(input=1.0, output=2.0, cache_write=1.25, cache_read=0.1)
    assert price_of("claude-next", {"claude-next": mine}) is mine
    with pytest.raises(ConfigError, match=r'\[proposer.prices."claude-unknown"\]'):
        price_of("claude-unknown", {})


def _edits(d: dict[str, Any]) -> list[Edit]:
    return [Edit(**e) for e in d["edits"]]
