from __future__ import annotations

from typing import Any

from farm.records import Edit
from proposer.base import LedgerEntry, ProposalContext
from proposer.prompt import CHARS_PER_TOKEN, digest, system_blocks


def entry(i: int, status: str, **kw: Any) -> LedgerEntry:
    return LedgerEntry(i, f"idea {i}", f"because {i}", status, [Edit("train.py", "a", "b")], **kw)


def test_digest_holds_deltas_noise_crash_tails_and_in_flight_work(ctx: ProposalContext) -> None:
    ctx.sigma, ctx.incumbent_metric = 0.02, 1.234
    ctx.history = [
        entry(1, "kept", delta=0.1, sigma=0.02),
        entry(2, "discarded", delta=-0.03, sigma=0.02),
        entry(3, "crashed", detail="Traceback ...\nRuntimeError: CUDA out of memory"),
        entry(4, "rejected", detail="edit 1: search text not found"),
        entry(5, "running"),
    ]
    text = digest(ctx, 4_000)
    for fact in (
        "current best 1.234; noise σ = 0.02",
        "idea 1 (Δ +0.1 ± 0.02): because 1",
        "idea 2 (Δ -0.03 ± 0.02)",
        "CUDA out of memory",
        "idea 4: edit 1: search text not found",
        "## In flight",
        "idea 5",
    ):
        assert fact in text, fact


def test_digest_fits_its_budget_newest_and_most_informative_first(ctx: ProposalContext) -> None:
    ctx.history = [entry(i, "discarded", delta=-0.01) for i in range(1, 200)]
    ctx.history += [entry(200, "kept", delta=0.5), entry(201, "queued")]
    text = digest(ctx, 150)
    assert len(text) <= 150 * CHARS_PER_TOKEN + 60  # the note of what was left out
    assert "#201 idea 201" in text and "#200 idea 200" in text  # in flight, then kept
    assert "#199 idea 199" in text and "#1 idea 1 " not in text  # newest discards
    assert "older entries left out" in text


def test_the_prefix_is_cached_and_holds_program_and_code(ctx: ProposalContext) -> None:
    blocks = system_blocks(ctx)
    assert all(b["cache_control"] == {"type": "ephemeral"} for b in blocks)
    assert "Lower val_bpb." in blocks[0]["text"] and "LEARNING_RATE = 3e-4" in blocks[1]["text"]
