# ruff: noqa: E501
# (the tables of messages read best one case a line)
"""farm.toml's schema: each bad value named by file and key with what to write, unknown keys
refused, choices as enums, the merge rule's z-values set by error rates (today's exactly by
default), old files with z keys still loading, stored snapshots read back, and the docs and
`farm init`'s template generated from the same declarations."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from helpers import MakeTarget

from farm.config import (
    IsolationSetting,
    MergeConfig,
    Network,
    ProposerKind,
    Schedule,
    Strategy,
    TargetConfig,
    config_from_dict,
    init_template,
    load_config,
    reference,
    stored_config,
)
from farm.errors import ConfigError
from farm.records import Direction
from farm.schema import Tier, keys, rate_of, z_of

BASE = 'editable = ["train.py"]\ncommand = "python train.py"\nmetric = "loss"\nbudget_s = 60\n'
ROOT = Path(__file__).resolve().parents[2]

# The tables `farm init` wrote before the schema (copies of the defaults then).
OLD_INIT_TABLES = """\
[sandbox]
isolation = "auto"  # strict (bubblewrap) where it works, else basic; "strict" insists

[merge]
repeats = 12     # baseline runs that estimate seed noise σ (3 if the first 3 agree)
confirm = 4      # re-runs a candidate may get, one at a time, before it is decided
min_delta = 0.0  # smallest improvement worth keeping, in metric units
min_rel_delta = 0.0001  # ... relative to the metric (judges a deterministic target)
z = 1.5          # keep only improvements beyond z standard errors
screen_z = 0.25  # a screening run earns its confirmations beyond screen_z standard errors
futility_z = 0.0  # after a confirmation: discard below futility_z standard errors,
efficacy_z = 2.5  # keep beyond efficacy_z (two or more); else one more run
preflight_s = 0  # > 0: a run this short first; a crash or NaN in it never takes a full budget
screen_budget_s = 0  # > 0: screen new candidates this short (the target reads FARM_BUDGET_S);
promote = 0.33       # ... the best third go on to a full budget, until short and full budgets
min_rank_agreement = 0.3  # rank candidates apart (Kendall's τ below this over rank_pairs)

[resources]
cpus_per_trial = 1
gpus_per_trial = 0  # 1 on a GPU cluster

