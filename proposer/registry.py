"""Proposer backends by `[proposer] kind`: the one place a new backend is registered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from farm.config import ProposerConfig
from farm.errors import ConfigError
from proposer.anthropic import AnthropicProposer, read_api_key
from proposer.base import Proposer
from proposer.hybrid import HybridProposer
from proposer.mutate import MutateProposer
from proposer.optuna import OptunaProposer
from proposer.replay import ReplayProposer


def _replay(cfg: ProposerConfig, target: Path) -> Proposer:
    if not cfg.replay_file:
        raise ConfigError(
            'proposer.replay_file: kind = "replay" needs a JSONL file of drafts, '
            "relative to the target directory"
        )
    return ReplayProposer(target / cfg.replay_file)


def _anthropic(cfg: ProposerConfig, target: Path) -> Proposer:
    return AnthropicProposer(cfg, api_key=read_api_key(cfg, target))


def _hybrid(cfg: ProposerConfig, target: Path) -> Proposer:
    return HybridProposer(cfg, api_key=read_api_key(cfg, target))


# kind -> factory(config, target directory).
KINDS: dict[str, Callable[[ProposerConfig, Path], Proposer]] = {
    "mutate": lambda cfg, target: MutateProposer(seed=cfg.seed),
    "replay": _replay,
    "anthropic": _anthropic,
    "optuna": lambda cfg, target: OptunaProposer(cfg.params, seed=cfg.seed),
    "hybrid": _hybrid,
}


def make_proposer(cfg: ProposerConfig, *, target: Path) -> Proposer:
    """The backend `cfg.kind` names. Raises ConfigError for an unknown kind or a bad setting."""
    factory = KINDS.get(cfg.kind)
    if factory is None:
        raise ConfigError(
            f"proposer.kind = {cfg.kind!r} is not a known proposer (known: {', '.join(KINDS)})"
        )
    return factory(cfg, target)
