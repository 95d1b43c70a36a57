"""What an LLM proposer sends: a stable, cacheable prefix and a per-call request.

The prefix (instructions, program.md, the incumbent's editable files) changes only when
the incumbent does, so it carries `cache_control` and is billed at the cache-read price
on later calls. The per-call part carries the ledger digest, the working memory, bounded
by a token budget (tokens approximated as characters / 4).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from farm.records import DecisionKind
from proposer.base import LedgerEntry, ProposalContext

CHARS_PER_TOKEN = 4
TOOL_NAME = "submit_drafts"
_CACHE = {"type": "ephemeral"}

INSTRUCTIONS = """\
You are a research engineer running experiments to improve a training script. Each \
experiment is a draft: one idea, a hypothesis, and edits to the editable files. Drafts \
are trained in parallel with a fixed time budget and scored on one metric; a change is \
kept only if it beats the current best by more than the seed noise.

Rules for edits:
- Each edit is an exact search/replace block on one editable file. `search` must be \
copied exactly from the current file (whitespace and comments included) and occur \
exactly once; later edits of a draft apply after earlier ones.
- Only the editable files may change. Evaluation, data preparation and the run command \
are fixed; changing what is measured is not an improvement.
- Keep edits small and focused: quote just enough context to make `search` unique.
- The code must still run within the time budget and print the metric.

Rules for drafts:
- One idea per draft, so its effect can be measured. The drafts of a batch should be \
diverse: different ideas, not variations of one.
- Do not repeat an idea listed as tried, kept or in flight.
- Answer only by calling the submit_drafts tool."""

TOOL: dict[str, Any] = {
    "name": TOOL_NAME,
    "description": "Submit a batch of drafts (candidate changes) to be trained and scored.",
    "input_schema": {
        "type": "object",
        "properties": {
            "drafts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string", "description": "one-line summary"},
                        "hypothesis": {
                            "type": "string",
                            "description": "why this should improve the metric",
                        },
                        "expected_effect": {
                            "type": "string",
                            "description": "the expected change of the metric, e.g. '-0.01'",
                        },
                        "edits": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "path": {"type": "string"},
                                    "search": {"type": "string"},
                                    "replace": {"type": "string"},
                                },
                                "required": ["path", "search", "replace"],
                            },
                        },
                    },
                    "required": ["title", "hypothesis", "expected_effect", "edits"],
                },
            }
        },
        "required": ["drafts"],
    },
}

# Digest sections: display order, and the order they get the token budget in (in-flight
# work first so it is not proposed twice, then what was learned, then what was refused).
_SECTIONS = {
    "in_flight": "In flight (queued or running; do not propose again)",
    DecisionKind.KEPT.value: "Kept (already in the code above)",
    DecisionKind.CRASHED.value: "Crashed or timed out (output tail)",
    DecisionKind.DISCARDED.value: "Discarded (no real improvement)",
    DecisionKind.REJECTED.value: "Rejected before training",
    DecisionKind.SUPERSEDED.value: "Superseded (no longer applied after a keep)",
}
_PRIORITY = [
    "in_flight",
    DecisionKind.KEPT.value,
    DecisionKind.CRASHED.value,
    DecisionKind.DISCARDED.value,
    DecisionKind.REJECTED.value,
    DecisionKind.SUPERSEDED.value,
]
TAIL_CHARS = 400  # of a crash's output
REASON_CHARS = 240
HYPOTHESIS_CHARS = 240


def system_blocks(ctx: ProposalContext) -> list[dict[str, Any]]:
    """Two cache breakpoints: the instructions survive a keep even though the code changes."""
    program = ctx.program.strip() or "(no program.md: improve the metric)"
    files = "\n\n".join(
        f"## {path}\n```\n{ctx.files[path]}\n```" for path in ctx.editable if path in ctx.files
    )
    return [
        {
            "type": "text",
            "text": f"{INSTRUCTIONS}\n\n# Program (program.md)\n\n{program}",
            "cache_control": _CACHE,
        },
        {
            "type": "text",
            "text": f"# Editable files, as in the current best commit\n\n{files}",
            "cache_control": _CACHE,
        },
    ]


def request_text(ctx: ProposalContext, *, n: int, focus: str, digest: str) -> str:
    """The per-call user turn: what happened so far and what to propose now."""
    what = "1 draft" if n == 1 else f"{n} diverse drafts"
    focus_line = f"\nFocus on: {focus}. Stay within this theme.\n" if focus else ""
    return (
        f"{digest}\n\n# Task\n{focus_line}\nPropose {what} that you expect to improve "
        f"{ctx.metric} ({ctx.direction.value}) by more than the noise. "
        f"Call {TOOL_NAME} with them."
    )


def repair_text(problems: list[str], *, count: int) -> str:
    """A follow-up asking once for replacements of what failed validation."""
    listed = "\n".join(f"- {p}" for p in problems)
    what = "a corrected draft" if count == 1 else f"{count} corrected drafts"
    return (
        f"These drafts were rejected before training:\n{listed}\n\n"
        f"Call {TOOL_NAME} again with {what}, one for each rejected draft (the others are "
        "accepted). Copy search text exactly from the files as given."
    )


def digest(ctx: ProposalContext, budget_tokens: int) -> str:
    """The ledger as working memory: newest and most informative entries within the budget."""
    budget = budget_tokens * CHARS_PER_TOKEN
    head = _header(ctx)
    used = len(head)
    chosen: dict[str, list[str]] = {key: [] for key in _SECTIONS}
    by_section: dict[str, list[LedgerEntry]] = {key: [] for key in _SECTIONS}
    for entry in reversed(ctx.history):  # newest first
        by_section[_section(entry)].append(entry)
    left_out = 0
    for key in _PRIORITY:
        for entry in by_section[key]:
            line = _line(entry)
            cost = len(line) + 1 + (0 if chosen[key] else len(_SECTIONS[key]) + 6)
            if used + cost > budget:
                left_out += 1
                continue
            chosen[key].append(line)
            used += cost
    parts = [head]
    for key, title in _SECTIONS.items():
        if chosen[key]:
            parts.append(f"\n## {title}\n" + "\n".join(chosen[key]))
    if left_out:
        parts.append(f"\n({left_out} older entries left out to fit the prompt)")
    return "\n".join(parts)


def prompt_hash(request: dict[str, Any]) -> str:
    """Names the exact prompt sent, so drafts from one prompt can be grouped later."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


