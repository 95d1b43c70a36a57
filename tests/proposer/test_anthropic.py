"""The Claude proposer against a local Messages API, through the real SDK over HTTP."""

from __future__ import annotations

import copy
import dataclasses
import json
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
from farm.errors import ConfigError, ProposerError, ProposerUnavailable, SpendCapReached
from farm.records import Draft, Edit, edit_hash
from proposer.anthropic import TOOL_PROMPT_TOKENS, AnthropicProposer, price_of
from proposer.base import LedgerEntry, MemoryBook, ProposalContext, Verdict
from proposer.registry import make_proposer
from proposer.validate import Rejected, Validated

KEY = "sk-ant-unit-test-key"
LR = "LEARNING_RATE = 3e-4  # AdamW peak LR"
WD = "WEIGHT_DECAY = 0.1  # on matrices only"
GOOD = [
    draft("Raise the LR", LR, "LEARNING_RATE = 6e-4  # AdamW peak LR"),
    draft("Less weight decay", WD, "WEIGHT_DECAY = 0.05  # on matrices only"),
]
MORE = [
    draft("Bigger batch", "BATCH_SIZE = 64", "BATCH_SIZE = 128"),
    draft("Deeper", "DEPTH = 4  # transformer blocks", "DEPTH = 6  # transformer blocks"),
]
ONE_CALL = (1_000 * 3 + 500 * 15) / 1e6  # the fake's default usage at Sonnet prices


def claude(fake: FakeAnthropic, **overrides: Any) -> AnthropicProposer:
    settings: dict[str, Any] = {"base_url": fake.url, "timeout_s": 2.0, "max_retries": 2}
    cfg = ProposerConfig(kind="anthropic", **{**settings, **overrides})
    return AnthropicProposer(cfg, api_key=KEY)


class Book(MemoryBook):
    """A book that also notes how many requests the API had seen at each record."""

    def __init__(self, ctx: ProposalContext, fake: FakeAnthropic) -> None:
        super().__init__(ctx, max_edit_bytes=20_000)
        self.fake = fake
        self.seen_at: list[int] = []

    def record(self, drafts: list[Draft], *, hold: str | None = None) -> list[Verdict]:
        self.seen_at.append(len(self.fake.requests))
        return super().record(drafts, hold=hold)

    def kinds(self) -> list[type]:
        return [type(v) for v in self.verdicts]

    def reasons(self) -> list[str]:
        """Why drafts were rejected, then why calls that brought none failed."""
        return [v.reason for v in self.verdicts if isinstance(v, Rejected)] + self.failed


def ask(fake: FakeAnthropic, ctx: ProposalContext, n: int, **overrides: Any) -> Book:
    book = Book(ctx, fake)
    claude(fake, **overrides).propose_into(ctx, n, book)
    return book


def test_a_batch_carries_provenance_tokens_and_cost(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD, use=usage(1_000, 500, cache_creation=2_000)))
    book = ask(fake_api, ctx, 2, batch_size=2)
    drafts = book.drafts

    assert [d.title for d in drafts] == ["Raise the LR", "Less weight decay"]
    assert book.kinds() == [Validated, Validated]
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
    assert "Call submit_drafts with them." in req.user_text
    assert "# Where the campaign stands" in req.user_text
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["anthropic-version"]


def test_one_draft_is_asked_for_in_the_singular(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD[:1]))
    ask(fake_api, ctx, 1)
    assert "Propose 1 draft that" in fake_api.requests[0].user_text
    assert "Call submit_drafts with it." in fake_api.requests[0].user_text


