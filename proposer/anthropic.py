"""The Claude proposer: drafts through the official `anthropic` SDK, with tool use.

One conversation per call: the request (cached prefix + ledger digest) is answered with a
`submit_drafts` tool call; drafts that fail validation get ONE repair request, as an
error tool_result listing the reasons. Every answer goes to the book (the ledger) the
moment it arrives: valid drafts are queued at once, the others rejected with their
reason, and never get GPU time; drafts beyond the number asked for are recorded as
extras (never run, no failure of the call, no bar to the same edit later).

Spend: before a call is sent, its worst case (every prompt byte a token, plus its
max_tokens of output) is held against `spend_cap_usd` in the book, next to what the
ledger holds and the other calls in flight; the answer settles the call at its real cost
(a call that brought no draft, as a failed call). So parallel calls cannot overshoot the
cap, and a process killed mid-call leaves the hold. A call's max_tokens is its share of
`max_tokens` (which fits a batch of `batch_size` drafts) for the drafts it asks for, so a
one-draft call holds a quarter of what a four-draft one does.

Strategies (`[proposer] strategy`): `single` asks one call for N diverse drafts;
`focused` makes N parallel calls of one draft, each with its own focus; `mix` does both,
half and half. Every draft carries its share of its call's tokens and cost. Retries with
backoff on 429, 529, 5xx and timeouts are the SDK's (`max_retries`); what is still
unavailable after them raises ProposerUnavailable, which the proposer role retries later.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic

from farm.config import DEFAULT_BATCH, ModelPrice, ProposerConfig
from farm.errors import ConfigError, ProposerError, ProposerUnavailable, SpendCapReached
from farm.records import Draft, Edit
from proposer import prompt
from proposer.base import Book, MemoryBook, ProposalContext, Proposer, Verdict
from proposer.validate import Rejected

log = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"
TITLE_CHARS = 200  # longer titles and hypotheses are clipped before they reach the ledger
HYPOTHESIS_CHARS = 4_000
# Input tokens the API adds to a tool-forcing request beyond what it is sent (its tool-use
# system prompt: 313-346 tokens on Claude 4 models), with room to spare.
TOOL_PROMPT_TOKENS = 1_000

# USD per million tokens (5-minute cache writes). A dated id (claude-sonnet-4-5-20250929)
# takes the price of its longest listed prefix; `[proposer.prices]` adds or overrides.
DEFAULT_PRICES = {
    "claude-opus-4-8": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-opus-4-7": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
}


def price_of(model: str, prices: dict[str, ModelPrice]) -> ModelPrice:
    """The price of `model`; ConfigError when neither farm.toml nor the built-ins know it."""
    table = {**DEFAULT_PRICES, **prices}
    if model in table:
        return table[model]
    prefixes = [name for name in table if model.startswith(name)]
    if not prefixes:
        raise ConfigError(
            f"proposer.prices: no price for model {model!r}: add "
            f'[proposer.prices."{model}"] with input, output, cache_write and cache_read '
            "(USD per million tokens), so spend_cap_usd can be enforced"
        )
    return table[max(prefixes, key=len)]


def read_api_key(cfg: ProposerConfig, target: Path) -> str:
    """From `api_key_file` (relative to the target) when set, else $ANTHROPIC_API_KEY."""
    if cfg.api_key_file:
        path = target / Path(cfg.api_key_file).expanduser()
        try:
            key = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"proposer.api_key_file: cannot read {path}: {e.strerror}") from None
        if not key:
            raise ConfigError(f"proposer.api_key_file: {path} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(
            f'kind = "anthropic" needs an API key: export {API_KEY_ENV} or set '
            "proposer.api_key_file"
        )
    return key


@dataclass
class _Spend:
    """Tokens and cost of one call, from the usage fields of its answer."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, usage: Any, price: ModelPrice) -> None:
        fresh = usage.input_tokens or 0
        written = getattr(usage, "cache_creation_input_tokens", 0) or 0
        read = getattr(usage, "cache_read_input_tokens", 0) or 0
        out = usage.output_tokens or 0
        self.tokens_in += fresh + written + read
        self.tokens_out += out
        self.cost_usd += (
            fresh * price.input
            + written * price.cache_write
            + read * price.cache_read
            + out * price.output
        ) / 1e6


@dataclass
class _Answer:
    """One response read as drafts, or the reason it could not be."""

    drafts: list[Draft] = field(default_factory=list)
    tool_ids: list[str] = field(default_factory=list)
    problem: str = ""


