"""Whole campaigns with the anthropic proposer (on a local Messages API) and with optuna."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fake_anthropic import (
    FakeAnthropic,
    draft,
    drafts_reply,
    overloaded,
    rate_limited,
    text_reply,
    usage,
)
from helpers import SECRET, MakeTarget, RunCampaign

from farm.records import CandidateState, DecisionKind
from farm.report import proposer_table

LR = "LR = 0.5  # the knob that matters: the loss is lowest at LR = 2"
PRINT = 'print("---")'
CLAUDE = '[proposer]\nkind = "anthropic"\nbatch_size = 2\nbacklog = 2\nmax_retries = 2\n'


@pytest.fixture
def claude_target(
    make_target: MakeTarget, fake_api: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> MakeTarget:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_api.url)

    def make(extra_toml: str = "") -> Path:
        return make_target(extra_toml=CLAUDE + extra_toml)

    return make


def test_claude_campaign_survives_api_trouble_and_bad_drafts(
    claude_target: MakeTarget, fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    fake_api.push(
        rate_limited(0.05),
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Stale LR", "LR = 0.7", "LR = 1.0"),
            ]
        ),
        # The repair: one fixed draft, one that edits a protected file.
        drafts_reply(
            [
                draft("Other seed", "SEED_OFFSET = 3", "SEED_OFFSET = 4"),
                draft("Easier eval", "# FIXED", "# mine", path="prepare.py"),
            ]
        ),
        overloaded(),
        text_reply("Let me think about it."),
        text_reply("Still thinking."),
        drafts_reply([draft("Flush output", PRINT, 'print("---", flush=True)')]),
    )
    done = run_campaign(claude_target(), max_candidates=3)
    assert done.code == 0, done.output
    assert fake_api.pending == 0

    cands = {c.title: c for c in done.store.list_candidates("default")}
    assert set(cands) == {
        "Raise LR",
        "Other seed",
        "Easier eval",
        "(no usable drafts)",
        "Flush output",
    }
    assert cands["Raise LR"].state is CandidateState.KEPT
    assert "prepare.py is not an editable file" in cands["Easier eval"].reason
    assert "did not call submit_drafts: 'Let me think" in cands["(no usable drafts)"].reason
    decisions = done.store.list_decisions("default")
    assert sorted(d.candidate_id for d in decisions) == sorted(c.id for c in cands.values())
    rejected = [c for c in cands.values() if c.state is CandidateState.REJECTED]
    assert all(done.store.list_trials("default", candidate_id=c.id) == [] for c in rejected)

    # Every paid call is in the ledger: 5 answers of 1000 in + 500 out at Sonnet prices.
    assert sum(c.cost_usd for c in cands.values()) == pytest.approx(5 * 0.0105)
    assert sum(c.tokens_in for c in cands.values()) == 5_000
    assert {(c.proposer, c.strategy, c.model) for c in cands.values()} == {
        ("anthropic", "single", "claude-sonnet-4-6")
    }
    # Later prompts carry what happened: the rejection and the in-flight or kept work.
    last = fake_api.requests[-1].user_text
    assert "Raise LR" in last and "prepare.py is not an editable file" in last
    assert {r.headers["authorization"] for r in fake_api.requests} == {f"Bearer {SECRET}"}

    table = proposer_table(done.store, "default")
    (row,) = [line for line in table.splitlines() if line.startswith("| anthropic")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["anthropic", "single", "claude-sonnet-4-6", "5", "60%", "33%"]
    assert cells[9] == "$0.05"
    print(table)


def test_spend_cap_stops_proposing_cleanly_and_holds_after_a_restart(
    claude_target: MakeTarget, fake_api: FakeAnthropic, run_campaign: RunCampaign
) -> None:
    # One answer costs 1000 x $3 + 1000 x $15 per million = $0.018, over the $0.01 cap.
    fake_api.push(
        drafts_reply(
            [
                draft("Raise LR", LR, LR.replace("0.5", "1.5")),
                draft("Flush output", PRINT, 'print("---", flush=True)'),
            ],
            use=usage(1_000, 1_000),
        )
    )
    target = claude_target("spend_cap_usd = 0.01\n")
    done = run_campaign(target)
    assert done.code == 0, done.output
    assert re.search(r"finished \(spend cap reached: \$0.02 spent", done.output), done.output
    assert len(fake_api.requests) == 1
    cands = done.store.list_candidates("default")
    assert len(cands) == 2 and all(c.state.is_finished() for c in cands)
    assert all(done.store.get_decision("default", c.id) for c in cands)

    again = run_campaign(target)
    assert again.code == 0, again.output
    assert "spend cap reached" in again.output
    assert len(fake_api.requests) == 1  # the ledger remembered the spend


def test_optuna_campaign_tunes_the_declared_constant(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    target = make_target(
        extra_toml="[proposer]\n"
        'kind = "optuna"\n'
        "batch_size = 2\n"
        "seed = 1\n"
        "[[proposer.params]]\n"
        'file = "train.py"\n'
        'name = "LR"\n'
        "low = 0.1\n"
        "high = 4.0\n"
        "log = true\n"
    )
    done = run_campaign(target, max_candidates=5)
    assert done.code == 0, done.output
    cands = done.store.list_candidates("default")
    assert len(cands) == 5
    for c in cands:
        assert c.state is not CandidateState.REJECTED, c.reason
        (edit,) = c.edits
        value = float(edit.replace.split("=")[1].split("#")[0])
        assert edit.search.startswith("LR = ") and 0.1 <= value <= 4.0
    assert {(c.proposer, c.strategy) for c in cands} == {("optuna", "tpe")}
    kinds = {d.kind for d in done.store.list_decisions("default")}
    assert kinds <= {DecisionKind.KEPT, DecisionKind.DISCARDED, DecisionKind.SUPERSEDED}
    assert "| optuna | tpe | — | 5 | 100% |" in proposer_table(done.store, "default")
