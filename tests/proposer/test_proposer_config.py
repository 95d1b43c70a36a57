from __future__ import annotations

import tomllib

import pytest

from farm.config import ParamConfig, TargetConfig, config_from_dict
from farm.errors import ConfigError

BASE = 'editable = ["train.py"]\ncommand = "python train.py"\nmetric = "loss"\n'


def load(toml: str) -> TargetConfig:
    return config_from_dict(tomllib.loads(BASE + toml), source="farm.toml")


def test_params_tables_and_prices_are_read() -> None:
    cfg = load(
        '[proposer]\nkind = "optuna"\n'
        '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 1e-4\nhigh = 1e-1\nlog = true\n'
        '[[proposer.params]]\nfile = "train.py"\nname = "DEPTH"\nlow = 2\nhigh = 8\nint = true\n'
        '[proposer.prices."claude-next"]\n'
        "input = 1\noutput = 2\ncache_write = 1.25\ncache_read = 0.1\n"
    )
    assert cfg.proposer.params == [
        ParamConfig("train.py", "LR", 1e-4, 1e-1, log=True),
        ParamConfig("train.py", "DEPTH", 2.0, 8.0, int=True),
    ]
    assert cfg.proposer.prices["claude-next"].cache_read == 0.1
    assert cfg.proposer.temperature is None and cfg.proposer.strategy == "single"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 1\n',
            "farm.toml: [proposer.params #1] high: missing; write high = ",
        ),
        (
            '[[proposer.params]]\nfile = "eval.py"\nname = "LR"\nlow = 1\nhigh = 2\n',
            "farm.toml: [proposer.params #1] file: 'eval.py' is not editable",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "2lr"\nlow = 1\nhigh = 2\n',
            "farm.toml: [proposer.params #1] name: '2lr': write a knob name",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 0\nhigh = 2\nlog = true\n',
            "farm.toml: [proposer.params #1] log: a log scale needs low > 0",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 0\nhigh = 2\nsize = 3\n',
            "farm.toml: [proposer.params #1] size: unknown key",
        ),
        (
            '[proposer]\nstrategy = "greedy"\n',
            'farm.toml: [proposer] strategy: "greedy" is not a choice; write one of "single", '
            '"focused", "mix"',
        ),
        (
            "[proposer]\ntemperature = 1.5\n",
            "farm.toml: [proposer] temperature: 1.5 is out of range; write a number >= 0 and <= 1",
        ),
        (
            '[proposer]\nstrategy = "focused"\nfocuses = []\n',
            'farm.toml: [proposer] focuses: strategy "focused" needs at least one',
        ),
        ("[proposer.prices.m]\ninput = 1\n", "farm.toml: [proposer.prices.m] output: missing"),
    ],
)
def test_bad_proposer_settings_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(toml)
    assert message in str(e.value)