[proposer]
kind = "mutate"  # mutate | replay | optuna | anthropic
batch_size = 4
backlog = 4        # `farm simulate` tells which batch_size and backlog keep N slots busy
schedule = "backlog"  # or "rounds": wait for each batch to be decided (to compare against)
"""


def load(toml: str) -> TargetConfig:
    return config_from_dict(tomllib.loads(BASE + toml), source="/t/farm.toml")


def refused(toml: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(toml)
    return str(e.value)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[merge]\nrepeats = 1\n", "[merge] repeats: 1 is out of range; write a whole number >= 2"),
        ("[merge]\nrepeats = 2.5\n", "[merge] repeats: 2.5 is not a whole number; write a whole"),
        ("[merge]\nconfirm = -1\n", "[merge] confirm: -1 is out of range; write a whole number >= 0"),
        ("[merge]\nmin_delta = -0.1\n", "[merge] min_delta: -0.1 is out of range; write a number >= 0"),
        ("[merge]\nmin_rel_delta = -1\n", "[merge] min_rel_delta: -1 is out of range; write a number >= 0 and < 1"),
        ("[merge]\nefficacy_z = -5\n", "[merge] efficacy_z: -5 is out of range; write a number >= 0"),
        ("[merge]\npaired_z = -1\n", "[merge] paired_z: -1 is out of range; write a number >= 0"),
        ("[merge]\nz = -1\n", "[merge] z: -1 is out of range; write a number >= 0"),
        ("[merge]\nfutility_z = 3\n", "[merge] futility_z: 3 would discard every candidate not kept early; write less than efficacy_z (2.25)"),
        ("[merge]\nalpha = 0\n", "[merge] alpha: 0 is not an error rate; write a number > 0 and <= 0.5"),
        ("[merge]\nscreen_alpha = 0.9\n", "[merge] screen_alpha: 0.9 is not an error rate"),
        ('[merge]\nalpha = "5%"\n', '[merge] alpha: "5%" is not an error rate'),
        ("[merge]\npaired = 1\n", "[merge] paired: 1 is not a boolean; write a boolean"),
        ("[resources]\ngpus_per_trial = -1\n", "[resources] gpus_per_trial: -1 is out of range"),
        ("[resources.custom]\nrtx = -1\n", "[resources] custom.rtx: -1 is out of range"),
        ("[proposer]\nbatch_size = 0\n", "[proposer] batch_size: 0 is out of range; write a whole number >= 1"),
        ("[proposer]\ntimeout_s = 0\n", "[proposer] timeout_s: 0 is out of range; write a number > 0 (per API request, in s)"),
        ("[proposer]\nspend_cap_usd = -1\n", "[proposer] spend_cap_usd: -1 is out of range"),
        ("[proposer]\nfocuses = [1]\n", "[proposer] focuses[0]: 1 is not a string"),
        ('[proposer.prices.m]\ninput = 1\noutput = 1\ncache_write = 1\ncache_read = -1\n', "[proposer.prices.m] cache_read: -1 is out of range"),
        ("[sandbox]\noutput_cap_kb = 0\n", "[sandbox] output_cap_kb: 0 is out of range"),
        ("[metrics.hour_usd]\ncpu = -2\n", "[metrics] hour_usd.cpu: -2 is out of range"),
        ('[metrics]\naddress = "nowhere"\n', "[metrics] address: 'nowhere' is not host:port"),
        ("[merge]\nrepeats = inf\n", "[merge] repeats: inf is not a whole number"),
        ("[merge]\nmin_delta = nan\n", "[merge] min_delta: nan is not a number"),
        ("merge = 3\n", "[merge]: not a table"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_file_the_key_and_what_to_write(toml: str, message: str) -> None:
    said = refused(toml)
    assert said.startswith("/t/farm.toml: "), said
    assert message in said
    assert "write" in said


def test_a_range_is_checked_at_its_bounds() -> None:
    assert load("[merge]\nrepeats = 2\nconfirm = 0\npromote = 1\n").merge.promote == 1
    assert load("[merge]\nmin_rank_agreement = -1\n").merge.min_rank_agreement == -1
    assert load("[proposer]\ntemperature = 0\n").proposer.temperature == 0
    assert "promote: 0 is out of range" in refused("[merge]\npromote = 0\n")
    assert "promote: 1.01 is out of range" in refused("[merge]\npromote = 1.01\n")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("retries = 3\n", "/t/farm.toml: retries: unknown key; write one of "),
        ("[merge]\nrepeat = 3\n", "[merge] repeat: unknown key; did you mean 'repeats'?"),
        ("repeats = 3\n", "repeats: unknown key; it belongs under [merge], not here"),
        ("[merge]\nbudget_s = 3\n", "[merge] budget_s: unknown key"),
        ("[gpu]\ncount = 1\n", "gpu: unknown key"),
        ("[[proposer.params]]\nfile = 'train.py'\nname = 'LR'\nlow = 1\nhigh = 2\nstep = 1\n",
         "[proposer.params #1] step: unknown key"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_refused_with_the_known_ones(toml: str, message: str) -> None:
    assert message in refused(toml)


@pytest.mark.parametrize(
    ("section", "key", "enum"),
    [
        ("", "direction", Direction),
        ("proposer", "kind", ProposerKind),
        ("proposer", "schedule", Schedule),
        ("proposer", "strategy", Strategy),
        ("sandbox", "isolation", IsolationSetting),
        ("sandbox", "network", Network),
    ],
)
def test_every_choice_loads_as_its_enum_and_any_other_is_refused(
    section: str, key: str, enum: type
) -> None:
    def toml(value: str) -> str:
        focuses = 'focuses = ["speed"]\n' if key == "strategy" else ""
        return f"[{section}]\n{key} = {value}\n{focuses}" if section else f"{key} = {value}\n"

    for choice in enum:
        cfg = load(toml(f'"{choice.value}"'))
        got = getattr(getattr(cfg, section) if section else cfg, key)
        assert got is choice
    said = refused(toml('"other"'))
    where = f"[{section}] {key}" if section else key
    every = ", ".join(f'"{c.value}"' for c in enum)
    assert f'{where}: "other" is not a choice; write one of {every}' in said


def test_the_default_error_rates_give_todays_z_values_exactly() -> None:
    m = MergeConfig()
    zs = (m.z, m.screen_z, m.futility_z, m.efficacy_z, m.power_z, m.paired_z)
    assert zs == (1.55, 0.35, 0.0, 2.25, 1.1, 1.5)
    assert load("").merge == m
    rates = {"alpha": 1.55, "screen_alpha": 0.35, "efficacy_alpha": 2.25, "beta": 1.1}
    rates["paired_alpha"] = 1.5
    written = "".join(f"{k} = {rate_of(z)!r}\n" for k, z in rates.items())
    assert load("[merge]\n" + written).merge == m
    # The defaults as the docs show them (6 significant figures) are today's z to 4 decimals.
    assert round(z_of(0.0605708), 4) == 1.55 and round(z_of(0.0122245), 4) == 2.25


@pytest.mark.parametrize(
    ("rate", "value", "field", "z"),
    [
        ("alpha", 0.05, "z", 1.644854),
        ("alpha", 0.5, "z", 0.0),
        ("screen_alpha", 0.5, "screen_z", 0.0),
        ("efficacy_alpha", 0.001, "efficacy_z", 3.090232),
        ("paired_alpha", 0.025, "paired_z", 1.959964),
    ],
)
def test_an_error_rate_sets_its_z_value(rate: str, value: float, field: str, z: float) -> None:
    m = load(f"[merge]\n{rate} = {value}\n").merge
    assert getattr(m, field) == z
    assert stored_config(load(f"[merge]\n{rate} = {value}\n").to_dict()).merge == m


def test_an_old_farm_toml_with_z_keys_loads_as_before() -> None:
    old = load(OLD_INIT_TABLES)
    # It wrote batch_size and backlog out at 4: kept as written (unset, they are sized).
    assert (old.proposer.batch_size, old.proposer.backlog) == (4, 4)
    old.proposer.batch_size = old.proposer.backlog = None
    # Its values were the defaults then, and stay as written where the defaults moved since.
    assert (old.merge.z, old.merge.efficacy_z, old.merge.repeats, old.merge.screen_z) == (
        1.5,
        2.5,
        12,
        0.25,
    )
    now = MergeConfig()
    old.merge.z, old.merge.efficacy_z = now.z, now.efficacy_z
    old.merge.repeats, old.merge.screen_z = now.repeats, now.screen_z
    assert old == load("")
    m = load("[merge]\nz = 2\nscreen_z = 0\nfutility_z = -1\nefficacy_z = 3\npaired_z = 1\n").merge
    assert (m.z, m.screen_z, m.futility_z, m.efficacy_z, m.paired_z) == (2, 0, -1, 3, 1)


def test_a_z_and_its_error_rate_together_are_refused() -> None:
    said = refused("[merge]\nalpha = 0.05\nz = 1.5\n")
    assert "/t/farm.toml: [merge] z: set by alpha too; keep one" in said


def test_every_shipped_farm_toml_loads() -> None:
    for name in ("examples/eclip/farm.toml", "k8s/eclip.farm.toml", "docker/eclip.farm.toml"):
        path = ROOT / name
        config_from_dict(tomllib.loads(path.read_text()), source=str(path))


def test_a_stored_snapshot_reads_back_typed_with_defaults_for_what_it_lacks() -> None:
    cfg = load('direction = "maximize"\n[merge]\nconfirm = 2\n[proposer]\nkind = "optuna"\n')
    snap = cfg.to_dict()
    assert snap["direction"] == "maximize" and snap["proposer"]["kind"] == "optuna"
    assert stored_config(snap) == cfg
    # An older farm stored fewer keys (and some this one dropped): defaults fill the gaps.
    old = {
        "editable": ["train.py"],
        "command": "python train.py",
        "metric": "loss",
        "direction": "maximize",
        "retired": 1,
        "merge": {"repeats": 5, "z": 2.0, "retired_z": 3},
    }
    back = stored_config(old)
    assert back.direction is Direction.MAXIMIZE
    assert (back.merge.repeats, back.merge.z, back.merge.confirm) == (5, 2.0, 4)
    assert back.budget_s == 300 and back.proposer.kind is ProposerKind.MUTATE


def test_init_template_sets_nothing_and_lists_the_keys_a_user_sets() -> None:
    text = init_template()
    assert tomllib.loads(text) == {}
    for k in keys(TargetConfig):
        listed = f"# {k.name} = " in text
        assert listed == (k.spec.tier is Tier.INIT), k.name
    assert "# [merge]\n# repeats = 24" in text and "# alpha = 0.0605708" in text


def test_every_key_has_its_help_and_the_rates_have_their_z() -> None:
    for k in keys(TargetConfig):
        assert k.spec.doc, k
    rated = {k.name: k.spec.rate.key for k in keys(TargetConfig) if k.spec.rate}
    assert rated == {
        "z": "alpha",
        "screen_z": "screen_alpha",
        "efficacy_z": "efficacy_alpha",
        "power_z": "beta",
        "paired_z": "paired_alpha",
    }


def test_docs_config_md_is_the_schema() -> None:
    docs = (ROOT / "docs/config.md").read_text()
    assert docs == reference(), "regenerate: python -m farm.config > docs/config.md"
    assert "z = Φ⁻¹(1 − rate)" in docs


def test_the_roles_that_take_a_choice_know_the_same_choices() -> None:
    from proposer.registry import KINDS
    from workers.isolation import ISOLATION_SETTINGS, NETWORK_MODES

    assert set(KINDS) == set(ProposerKind)
    assert set(ISOLATION_SETTINGS) == set(IsolationSetting)
    assert set(NETWORK_MODES) == set(Network)


def test_a_target_that_reads_farm_budget_s_screens_short_unless_told_otherwise(
    make_target: MakeTarget,
) -> None:
    reads = 'import os\nBUDGET = float(os.environ["FARM_BUDGET_S"])\nprint("loss: 1.0")\n'
    target = make_target({"train.py": reads})
    assert load_config(target).merge.screen_budget_s == 7.5  # a quarter of budget_s = 30
    told = make_target(
        {"train.py": reads}, extra_toml="[merge]\nscreen_budget_s = 0\n", name="told"
    )
    assert load_config(told).merge.screen_budget_s == 0
    blind = make_target({"train.py": 'print("loss: 1.0")\n'}, name="blind")
    assert load_config(blind).merge.screen_budget_s == 0