def _header(ctx: ProposalContext) -> str:
    counts: dict[str, int] = {}
    for entry in ctx.history:
        counts[_section(entry)] = counts.get(_section(entry), 0) + 1
    tally = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counts.items()) or "none yet"
    best = "not measured yet" if ctx.incumbent_metric is None else f"{ctx.incumbent_metric:.6g}"
    noise = "not estimated yet" if ctx.sigma is None else f"σ = {ctx.sigma:.3g} between seeds"
    return (
        f"# Experiments so far\n"
        f"Metric: {ctx.metric} ({ctx.direction.value}); current best {best}; noise {noise}.\n"
        f"Δ is the improvement over the best of its day: positive = better.\n"
        f"Candidates: {tally}."
    )


def _section(entry: LedgerEntry) -> str:
    return entry.status if entry.status in _SECTIONS else "in_flight"


def _line(e: LedgerEntry) -> str:
    line = f"- #{e.candidate_id} {_clip(e.title, 120)}"
    if e.delta is not None:
        noise = f" ± {e.sigma:.3g}" if e.sigma is not None else ""
        line += f" (Δ {e.delta:+.4g}{noise})"
    if e.status == DecisionKind.KEPT.value and e.hypothesis and e.hypothesis != e.title:
        line += f": {_clip(e.hypothesis, HYPOTHESIS_CHARS)}"
    elif e.status == DecisionKind.CRASHED.value and e.detail:
        line += f"\n  {_clip(e.detail, TAIL_CHARS, tail=True)!r}"
    elif e.status == DecisionKind.REJECTED.value and e.detail:
        line += f": {_clip(e.detail, REASON_CHARS)}"
    return line


def _clip(text: str, limit: int, *, tail: bool = False) -> str:
    text = " ".join(text.split()) if not tail else text.strip()
    if len(text) <= limit:
        return text
    return "…" + text[-limit:] if tail else text[:limit] + "…"
