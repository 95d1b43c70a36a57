"""A campaign follows the repo: `farm run` (the real CLI, real git, real SQLite) stores no
campaign when it refuses, says when HEAD moved since the campaign started, and --restart
starts a new campaign at HEAD beside the old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TOY_TOML, MakeTarget, farm, git

from farm.campaign import prepare
from farm.config import load_config
from farm.store import default_url, open_store

NO_KNOBS = "import os\nprint(f\"loss: {int(os.environ.get('FARM_SEED', 0)) * 0.1}\")\n"
NEEDS_A_GPU = "[resources]\ngpus_per_trial = 1\n"  # the test Ray has none


def campaigns(target: Path) -> dict[str, str]:
    """Campaign id -> start commit, as the store holds them."""
    store = open_store(default_url(target))
    try:
        return {c.id: c.start_sha for c in store.list_campaigns()}
    finally:
        store.close()


@pytest.mark.usefixtures("ray_local")
def test_a_run_the_proposer_refuses_stores_no_campaign_and_the_fix_starts_at_head(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target({"train.py": NO_KNOBS}, extra_toml=NEEDS_A_GPU)
    code, out = farm(capsys, "run", str(target), "--proposer", "mutate")
    assert code == 2 and "found no number it can change" in out, out
    assert campaigns(target) == {}
    # The user adds a knob and commits: the next run checks HEAD, not a campaign pinned
    # to the refused commit (it stops at the cluster here, before the baseline).
    (target / "train.py").write_text("LR = 0.5\n" + NO_KNOBS)
    git(target, "commit", "-qam", "a knob")
    code, out = farm(capsys, "run", str(target), "--proposer", "mutate")
    assert "found no number" not in out and "HEAD has moved" not in out
    assert code == 2 and "no node of the Ray cluster can run a trial" in out, out
    assert campaigns(target) == {}  # the cluster refused: still no campaign


def started_then_moved(target: Path) -> tuple[str, str]:
    """Start the campaign at HEAD, then commit by hand: (its start commit, the new HEAD)."""
    start = git(target, "rev-parse", "HEAD").strip()
    store = open_store(default_url(target))
    prepare(target, load_config(target), store, check_command=False)
    store.close()
    (target / "train.py").write_text((target / "train.py").read_text().replace("0.5", "0.6"))
    git(target, "commit", "-qam", "LR 0.6 by hand")
    return start, git(target, "rev-parse", "HEAD").strip()


@pytest.mark.usefixtures("ray_local")
def test_a_run_after_a_commit_names_both_commits_and_how_to_start_at_head(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target(extra_toml=NEEDS_A_GPU)
    start, head = started_then_moved(target)
    code, out = farm(capsys, "run", str(target), "--proposer", "mutate")
    assert code == 2, out  # the cluster's refusal, after the note
    said = " ".join(out.split())
    assert "HEAD has moved on since campaign 'default' started" in said
    assert f"started at {start[:10]} baseline" in said
    assert f"HEAD is {head[:10]} LR 0.6 by hand" in said
    assert f"--restart (campaign 'default-{head[:7]}';" in said and "--campaign NAME" in said
    assert campaigns(target) == {"default": start}


@pytest.mark.usefixtures("ray_local")
def test_restart_starts_a_new_campaign_at_head_and_keeps_the_old_one(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = {
        "title": "LR 1.9",
        "hypothesis": "closer to 2",
        "edits": [{"path": "train.py", "search": "LR = 0.6", "replace": "LR = 1.9"}],
    }
    target = make_target(
        {"drafts.jsonl": json.dumps(draft) + "\n"},
        toml=TOY_TOML.replace("budget_s = 30", "budget_s = 20"),
        extra_toml='[merge]\nrepeats = 2\nconfirm = 1\n[proposer]\nkind = "replay"\n'
        'replay_file = "drafts.jsonl"\n',
    )
    start, head = started_then_moved(target)

    code, out = farm(capsys, "run", str(target), "--restart", "--slots", "2")
    assert code == 0, out
    new = f"default-{head[:7]}"
    assert f"--restart: campaign {new} at HEAD; default and its ledger stay" in out
    assert campaigns(target) == {"default": start, new: head}
    store = open_store(default_url(target))
    try:
        assert store.get_incumbent("default").sha == start  # the old ledger, untouched
        assert [c.title for c in store.list_candidates(new)] == ["LR 1.9"]
        assert store.list_trials(new) and not store.list_trials("default")
    finally:
        store.close()
