"""A small autoresearch-style train.py and a proposal context around it."""

from __future__ import annotations

import pytest

from farm.records import Direction
from proposer.base import ProposalContext

TRAIN_PY = '''"""Tiny GPT. EDITABLE: the file the agent changes; prepare.py is fixed."""

import math

# Hyperparameters
LEARNING_RATE = 3e-4  # AdamW peak LR
WEIGHT_DECAY = 0.1  # on matrices only
BATCH_SIZE = 64  # sequences per step
DEPTH = 4  # transformer blocks
LOGIT_SCALE_MAX = 0.5  # clamp on the log-temperature
TOTAL_TOKENS = 2_000_000  # training budget in tokens
EVAL_EVERY: int = 50  # steps between evaluations
USE_BIAS = False  # a switch, not a number
SEED_OFFSET = 0  # a sentinel, not a hyperparameter
DATA_DIR = "data"
VOCAB_SIZE = 8192  # farm: frozen (must match prepare.py)


def lr_at(step):
    warmup = 10  # a local, not a hyperparameter
    return LEARNING_RATE * min(1.0, step / warmup) * math.cos(0.0)


print(f"val_bpb: {lr_at(1):.4f}")
'''

_CONSTANTS = {
    "LEARNING_RATE",
    "WEIGHT_DECAY",
    "BATCH_SIZE",
    "DEPTH",
    "LOGIT_SCALE_MAX",
    "TOTAL_TOKENS",
    "EVAL_EVERY",
}


@pytest.fixture
def train_py() -> str:
    return TRAIN_PY


@pytest.fixture
def constants() -> set[str]:
    """The hyperparameters MutateProposer may change in train_py."""
    return set(_CONSTANTS)


@pytest.fixture
def ctx() -> ProposalContext:
    return ProposalContext(
        campaign="test",
        program="Lower val_bpb.",
        files={"train.py": TRAIN_PY},
        editable=["train.py"],
        metric="val_bpb",
        direction=Direction.MINIMIZE,
    )