def test_temperature_is_sent_when_set(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    fake_api.push(drafts_reply(GOOD[:1]))
    ask(fake_api, ctx, 1, temperature=0.7, max_tokens=999, batch_size=1, model="claude-haiku-4-5")
    body = fake_api.requests[0].body
    assert (body["temperature"], body["max_tokens"], body["model"]) == (
        0.7,
        999,
        "claude-haiku-4-5",
    )


def test_the_ledger_reaches_the_model(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    ctx.sigma = 0.0123
    edit = [Edit("train.py", "a", "b")]
    ctx.history = [
        LedgerEntry(1, "Deeper net", "more layers help", "kept", edit, delta=0.05, sigma=0.0123),
        LedgerEntry(2, "Huge LR", "", "crashed", edit, detail="screening run crashed\nloss is nan"),
        LedgerEntry(3, "Wider MLP", "", "queued", edit),
    ]
    fake_api.push(drafts_reply(GOOD[:1]))
    ask(fake_api, ctx, 1)
    text = fake_api.requests[0].user_text
    for fact in (
        '"Deeper net"',
        "Δ +0.05",
        "| loss is nan",
        '#3 queued: "Wider MLP"',
        "σ = 0.0123",
    ):
        assert fact in text, fact


def test_valid_drafts_are_recorded_before_the_repair_request(
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
    book = ask(fake_api, ctx, 6, batch_size=6)

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
    # Every draft of both answers is in the ledger, the first answer's before the repair.
    assert book.seen_at == [1, 2]
    assert [d.title for d in book.drafts] == [d["title"] for d in batch] + [
        "Bigger batch",
        "Protected",
    ]
    assert book.kinds() == [Validated] + [Rejected] * 5 + [Validated, Rejected]
    assert sum(d.cost_usd for d in book.drafts) == pytest.approx(2 * ONE_CALL)


def test_an_answer_without_a_tool_call_is_recorded_and_repaired(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(text_reply("Here are some ideas: raise the LR."), drafts_reply(GOOD[:1]))
    book = ask(fake_api, ctx, 1)
    assert [d.title for d in book.drafts] == ["Raise the LR"]  # a failed call is no draft
    assert book.kinds() == [Validated]
    assert "did not call submit_drafts" in book.failed[0]
    _, repair = fake_api.requests
    messages = repair.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Here are some ideas: raise the LR."}
    ]
    assert "did not call submit_drafts" in messages[2]["content"]
    # Each call is paid for: the failed one too.
    assert [d.cost_usd for d in book.drafts] == pytest.approx([ONE_CALL])
    assert book.spent_usd == pytest.approx(2 * ONE_CALL)


def test_still_no_drafts_after_the_repair_leaves_two_costed_failed_calls(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(text_reply("I would rather chat."), text_reply("Still chatting."))
    book = ask(fake_api, ctx, 2)
    assert len(fake_api.requests) == 2  # one repair, never more
    assert book.drafts == []
    assert book.spent_usd == pytest.approx(2 * ONE_CALL)
    first, second = book.failed
    assert "did not call submit_drafts: 'I would rather chat.'" in first
    assert second.startswith("after a repair request: the answer did not call")


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
    book = ask(fake_api, ctx, 1)
    assert len(fake_api.requests) == 2
    # The repair answers the tool call with an error result naming the problem.
    (result,) = fake_api.requests[1].body["messages"][2]["content"]
    assert result["type"] == "tool_result" and result["is_error"] is True
    assert why in result["content"]
    reasons = book.reasons()
    assert len(reasons) == 2 and all(why in r for r in reasons), reasons


def test_drafts_beyond_the_number_asked_for_are_recorded_not_run(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply([*GOOD, *MORE]))
    book = ask(fake_api, ctx, 2)
    assert len(fake_api.requests) == 1  # extras are no reason for a repair
    assert book.kinds() == [Validated, Validated, Rejected, Rejected]
    assert book.reasons() == [
        "draft 3 is beyond the 2 asked for: recorded, not run",
        "draft 4 is beyond the 2 asked for: recorded, not run",
    ]
    assert sum(d.cost_usd for d in book.drafts) == pytest.approx(ONE_CALL)


def test_a_repair_answer_is_trimmed_to_the_replacements_asked_for(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    stale = draft("Stale", "LEARNING_RATE = 1.0", "LEARNING_RATE = 2.0")
    fake_api.push(drafts_reply([GOOD[0], stale]), drafts_reply([GOOD[1], *MORE]))
    book = ask(fake_api, ctx, 2)
    assert "Call submit_drafts again with a corrected draft" in json.dumps(
        fake_api.requests[1].body["messages"][2]
    )
    assert [
        d.title for d, v in zip(book.drafts, book.verdicts, strict=True) if isinstance(v, Validated)
    ] == [
        "Raise the LR",
        "Less weight decay",
    ]
    assert book.kinds().count(Rejected) == 3  # the stale draft and two extras


def test_one_change_spelled_two_ways_is_a_repeat(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    wider = draft(
        "Raise the LR, more context",
        "# Hyperparameters\n" + LR,
        "# Hyperparameters\nLEARNING_RATE = 6e-4  # AdamW peak LR",
    )
    fake_api.push(drafts_reply(GOOD[:1]))
    first = ask(fake_api, ctx, 1)
    assert first.kinds() == [Validated]
    # A later batch (the context now knows the first's files) brings the same change.
    fake_api.push(drafts_reply([wider]), drafts_reply([GOOD[1]]))
    second = ask(fake_api, ctx, 1)
    assert second.reasons()[0].startswith("gives the same code as candidate #1, tried already")
    assert second.kinds() == [Rejected, Validated]


def test_near_duplicate_hypotheses_are_flagged(
    fake_api: FakeAnthropic, ctx: ProposalContext, caplog: pytest.LogCaptureFixture
) -> None:
    ctx.history = [LedgerEntry(1, "LR up", "Raise the LR: should lower the loss", "discarded", [])]
    fake_api.push(drafts_reply(GOOD[:1]))
    with caplog.at_level(logging.INFO, logger="proposer.base"):
        book = ask(fake_api, ctx, 1)
    assert "resembles an earlier one" in caplog.text
    assert book.kinds() == [Validated]  # flagged, not refused


def test_rate_limits_and_overload_are_retried_with_backoff(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(rate_limited(retry_after_s=0.3), overloaded(), drafts_reply(GOOD))
    book = ask(fake_api, ctx, 2, max_retries=2)
    assert len(book.drafts) == 2
    first, second, third = fake_api.requests
    assert second.at - first.at >= 0.3  # retry-after honoured
    assert third.at - second.at >= 0.2  # exponential backoff (0.5 s, jittered)
    assert first.body == second.body == third.body


def test_unavailable_after_the_retries_is_retryable_and_frees_the_hold(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(overloaded(), overloaded())
    book = Book(ctx, fake_api)
    with pytest.raises(ProposerUnavailable, match="answered 529 after 1 retries: Overloaded;"):
        claude(fake_api, max_retries=1, spend_cap_usd=1.0).propose_into(ctx, 2, book)
    assert len(fake_api.requests) == 2
    assert book.drafts == [] and book._holds == {}  # an error is not billed


def test_a_refused_request_is_not_retried_later(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(error_reply(404, "not_found_error", "model: claude-nope"))
    with pytest.raises(ProposerError, match=r"refused the request \(404\).*proposer\.model") as e:
        ask(fake_api, ctx, 1)
    assert not isinstance(e.value, ProposerUnavailable)


def test_retries_are_configurable(fake_api: FakeAnthropic, ctx: ProposalContext) -> None:
    fake_api.push(rate_limited(0.01), drafts_reply(GOOD))
    with pytest.raises(ProposerUnavailable, match="429 after 0 retries"):
        ask(fake_api, ctx, 2, max_retries=0)
    assert len(fake_api.requests) == 1


def test_a_slow_answer_times_out_and_is_retried(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    slow = dataclasses.replace(drafts_reply(GOOD[:1]), delay_s=3.0)
    fake_api.push(slow, drafts_reply(GOOD[1:]))
    started = time.monotonic()
    book = ask(fake_api, ctx, 1, timeout_s=1.0, max_retries=1)
    assert [d.title for d in book.drafts] == ["Less weight decay"]
    assert time.monotonic() - started < 2.9  # gave up on the slow one


def test_timeouts_past_the_retries_stop_with_a_clear_error(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(dataclasses.replace(drafts_reply(GOOD), delay_s=3.0))
    with pytest.raises(ProposerUnavailable, match="did not answer after 0 retries"):
        ask(fake_api, ctx, 1, timeout_s=1.0, max_retries=0)


def test_a_refused_key_says_where_the_key_comes_from(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(error_reply(401, "authentication_error", "invalid x-api-key"))
    with pytest.raises(ProposerError, match=r"ANTHROPIC_API_KEY or proposer\.api_key_file"):
        ask(fake_api, ctx, 1)


def test_the_worst_case_of_a_call_bounds_every_prompt_byte_and_its_max_tokens(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    proposer = claude(fake_api, max_tokens=2_000, batch_size=4)
    fake_api.push(drafts_reply(GOOD[:1]))
    proposer.propose_into(ctx, 1, MemoryBook(ctx, max_edit_bytes=20_000))
    body = fake_api.requests[0].body
    # One draft of a four-draft batch's max_tokens: a quarter, and a quarter of the hold.
    assert body["max_tokens"] == 500
    sent = {k: body[k] for k in ("system", "tools", "messages")}
    prompt_bytes = len(json.dumps(sent, ensure_ascii=False).encode())
    # Cache writes are the dearest input at Sonnet prices: $3.75 per million.
    expected = ((prompt_bytes + TOOL_PROMPT_TOKENS) * 3.75 + 500 * 15) / 1e6
    assert proposer.worst_cost(body) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(("drafts", "max_tokens"), [(1, 4_000), (2, 8_000), (4, 16_000)])
def test_a_call_asks_for_the_share_of_max_tokens_its_drafts_need(
    fake_api: FakeAnthropic, ctx: ProposalContext, drafts: int, max_tokens: int
) -> None:
    fake_api.push(drafts_reply(GOOD[:1]))
    ask(fake_api, ctx, drafts)  # the defaults: max_tokens 16000 fit a batch of 4
    assert fake_api.requests[0].body["max_tokens"] == max_tokens


def test_a_spend_cap_of_zero_is_refused_with_what_to_do(fake_api: FakeAnthropic) -> None:
    with pytest.raises(ConfigError, match=r"spend_cap_usd = 0: .*above 0.*kind = \"mutate\""):
        claude(fake_api, spend_cap_usd=0.0)


def test_no_call_once_the_ledger_reached_the_spend_cap(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.spent_usd = 1.0
    with pytest.raises(SpendCapReached, match=r"\$1.00 spent.*spend_cap_usd = \$1.00"):
        ask(fake_api, ctx, 1, spend_cap_usd=1.0)
    assert fake_api.requests == []


def test_a_call_that_could_cross_the_cap_is_not_sent(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    ctx.spent_usd = 0.99
    with pytest.raises(SpendCapReached, match=r"may cost up to \$0\.1.*over the \$0\.01 left"):
        ask(fake_api, ctx, 2, spend_cap_usd=1.0)  # 8000 tokens out alone are $0.12
    assert fake_api.requests == []


def test_parallel_calls_cannot_overshoot_the_cap(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    proposer = claude(fake_api, strategy="focused", max_tokens=1_000)
    lines = [f"LEARNING_RATE = {i}e-4  # AdamW peak LR" for i in range(4, 30)]
    replies = iter(drafts_reply([draft(v, LR, v)]) for v in lines)  # all valid: no repairs
    fake_api.respond = lambda req: next(replies)
    # One call first, on a copy of the context, to learn what a call's worst case is.
    proposer.propose_into(copy.deepcopy(ctx), 1, MemoryBook(ctx, max_edit_bytes=20_000))
    worst = proposer.worst_cost(fake_api.requests.pop().body)
    cap = proposer.cfg.spend_cap_usd = 2.5 * worst  # room for two worst cases, not three
    book = Book(ctx, fake_api)
    proposer.propose_into(ctx, 4, book)
    assert len(fake_api.requests) == 2  # the other two calls were never sent
    # Answers cost less than their worst case: later batches use what is left, never more.
    with pytest.raises(SpendCapReached, match="may cost up to"):
        for _ in range(10):
            proposer.propose_into(ctx, 4, book)
    spent = sum(d.cost_usd for d in book.drafts)
    assert len(fake_api.requests) > 2 and spent <= cap < spent + worst


def test_a_repair_that_could_cross_the_cap_is_not_sent(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    proposer = claude(fake_api, max_tokens=1_000)
    stale = draft("Not matching", "LEARNING_RATE = 1.0", "LEARNING_RATE = 2.0")
    fake_api.push(drafts_reply([GOOD[0], stale], use=usage(1_000, 2_000)))
    proposer.cfg.spend_cap_usd = 0.034  # the answer costs $0.033; a repair could cost more
    book = Book(ctx, fake_api)
    proposer.propose_into(ctx, 2, book)
    assert [d.title for d in book.drafts] == ["Raise the LR", "Not matching"]
    assert len(fake_api.requests) == 1
    assert sum(d.cost_usd for d in book.drafts) == pytest.approx(0.033)


def test_focused_strategy_asks_in_parallel_with_a_focus_each(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(*(drafts_reply([d]) for d in [*GOOD, MORE[1]]))
    book = ask(
        fake_api, ctx, 3, strategy="focused", focuses=["optimisation", "architecture", "data"]
    )
    assert sorted(d.strategy for d in book.drafts) == [
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
    assert len({d.batch_id for d in book.drafts}) == 1
    assert len({d.prompt_hash for d in book.drafts}) == 3


def test_mix_strategy_asks_once_for_half_and_focused_for_the_rest(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD), drafts_reply(MORE[:1]))
    ask(fake_api, ctx, 3, strategy="mix", focuses=["architecture"])
    texts = sorted(r.user_text for r in fake_api.requests)
    assert len(texts) == 2
    assert sum("Propose 2 diverse drafts" in t for t in texts) == 1
    assert sum("Focus on: architecture" in t for t in texts) == 1


def test_one_failed_parallel_call_keeps_the_others_drafts(
    fake_api: FakeAnthropic, ctx: ProposalContext
) -> None:
    fake_api.push(drafts_reply(GOOD[:1]), error_reply(400, "invalid_request_error", "bad"))
    book = ask(fake_api, ctx, 2, strategy="focused")
    assert [d.title for d in book.drafts] == ["Raise the LR"]


def test_key_from_the_environment_or_a_file_read_once_and_never_logged(
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
        from_env = make_proposer(ProposerConfig(kind="anthropic"), target=tmp_path)
        by_file = ProposerConfig(kind="anthropic", api_key_file="key.txt")
        from_file = make_proposer(by_file, target=tmp_path)
        # The lead scrubs secrets from the environment before Ray starts: the proposer
        # must not need it again after it was built.
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        from_env.propose(ctx, 1)
        from_file.propose(ctx, 1)
    assert [r.headers["authorization"] for r in fake_api.requests] == [
        "Bearer sk-from-env",
        "Bearer sk-from-file",
    ]
    assert "sk-from" not in caplog.text

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
