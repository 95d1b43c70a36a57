"""[sandbox], `evaluate` and `bounds` in farm.toml: bad values name the key and the file."""

from __future__ import annotations

import pytest
from helpers import TOY_TOML, MakeTarget, farm

from farm.config import config_from_dict


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            '[sandbox]\nisolation = "paranoid"\n',
            '[sandbox] isolation: "paranoid" is not a choice; write one of "auto", "strict"',
        ),
        (
            '[sandbox]\nread_only_paths = ["data"]\n',
            "[sandbox] read_only_paths: 'data': write an absolute path",
        ),
        ("bounds = [5, 1]\n", "bounds: [5.0, 1.0]: write [lowest, highest]"),
        ("bounds = [1]\n", "bounds: [1.0]: write [lowest, highest]"),
        ("evaluate_budget_s = 30\n", "evaluate_budget_s: set `evaluate` too"),
        ('artifacts = ["model.pt"]\n', "artifacts: set `evaluate` too"),
        (
            'evaluate = "python3 e.py"\nartifacts = ["../model.pt"]\n',
            "artifacts: '../model.pt' must be a relative path",
        ),
        ('frozen = ["EVAL DAYS"]\n', "frozen: 'EVAL DAYS': give a name, a dotted path"),
    ],
)
def test_sandbox_settings_errors_name_the_key(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    # Top-level keys go before the tables of the file.
    toml = TOY_TOML + extra if extra.startswith("[") else extra + TOY_TOML
    target = make_target(toml=toml)
    code, out = farm(capsys, "run", str(target))
    assert code == 2
    assert message in out and str(target / "farm.toml") in out


def test_sandbox_defaults_are_auto_isolation_and_a_fair_memory_share() -> None:
    cfg = config_from_dict(
        {"editable": ["train.py"], "command": "python train.py", "metric": "loss"}, source="t"
    )
    assert (cfg.sandbox.isolation, cfg.sandbox.memory_mb, cfg.evaluate, cfg.bounds) == (
        "auto",
        0,
        "",
        [],
    )


def test_trials_get_a_share_of_the_node_memory_by_default(ray_local: None) -> None:
    import ray

    from farm.dispatch import fitting_nodes, trial_memory_mb

    cfg = config_from_dict(
        {"editable": ["train.py"], "command": "python train.py", "metric": "loss"}, source="t"
    )
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    per_node = fitting_nodes(cfg)[node["NodeID"]]
    assert trial_memory_mb(cfg) == int(node["Resources"]["memory"] / per_node // 2**20)
    cfg.sandbox.memory_mb = 123
    assert trial_memory_mb(cfg) == 123


def test_a_sandbox_a_node_cannot_give_is_refused_with_the_nodes_reason(ray_local: None) -> None:
    from farm.dispatch import sandbox_policy
    from workers.isolation import SandboxError

    cfg = config_from_dict(
        {"editable": ["train.py"], "command": "python train.py", "metric": "loss"}, source="t"
    )
    assert sandbox_policy(cfg).isolation == "strict"  # scripts/test.sh installs bubblewrap
    cfg.sandbox.network = "none"  # past the config check: as a node would refuse it
    with pytest.raises(SandboxError, match="network = 'none'"):
        sandbox_policy(cfg)
