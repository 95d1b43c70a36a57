"""The protocol is protected even inside the editable file: real campaigns (strict mode)
on a target whose validation settings live in train.py, with `frozen` set in farm.toml.
No draft that changes a frozen name reaches a trial, whichever proposer wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Finished, git, run_to_end

from farm.records import CandidateState
from proposer.validate import frozen_problem

# The loss is lowest at LR = 2; a shorter validation window or no purge "improves" it too,
# by measuring less: exactly what a proposer must not be allowed to find.
TRAIN = """\
import os
import random
from dataclasses import dataclass

LR = 0.5
EVAL_DAYS = 30  # the held-out window


@dataclass
class ValidationConfig:
    n_folds: int = 5
    purge: int = 10


cfg = ValidationConfig()
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
leak = 0.05 * (30 - EVAL_DAYS) + 0.05 * (10 - cfg.purge) + 0.1 * (5 - cfg.n_folds)
loss = (LR - 2.0) ** 2 + rng.gauss(0, 0.05) - leak
print("---")
print(f"loss: {loss:.6f}")
"""
TOML = """\
editable = ["train.py"]
command = "python3 train.py"
metric = "loss"
budget_s = 30
frozen = ["ValidationConfig", "EVAL_*"]

[merge]
repeats = 2
confirm = 0

[sandbox]
isolation = "strict"

[proposer]
kind = "{kind}"
replay_file = "drafts.jsonl"
"""
FROZEN = ["ValidationConfig", "EVAL_*"]


def _edit(title: str, search: str, replace: str) -> str:
    edit = {"path": "train.py", "search": search, "replace": replace}
    return json.dumps({"title": title, "hypothesis": title, "edits": [edit]}) + "\n"


DRAFTS = [
    ("shorter window", "EVAL_DAYS = 30", "EVAL_DAYS = 5"),
    ("no purge", "purge: int = 10", "purge: int = 0"),
    ("fewer folds, set late", "cfg = ValidationConfig()", "cfg = ValidationConfig(n_folds=2)"),
    ("patched class", "rng = random", "ValidationConfig.purge = 0\nrng = random"),
    ("LR 1.9", "LR = 0.5", "LR = 1.9"),
]


def _campaign(root: Path, kind: str, max_candidates: int | None) -> Finished:
    target = root / kind
    target.mkdir()
    (target / "train.py").write_text(TRAIN)
    (target / "farm.toml").write_text(TOML.format(kind=kind))
    git(target, "init", "-q", "-b", "main")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "baseline")
    (target / "drafts.jsonl").write_text("".join(_edit(*d) for d in DRAFTS))
    return run_to_end(target, slots=2, max_candidates=max_candidates)


def _tried(done: Finished) -> list[int]:
    """The candidates that reached a trial."""
    return sorted(
        {t.candidate_id for t in done.store.list_trials("default") if t.candidate_id is not None}
    )


@pytest.mark.parametrize(("kind", "max_candidates"), [("replay", None), ("mutate", 6)])
def test_no_draft_touching_a_frozen_name_reaches_a_trial(
    ray_local: None, tmp_path: Path, kind: str, max_candidates: int | None
) -> None:
    done = _campaign(tmp_path, kind, max_candidates)
    assert done.code == 0, done.output
    cands = {c.id: c for c in done.store.list_candidates("default")}
    assert cands and _tried(done)
    for cid in _tried(done):
        files = cands[cid].files
        assert frozen_problem("train.py", TRAIN, files["train.py"], FROZEN) == "", cands[cid]
    if kind == "replay":
        by_title = {c.title: c for c in cands.values()}
        for title, named in [
            ("shorter window", "EVAL_DAYS"),
            ("no purge", "ValidationConfig.purge"),
            ("fewer folds, set late", "ValidationConfig.n_folds"),
            ("patched class", "ValidationConfig.purge"),
        ]:
            cand = by_title[title]
            assert cand.state is CandidateState.REJECTED
            reason = done.store.get_decision("default", cand.id).reason
            assert named in reason and "frozen in farm.toml" in reason, reason
        assert by_title["LR 1.9"].state is CandidateState.KEPT
        assert _tried(done) == [by_title["LR 1.9"].id]
    done.store.close()
