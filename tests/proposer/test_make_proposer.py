from __future__ import annotations

from pathlib import Path

import pytest

from farm.config import ProposerConfig
from farm.errors import ConfigError
from proposer.mutate import MutateProposer
from proposer.registry import make_proposer
from proposer.replay import ReplayProposer


def test_mutate_kind_gets_the_configured_seed(tmp_path: Path) -> None:
    proposer = make_proposer(ProposerConfig(kind="mutate", seed=7), target=tmp_path)
    assert isinstance(proposer, MutateProposer)
    assert proposer.seed == 7


def test_replay_file_resolves_relative_to_the_target(tmp_path: Path) -> None:
    (tmp_path / "ideas").mkdir()
    draft = '{"title": "t", "edits": [{"path": "train.py", "search": "a", "replace": "b"}]}'
    (tmp_path / "ideas" / "d.jsonl").write_text(draft + "\n")
    proposer = make_proposer(
        ProposerConfig(kind="replay", replay_file="ideas/d.jsonl"), target=tmp_path
    )
    assert isinstance(proposer, ReplayProposer)
    assert proposer.path == tmp_path / "ideas" / "d.jsonl"


def test_replay_without_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"proposer\.replay_file"):
        make_proposer(ProposerConfig(kind="replay"), target=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        make_proposer(ProposerConfig(kind="replay", replay_file="missing.jsonl"), target=tmp_path)


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"'gpt' is not a known proposer \(known: mutate, replay, anthropic, optuna, hybrid\)",
    ):
        make_proposer(ProposerConfig(kind="gpt"), target=tmp_path)
