"""Bad input is refused before the campaign starts, with a message that says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TOY_TOML, MakeTarget, farm, git


def test_a_directory_that_is_not_a_git_repo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "farm.toml").write_text(TOY_TOML)
    (tmp_path / "train.py").write_text("print('loss: 1')\n")
    code, out = farm(capsys, "run", str(tmp_path))
    assert code == 2
    assert "is not a git repository" in out and "git init" in out


def test_uncommitted_changes_to_an_editable_file(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target()
    (target / "train.py").write_text("LR = 3\n")
    code, out = farm(capsys, "run", str(target))
    assert code == 2
    assert "uncommitted changes in train.py" in out and "commit" in out


def test_a_run_command_that_does_not_exist(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target(toml=TOY_TOML.replace("python3 train.py", "pythn3 train.py"))
    code, out = farm(capsys, "run", str(target))
    assert code == 2
    assert "'pythn3' is not on PATH" in out and "command" in out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (TOY_TOML + "learning_rate = 3\n", "learning_rate: unknown key; write one of"),
        (
            TOY_TOML.replace("budget_s = 30", 'budget_s = "soon"'),
            'budget_s: "soon" is not a number; write a number',
        ),
        (
            TOY_TOML + 'direction = "down"\n',
            'direction: "down" is not a choice; write one of "minimize", "maximize"',
        ),
        (TOY_TOML + "[merge]\nrepeats = 1\n", "[merge] repeats: 1 is out of range; write a whole"),
        (TOY_TOML + "[merge]\nconfdence = 2\n", "[merge] confdence: unknown key"),
        (TOY_TOML + "[merge]\nmax_rebases = -1\n", "[merge] max_rebases: -1 is out of range"),
        (
            TOY_TOML + "[merge]\npreflight_s = 30\n",
            "[merge] preflight_s: 30: write 0 (none) or fewer",
        ),
        (
            TOY_TOML + "[merge]\nscreen_budget_s = 45\n",
            "[merge] screen_budget_s: 45: write 0 (screen at the full budget) or fewer seconds",
        ),
        (
            TOY_TOML + "[merge]\npromote = 0\n",
            "[merge] promote: 0 is out of range; write a number > 0",
        ),
        (
            TOY_TOML + "[merge]\nmin_rank_agreement = 2\n",
            "[merge] min_rank_agreement: 2 is out of range; write a number >= -1 and <= 1",
        ),
        (
            TOY_TOML + '[proposer]\nschedule = "eager"\n',
            '[proposer] schedule: "eager" is not a choice; write one of "backlog", "rounds"',
        ),
        (TOY_TOML.replace('metric = "loss"\n', ""), "metric: missing; write metric = "),
        (TOY_TOML.replace('"prepare.py"', '"train.py"'), "is also editable"),
        (TOY_TOML.replace('["train.py"]', '["../train.py"]'), "write a relative path inside"),
        (TOY_TOML + 'metric_regex = "loss=(\\\\d+"\n', "metric_regex: not a valid regex"),
        (
            TOY_TOML + "[proposer]\nkind = 'gpt'\n",
            '[proposer] kind: "gpt" is not a choice; write one of "mutate", "replay"',
        ),
        ("editable = [", "not valid TOML"),
    ],
)
def test_farm_toml_errors_name_the_key_and_the_file(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    target = make_target(toml=toml)
    code, out = farm(capsys, "run", str(target))
    assert code == 2
    assert message in out
    assert str(target / "farm.toml") in out


def test_a_missing_farm_toml_points_at_farm_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = farm(capsys, "run", str(tmp_path))
    assert code == 2
    assert "farm init" in out


def test_a_metric_never_printed_stops_at_the_baseline(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], ray_local: None
) -> None:
    target = make_target(toml=TOY_TOML.replace('metric = "loss"', 'metric = "val_loss"'))
    code, out = farm(capsys, "run", str(target), "--max-candidates", "2")
    assert code == 2
    assert "the baseline did not run" in out
    assert "printed no `val_loss: <value>` line" in out
    assert "loss: " in out  # the output tail shows what it did print


def test_resuming_with_a_different_metric_is_refused(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str], ray_local: None
) -> None:
    target = make_target()
    assert farm(capsys, "run", str(target), "--max-candidates", "1")[0] == 0
    (target / "farm.toml").write_text(TOY_TOML.replace("loss", "val_loss"))
    git(target, "commit", "-qam", "new metric")
    code, out = farm(capsys, "run", str(target))
    assert code == 2
    assert "metric differs from what campaign 'default' started with" in out
    assert "--campaign" in out
