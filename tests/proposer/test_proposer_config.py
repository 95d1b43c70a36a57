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
            "proposer.params[0].high",
        ),
        (
            '[[proposer.params]]\nfile = "eval.py"\nname = "LR"\nlow = 1\nhigh = 2\n',
            "params[0].file",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "2lr"\nlow = 1\nhigh = 2\n',
            "params[0].name",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 0\nhigh = 2\nlog = true\n',
            "params[0].log",
        ),
        (
            '[[proposer.params]]\nfile = "train.py"\nname = "LR"\nlow = 0\nhigh = 2\nsize = 3\n',
            "proposer.params[0].size",
        ),
        ('[proposer]\nstrategy = "greedy"\n', "proposer.strategy"),
        ("[proposer]\ntemperature = 1.5\n", "proposer.temperature"),
        ('[proposer]\nstrategy = "focused"\nfocuses = []\n', "proposer.focuses"),
        ("[proposer.prices.m]\ninput = 1\n", "proposer.prices.m.output"),
    ],
)
def test_bad_proposer_settings_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(toml)