class AnthropicProposer(Proposer):
    name = "anthropic"
    needs_baseline = True
    tool: dict[str, Any] = prompt.TOOL

    def __init__(self, cfg: ProposerConfig, *, api_key: str) -> None:
        if cfg.spend_cap_usd <= 0:
            raise ConfigError(
                f"proposer.spend_cap_usd = {cfg.spend_cap_usd:g}: kind = {self.name!r} needs a "
                "cap above 0, the most (in USD) the campaign's LLM calls may cost; for no LLM "
                'spend at all, use an offline proposer (kind = "mutate", "optuna" or "replay")'
            )
        self.cfg = cfg
        self.price = price_of(cfg.model, cfg.prices)
        # The key is read once, by the caller, and goes to the client only: never into
        # logs, prompts, the ledger or trials, and the environment is not read again.
        self.client = anthropic.Anthropic(
            api_key=api_key,
            base_url=cfg.base_url or None,  # None: $ANTHROPIC_BASE_URL, else the API
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        """Every draft the calls brought, valid or not, in the order they came: the path
        for tests and scripts (the proposer role records through `propose_into`)."""
        book = MemoryBook(ctx, max_edit_bytes=self.cfg.max_edit_bytes)
        self.propose_into(ctx, n, book)
        return book.drafts

    def propose_into(self, ctx: ProposalContext, n: int, book: Book) -> None:
        digest = prompt.digest(ctx, self.cfg.digest_tokens)
        batch_id = f"{self.name}-{uuid.uuid4().hex[:8]}"
        jobs = self._plan(n, offset=len(ctx.history))
        if len(jobs) == 1:
            (strategy, focus, count) = jobs[0]
            self._converse(ctx, book, digest, strategy, focus, count, batch_id)
            return
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="farm-claude") as pool:
            futures = [
                pool.submit(self._converse, ctx, book, digest, strategy, focus, count, batch_id)
                for strategy, focus, count in jobs
            ]
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        if len(errors) == len(jobs):  # the cap first: it is a clean stop, not a failure
            raise next((e for e in errors if isinstance(e, SpendCapReached)), errors[0])
        for error in errors:  # the calls that worked are recorded: keep going
            log.warning("one of %d parallel proposer calls failed: %s", len(jobs), error)

    def _plan(self, n: int, *, offset: int) -> list[tuple[str, str, int]]:
        """(strategy label, focus, drafts) per call. Focuses rotate with the ledger's length."""
        focuses = [f for f in self.cfg.focuses if f.strip()]

        def focus(i: int) -> str:
            return focuses[(offset + i) % len(focuses)]

        if self.cfg.strategy == "focused":
            return [(f"focused/{focus(i)}", focus(i), 1) for i in range(n)]
        if self.cfg.strategy == "mix" and n > 1:
            single = (n + 1) // 2
            return [("mix", "", single)] + [
                (f"mix/{focus(i)}", focus(i), 1) for i in range(n - single)
            ]
        return [(self.cfg.strategy, "", n)]

    def _converse(
        self,
        ctx: ProposalContext,
        book: Book,
        digest: str,
        strategy: str,
        focus: str,
        count: int,
        batch_id: str,
    ) -> None:
        """One call, and one repair request for what it got wrong; each answer is recorded
        the moment it arrives, so valid drafts can run while the repair is under way."""
        request: dict[str, Any] = {
            "model": self.cfg.model,
            "max_tokens": self.max_tokens(count),
            "system": prompt.system_blocks(ctx, self.cfg.files_tokens),
            "tools": [self.tool],
            "tool_choice": {"type": "tool", "name": prompt.TOOL_NAME},
            "messages": [
                {
                    "role": "user",
                    "content": self._task(ctx, n=count, focus=focus, digest=digest),
                }
            ],
        }
        if self.cfg.temperature is not None:
            request["extra_body"] = {"temperature": self.cfg.temperature}
        tag = Draft(
            title="",
            hypothesis="",
            edits=[],
            proposer=self.name,
            strategy=strategy,
            model=self.cfg.model,
            batch_id=batch_id,
            prompt_hash=prompt.prompt_hash(request),
        )
        response, answer, drafts, verdicts = self._ask(ctx, book, request, count, tag)
        problems = [
            f"draft {i} ({d.title!r}): {v.reason}"
            for i, (d, v) in enumerate(zip(drafts, verdicts, strict=True), start=1)
            if isinstance(v, Rejected) and i <= count and answer.drafts
        ]
        if answer.problem:
            problems.append(answer.problem)
        if not problems:
            return
        wanted = len(problems) if answer.drafts else count
        wanted = min(wanted, count)
        request["messages"] += [
            {"role": "assistant", "content": _content_params(response)},
            {"role": "user", "content": _repair_content(answer, problems, wanted)},
        ]
        request["max_tokens"] = self.max_tokens(wanted)
        try:
            self._ask(ctx, book, request, wanted, tag, repair=True)
        except SpendCapReached as e:  # the first answer is recorded; the cap says the rest
            log.info("no repair request: %s", e)
        except ProposerError as e:
            log.warning("repair request failed: %s", e)

    def _task(self, ctx: ProposalContext, *, n: int, focus: str, digest: str) -> str:
        return prompt.request_text(ctx, n=n, focus=focus, digest=digest)

    def _ask(
        self,
        ctx: ProposalContext,
        book: Book,
        request: dict[str, Any],
        count: int,
        tag: Draft,
        *,
        repair: bool = False,
    ) -> tuple[Any, _Answer, list[Draft], list[Verdict]]:
        """Hold the call's worst case, send it, record what came back: drafts beyond `count`
        are recorded as extras (paid for, not run); an answer with no draft settles the call
        as failed, at its cost."""
        label = tag.strategy + (" repair" if repair else "")
        worst = self.worst_cost(request)
        hold = book.hold(worst, cap_usd=self.cfg.spend_cap_usd, label=label, tag=tag)
        try:
            response = self._create(request)
        except ProposerError as e:
            book.release(hold, reason=str(e))
            raise
        spend = _Spend()
        spend.add(response.usage, self.price)
        answer = _read(response)
        drafts = list(answer.drafts)
        verdicts: list[Verdict] = []
        for i, d in enumerate(drafts[count:], start=count + 1):
            d.extra = True
            d.problem = f"draft {i} is beyond the {count} asked for: recorded, not run"
        if drafts:
            self._prepare(ctx, drafts)
            _account(drafts, spend)
            for d in drafts:
                d.proposer, d.strategy, d.model = tag.proposer, tag.strategy, tag.model
                d.batch_id, d.prompt_hash = tag.batch_id, tag.prompt_hash
            verdicts = book.record(drafts, hold=hold)  # the ledger first, before anything else
        else:
            book.release(
                hold,
                reason=f"after a repair request: {answer.problem}" if repair else answer.problem,
                tokens_in=spend.tokens_in,
                tokens_out=spend.tokens_out,
                cost_usd=spend.cost_usd,
            )
        log.info(
            "%s %s: %d drafts, %d+%d tokens, $%.4f",
            self.name,
            label,
            len(drafts),
            spend.tokens_in,
            spend.tokens_out,
            spend.cost_usd,
        )
        return response, answer, drafts, verdicts

    def _prepare(self, ctx: ProposalContext, drafts: list[Draft]) -> None:
        """Adjust drafts before they are recorded: this tool declares no knobs."""
        for d in drafts:
            d.knobs = []

    def max_tokens(self, drafts: int) -> int:
        """The output a call asking for `drafts` may use: its share of `max_tokens`, which
        fits a whole batch (`batch_size` drafts; unset, the least it is sized to). It bounds
        what the call holds."""
        batch = self.cfg.batch_size or DEFAULT_BATCH
        return min(self.cfg.max_tokens, -(-self.cfg.max_tokens * drafts // batch))

    def worst_cost(self, request: dict[str, Any]) -> float:
        """What the call can cost at most: every prompt byte a token (a token is at least a
        byte) at the dearest input price, the tool-use system prompt, and its max_tokens out."""
        sent = {k: request[k] for k in ("system", "tools", "messages")}
        tokens_in = len(json.dumps(sent, ensure_ascii=False).encode()) + TOOL_PROMPT_TOKENS
        p = self.price
        dearest = max(p.input, p.cache_write, p.cache_read)
        return (tokens_in * dearest + request["max_tokens"] * p.output) / 1e6

    def _create(self, request: dict[str, Any]) -> Any:
        retries = f"after {self.cfg.max_retries} retries"
        try:
            return self.client.messages.create(**request)
        except anthropic.AuthenticationError:
            raise ProposerError(
                f"the Anthropic API refused the key (401): check {API_KEY_ENV} or "
                "proposer.api_key_file"
            ) from None
        except anthropic.APIStatusError as e:
            error = e.body.get("error") if isinstance(e.body, dict) else None
            said = error.get("message") if isinstance(error, dict) else None
            said = str(said or e.message)[:300]
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise ProposerUnavailable(
                    f"the Anthropic API answered {e.status_code} {retries}: {said}; "
                    "run again later to resume, or raise proposer.max_retries"
                ) from None
            raise ProposerError(
                f"the Anthropic API refused the request ({e.status_code}): {said}; "
                "check proposer.model and the other [proposer] settings"
            ) from None
        except anthropic.APIConnectionError as e:  # timeouts included
            raise ProposerUnavailable(
                f"the Anthropic API did not answer {retries} ({e}); check the network or "
                "raise proposer.timeout_s, then run again to resume"
            ) from None


def _read(response: Any) -> _Answer:
    """Drafts from the submit_drafts calls of a response, each with its own problem if any."""
    answer = _Answer()
    calls = [b for b in response.content if b.type == "tool_use"]
    cut = (
        "; the answer was cut off at its max_tokens (its share of proposer.max_tokens for the "
        "drafts it asked for): raise proposer.max_tokens"
        if response.stop_reason == "max_tokens"
        else ""
    )
    if not calls:
        text = " ".join(b.text for b in response.content if b.type == "text").strip()
        answer.problem = f"the answer did not call {prompt.TOOL_NAME}" + (
            f": {text[:200]!r}" if text else f" (stop reason {response.stop_reason})"
        )
        answer.problem += cut
        return answer
    for call in calls:
        answer.tool_ids.append(call.id)
        items = call.input.get("drafts") if isinstance(call.input, dict) else None
        if call.name != prompt.TOOL_NAME or not isinstance(items, list):
            answer.problem = (
                f"the {call.name} input must be an object whose 'drafts' is a list of draft objects"
            )
            continue
        answer.drafts += [_draft(i, item) for i, item in enumerate(items, start=1)]
    if not answer.drafts and not answer.problem:
        answer.problem = f"{prompt.TOOL_NAME} held no drafts"
    if answer.problem:
        answer.problem += cut
    return answer


def _draft(number: int, item: Any) -> Draft:
    """A draft from one tool-input item; what is malformed becomes its `problem`."""
    if not isinstance(item, dict):
        return Draft(
            title=f"draft {number}",
            hypothesis="",
            edits=[],
            problem=f"draft {number} must be an object with title, hypothesis, "
            "expected_effect and edits",
        )
    problems = []
    text = {}
    for key in ("title", "hypothesis", "expected_effect"):
        value = item.get(key)
        if not isinstance(value, str) or (key == "title" and not value.strip()):
            problems.append(
                f"'{key}' must be a non-empty string"
                if key == "title"
                else f"'{key}' must be a string"
            )
            value = ""
        text[key] = value
    edits = []
    raw_edits = item.get("edits")
    if not isinstance(raw_edits, list) or not raw_edits:
        problems.append("'edits' must be a non-empty list of {path, search, replace} objects")
    else:
        for i, e in enumerate(raw_edits, start=1):
            if isinstance(e, dict) and all(
                isinstance(e.get(k), str) for k in ("path", "search", "replace")
            ):
                edits.append(Edit(e["path"], e["search"], e["replace"]))
            else:
                problems.append(f"edit {i} must be an object with string path, search and replace")
    title = " ".join(text["title"].split())
    knobs = item.get("knobs")  # hybrid's tool only; checked by HybridProposer._prepare
    return Draft(
        title=(title[:TITLE_CHARS] + "…" if len(title) > TITLE_CHARS else title)
        or f"draft {number}",
        hypothesis=text["hypothesis"][:HYPOTHESIS_CHARS],
        expected_effect=text["expected_effect"][:TITLE_CHARS],
        edits=edits,
        problem=f"draft {number}: {'; '.join(problems)}" if problems else "",
        knobs=[k for k in knobs if isinstance(k, dict)] if isinstance(knobs, list) else [],
    )


def _content_params(response: Any) -> list[dict[str, Any]]:
    """The assistant turn to send back with a repair request."""
    blocks: list[dict[str, Any]] = []
    for b in response.content:
        if b.type == "text":
            blocks.append({"type": "text", "text": b.text})
        elif b.type == "tool_use":
            blocks.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
    return blocks or [{"type": "text", "text": "(no answer)"}]


def _repair_content(answer: _Answer, problems: list[str], wanted: int) -> Any:
    text = prompt.repair_text(problems, count=wanted)
    if not answer.tool_ids:
        return text
    # Every tool_use needs its tool_result; the first one carries the errors.
    return [
        {
            "type": "tool_result",
            "tool_use_id": tool_id,
            "is_error": True,
            "content": text if i == 0 else "see the first tool result",
        }
        for i, tool_id in enumerate(answer.tool_ids)
    ]


def _account(drafts: list[Draft], spend: _Spend) -> None:
    """Split a conversation's tokens and cost over its drafts; the totals stay exact."""
    n = len(drafts)
    for i, d in enumerate(drafts):
        d.tokens_in = spend.tokens_in // n + (i < spend.tokens_in % n)
        d.tokens_out = spend.tokens_out // n + (i < spend.tokens_out % n)
        d.cost_usd = spend.cost_usd / n
