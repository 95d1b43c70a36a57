"""The score measured, not claimed: a protected `evaluate` command reads what training left."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.records import Outcome, TrialResult, TrialSpec
from workers.materialize import hash_files, make_bundle
from workers.trial import EVALUATE_RULE, run_trial

TRAIN = """\
import pathlib
WEIGHT = 0.4
pathlib.Path("model.txt").write_text(str(WEIGHT))
print("val_bpb: 0.0001")  # a claim: ignored when `evaluate` is set
"""
EVALUATE = """\
# PROTECTED: reads what training left, prints the metric.
import os, pathlib, sys
weight = float(pathlib.Path("model.txt").read_text())
print("train.py as committed:", "# rewritten" not in pathlib.Path("train.py").read_text())
print("bytecode left:", os.path.exists("__pycache__"))
try:
    pathlib.Path("written-by-evaluate").write_text("x")
except OSError as e:
    print("write:", e.strerror)
print(f"val_bpb: {2 * weight:.4f}")
"""


@pytest.fixture
def evaluated(tmp_path: Path, make_spec, run_git) -> Callable[..., TrialResult]:
    """Run a trial of a target whose protected evaluate.py measures training's model.txt."""
    repo = tmp_path / "evaluated"
    repo.mkdir()
    run_git(repo, "init", "--quiet")
    (repo / "train.py").write_text(TRAIN)
    (repo / "evaluate.py").write_text(EVALUATE)
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "--quiet", "-m", "base")
    sha = run_git(repo, "rev-parse", "HEAD")
    bundle = make_bundle(repo, sha)

    def run(train: str = TRAIN, **overrides: object) -> TrialResult:
        fields: dict[str, object] = {
            "repo_key": "evaluated",
            "base_sha": sha,
            "files": {"train.py": train},
            "evaluate": f"{sys.executable} evaluate.py",
            "protected_hashes": hash_files(repo, ["evaluate.py"]),
        }
        fields.update(overrides)
        spec: TrialSpec = make_spec(**fields)
        return run_trial(spec, bundle, cache_dir=tmp_path / "cache")

    return run


@pytest.mark.parametrize("isolation", ["strict", "basic"])
def test_the_metric_comes_from_evaluate_alone(evaluated, isolation: str) -> None:
    result = evaluated(isolation=isolation)
    assert (result.outcome, result.metric) == (Outcome.OK, 0.8)
    assert EVALUATE_RULE in result.output_tail
    assert "val_bpb: 0.0001" in result.output_tail.split(EVALUATE_RULE)[0]
    assert "train.py as committed: True" in result.output_tail
    assert "bytecode left: False" in result.output_tail


def test_evaluate_sees_the_trial_read_only(evaluated) -> None:
    result = evaluated(isolation="strict")
    assert "write: Read-only file system" in result.output_tail


def test_training_rewriting_its_own_code_does_not_reach_the_evaluator(evaluated) -> None:
    train = TRAIN + 'open("train.py", "a").write("\\n# re" + "written\\n")\n'
    result = evaluated(train)
    assert "train.py as committed: True" in result.output_tail
    assert result.metric == 0.8


@pytest.mark.parametrize("planted", ["pathlib.py", "sitecustomize.py", "pkg/__init__.py"])
def test_code_left_beside_the_evaluator_is_tampering(evaluated, planted: str) -> None:
    train = TRAIN + (
        "import os\n"
        f"os.makedirs(os.path.dirname({planted!r}) or '.', exist_ok=True)\n"
        f"open({planted!r}, 'w').write('print(\"val_bpb: 0.0001\")')\n"
    )
    result = evaluated(train)
    assert (result.outcome, result.metric) == (Outcome.TAMPERED, None)
    assert f"the run left code beside the evaluator: {planted}" in result.output_tail
    assert EVALUATE_RULE not in result.output_tail


def test_a_failed_training_run_is_never_evaluated(evaluated) -> None:
    result = evaluated(TRAIN + "raise SystemExit(4)\n")
    assert (result.outcome, result.exit_code) == (Outcome.CRASHED, 4)
    assert EVALUATE_RULE not in result.output_tail


def test_an_evaluator_that_fails_or_prints_no_metric_is_said_so(evaluated) -> None:
    no_model = "print('trained nothing')\n"
    result = evaluated(no_model)
    assert result.outcome is Outcome.CRASHED
    assert "FileNotFoundError" in result.output_tail
    silent = evaluated(evaluate=f"{sys.executable} -c 'print(1)'")
    assert silent.outcome is Outcome.NO_METRIC


def test_restoring_committed_files_never_writes_through_a_planted_symlink(
    evaluated, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("the host's own\n")
    swap = f'os.remove("train.py")\nos.symlink({str(host_file)!r}, "train.py")\n'
    train = TRAIN + "import os\n" + swap
    result = evaluated(train, isolation="basic")  # strict hides the host file altogether
    assert (result.outcome, result.metric) == (Outcome.OK, 0.8)
    assert host_file.read_text() == "the host's own\n"
