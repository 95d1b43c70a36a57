"""The score measured, not claimed: a protected `evaluate` command reads what training left."""

from __future__ import annotations

import io
import pickle
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
import os, pathlib, pickle, sys
print("bytecode left:", os.path.exists("__pycache__"))
import scoring  # committed beside it: neither editable nor protected
weight = float(pathlib.Path("model.txt").read_text())
offset = float(pathlib.Path("data/offset.txt").read_text())  # committed data
print("train.py as committed:", "# rewritten" not in pathlib.Path("train.py").read_text())
print("sees:", " ".join(sorted(os.listdir("."))))
if os.path.exists("model.pkl"):  # an unsafe loader: what the artifact check is for
    with open("model.pkl", "rb") as f:
        print("unpickled:", type(pickle.load(f)).__name__)
try:
    pathlib.Path("written-by-evaluate").write_text("x")
except OSError as e:
    print("write:", e.strerror)
print(f"val_bpb: {scoring.finish(2 * weight) + offset:.4f}")
"""
SCORING = "def finish(value):\n    return value\n"


@pytest.fixture
def evaluated(tmp_path: Path, make_spec, run_git) -> Callable[..., TrialResult]:
    """Run a trial of a target whose protected evaluate.py measures training's model.txt."""
    repo = tmp_path / "evaluated"
    repo.mkdir()
    run_git(repo, "init", "--quiet")
    (repo / "train.py").write_text(TRAIN)
    (repo / "evaluate.py").write_text(EVALUATE)
    (repo / "scoring.py").write_text(SCORING)
    (repo / "data").mkdir()
    (repo / "data" / "offset.txt").write_text("0\n")
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
            "artifacts": ["model.txt", "*.pkl", "*.pth"],
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


@pytest.mark.parametrize(
    "forge",
    [
        'open("scoring.py", "w").write("def finish(value):\\n    return 0.0001\\n")',
        'open("data/offset.txt", "w").write("-0.7999")',
        'import os\nos.remove("scoring.py")\nos.symlink("/dev/null", "scoring.py")',
    ],
    ids=["helper-module", "data-file", "helper-swapped-for-a-link"],
)
@pytest.mark.parametrize("isolation", ["strict", "basic"])
def test_committed_files_training_rewrote_reach_the_evaluator_as_committed(
    evaluated, forge: str, isolation: str
) -> None:
    result = evaluated(TRAIN + forge + "\n", isolation=isolation)
    assert (result.outcome, result.metric) == (Outcome.OK, 0.8), result.output_tail


def test_the_evaluator_sees_the_commit_and_the_declared_artifacts_alone(evaluated) -> None:
    train = TRAIN + 'open("notes.txt", "w").write("x")\nopen("cache.bin", "w").write("x")\n'
    result = evaluated(train, isolation="strict")
    assert result.outcome is Outcome.OK
    sees = next(ln for ln in result.output_tail.splitlines() if ln.startswith("sees:"))
    assert [p for p in sees.split()[1:] if p != "__pycache__"] == [
        "data",
        "evaluate.py",
        "model.txt",
        "scoring.py",
        "train.py",
    ]
    assert "farm: not handed to evaluate (not in `artifacts`): cache.bin, notes.txt" in (
        result.output_tail
    )


class _Exec:
    """A pickle that, loaded, prints a forged metric and ends the evaluator."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, ("print('val_bpb: 0.0001', flush=True); import os; os._exit(0)",)


def _writes(path: str, data: bytes) -> str:
    return TRAIN + f"open({path!r}, 'wb').write({data!r})\n"


@pytest.mark.parametrize("protocol", [0, 2, 5])  # GLOBAL, and STACK_GLOBAL from 4 on
def test_a_pickled_artifact_that_runs_code_is_tampering(evaluated, protocol: int) -> None:
    result = evaluated(_writes("model.pkl", pickle.dumps(_Exec(), protocol=protocol)))
    assert (result.outcome, result.metric) == (Outcome.TAMPERED, None)
    assert "farm: artifact model.pkl is serialised code: a pickle that calls" in result.output_tail
    assert "exec when loaded" in result.output_tail
    assert EVALUATE_RULE not in result.output_tail


def test_a_torch_checkpoint_of_a_whole_module_is_tampering_and_a_state_dict_is_not(
    evaluated,
) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    saved = {}
    for name, obj in (("module", model), ("weights", model.state_dict())):
        buf = io.BytesIO()
        torch.save(obj, buf)
        saved[name] = buf.getvalue()
    whole = evaluated(_writes("model.pth", saved["module"]))
    assert (whole.outcome, whole.metric) == (Outcome.TAMPERED, None)
    assert "data.pkl: a pickle that calls torch.nn.modules.container.Sequential" in (
        whole.output_tail
    )
    honest = evaluated(_writes("model.pth", saved["weights"]))
    assert (honest.outcome, honest.metric) == (Outcome.OK, 0.8), honest.output_tail


def test_a_plain_data_pickle_or_a_declared_safe_loader_passes(evaluated) -> None:
    plain = evaluated(_writes("model.pkl", pickle.dumps({"lr": [0.1, 2.0]})))
    assert (plain.outcome, plain.metric) == (Outcome.OK, 0.8), plain.output_tail
    assert "unpickled: dict" in plain.output_tail
    # The config's word that the evaluator loads safely: farm hands the pickle over unread
    # (this evaluator does not, so the forged line shows what that word costs when false).
    trusted = evaluated(_writes("model.pkl", pickle.dumps(_Exec())), artifacts_safe_load=True)
    assert trusted.metric == 0.0001


def test_an_artifact_that_is_a_link_is_tampering(evaluated, tmp_path: Path) -> None:
    host = tmp_path / "host-model.txt"
    host.write_text("0.0000005")
    train = TRAIN + f'import os\nos.remove("model.txt")\nos.symlink({str(host)!r}, "model.txt")\n'
    result = evaluated(train, isolation="basic")  # strict would not even show the host file
    assert (result.outcome, result.metric) == (Outcome.TAMPERED, None)
    assert "farm: artifact model.txt is not a regular file" in result.output_tail
