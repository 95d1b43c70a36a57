from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.records import Outcome, TrialResult, TrialSpec
from workers.materialize import protected_digest
from workers.trial import run_trial


@pytest.fixture
def trial(target, cache_dir: Path) -> Callable[[TrialSpec], TrialResult]:
    """Run a spec against the target's bundle, on this test's own node cache."""
    return lambda spec: run_trial(spec, target.bundle, cache_dir=cache_dir)


def test_ok_trial_reports_metric_summary_and_provenance(
    trial, target, make_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = trial(make_spec())
    assert result.outcome is Outcome.OK
    assert result.metric == 0.9979
    assert result.summary == {"val_bpb": 0.9979, "training_seconds": 1.5, "num_steps": 10.0}
    assert result.exit_code == 0
    assert (result.trial_id, result.hardware, result.node) == ("t1", "cpu", socket.gethostname())
    assert result.protected_hash == protected_digest(target.protected_hashes)
    assert "val_bpb:          0.997900" in result.output_tail
    assert (
        result.started_at
        <= result.process_started_at
        <= result.process_ended_at
        <= result.finished_at
    )
    assert 0 < result.duration_s < 10
    assert TrialResult.from_dict(result.to_dict()) == result


def test_candidate_files_are_what_runs(trial, make_spec) -> None:
    spec = make_spec(files={"train.py": "print('val_bpb: 0.5')\n"})
    result = trial(spec)
    assert (result.outcome, result.metric) == (Outcome.OK, 0.5)


def test_non_zero_exit_is_crashed_with_the_error_in_the_tail(trial, make_spec) -> None:
    spec = make_spec(files={"train.py": "print('val_bpb: 0.5')\nraise ValueError('diverged')\n"})
    result = trial(spec)
    assert result.outcome is Outcome.CRASHED
    assert result.exit_code == 1
    assert result.metric is None
    assert "ValueError: diverged" in result.output_tail


def test_run_past_the_budget_is_timeout_without_a_metric(trial, make_spec) -> None:
    spec = make_spec(command="echo 'val_bpb: 0.1'; sleep 1000", budget_s=1.0)
    result = trial(spec)
    assert result.outcome is Outcome.TIMEOUT
    assert (result.metric, result.summary) == (None, {})
    assert result.exit_code not in (None, 0)
    assert "val_bpb: 0.1" in result.output_tail


def test_clean_exit_without_the_metric_is_no_metric(trial, make_spec) -> None:
    spec = make_spec(command="echo 'val_loss: 2.0'")
    result = trial(spec)
    assert result.outcome is Outcome.NO_METRIC
    assert result.metric is None
    assert result.summary == {"val_loss": 2.0}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_metric_is_invalid_metric(trial, make_spec, value: str) -> None:
    result = trial(make_spec(command=f"echo 'val_bpb: {value}'"))
    assert result.outcome is Outcome.INVALID_METRIC
    assert result.metric is None


def test_metric_regex_replaces_summary_lines(trial, make_spec) -> None:
    spec = make_spec(
        command="echo 'val_bpb: 9.0'; echo 'eval | acc=0.81'; echo 'eval | acc=0.84'",
        metric_regex=r"acc=([\d.]+)",
    )
    result = trial(spec)
    assert (result.outcome, result.metric) == (Outcome.OK, 0.84)


def test_protected_hash_differing_from_the_spec_is_tampered_and_never_runs(
    trial, make_spec, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    spec = make_spec(command=f"touch {marker}", protected_hashes={"prepare.py": "0" * 64})
    result = trial(spec)
    assert result.outcome is Outcome.TAMPERED
    assert result.exit_code is None
    assert "prepare.py" in result.output_tail
    assert not marker.exists()


def test_candidate_editing_a_protected_file_is_tampered(trial, make_spec, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = make_spec(command=f"touch {marker}", files={"prepare.py": "VOCAB_SIZE = 1\n"})
    result = trial(spec)
    assert result.outcome is Outcome.TAMPERED
    assert not marker.exists()


def test_run_that_rewrites_a_protected_file_is_tampered_in_basic_mode(trial, make_spec) -> None:
    spec = make_spec(
        command="echo 'VOCAB_SIZE = 1' >> prepare.py; echo 'val_bpb: 0.1'", isolation="basic"
    )
    result = trial(spec)
    assert (result.outcome, result.isolation) == (Outcome.TAMPERED, "basic")
    assert result.metric is None
    assert result.exit_code == 0
    assert "protected files changed during the run: prepare.py" in result.output_tail


def test_run_cannot_write_a_protected_file_in_strict_mode(trial, make_spec) -> None:
    script = "echo 'VOCAB_SIZE = 1' >> prepare.py || exit 3; echo 'val_bpb: 0.1'"
    result = trial(make_spec(command=script, isolation="strict"))
    assert (result.outcome, result.exit_code, result.isolation) == (Outcome.CRASHED, 3, "strict")
    assert "Read-only file system" in result.output_tail


def test_output_flood_is_capped_and_still_ok(trial, make_spec) -> None:
    flood = "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo 'val_bpb: 1.25'"
    result = trial(make_spec(command=flood, output_cap_bytes=4096))
    assert (result.outcome, result.metric) == (Outcome.OK, 1.25)
    assert len(result.output_tail) == 4096


def test_api_keys_never_reach_the_training_process(
    trial, make_spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    monkeypatch.setenv("FARM_TEST_ALLOWED", "yes")
    spec = make_spec(command="env", env_allow=["PATH", "FARM_TEST_ALLOWED"], seed=11)
    result = trial(spec)
    assert "sk-test-secret" not in result.output_tail
    assert {"FARM_SEED=11", "FARM_TEST_ALLOWED=yes"} <= set(result.output_tail.splitlines())


def test_trial_gets_a_plain_directory_removed_afterwards(trial, make_spec, cache_dir: Path) -> None:
    result = trial(make_spec(command="pwd; ls -A; git rev-parse --git-dir 2>&1"))
    lines = result.output_tail.splitlines()
    assert lines[1:3] == ["prepare.py", "train.py"]  # no .git to plant hooks in
    assert "not a git repository" in lines[3]
    assert not Path(lines[0]).exists()
    assert not (cache_dir / "target" / "worktrees").exists()


def test_metric_outside_bounds_is_invalid(trial, make_spec) -> None:
    result = trial(make_spec(command="echo 'val_bpb: -1e308'", bounds=[0.0, 10.0]))
    assert (result.outcome, result.metric) == (Outcome.INVALID_METRIC, None)
    assert "outside bounds [0, 10]" in result.output_tail
    assert trial(make_spec(command="echo 'val_bpb: 10'", bounds=[0.0, 10.0])).metric == 10.0


def test_memory_over_the_limit_is_crashed_with_the_reason(trial, make_spec) -> None:
    hog = f"{sys.executable} -c 'import time; x = b\"x\" * (500 * 2**20); time.sleep(30)'"
    result = trial(make_spec(command=hog, memory_mb=150))
    assert result.outcome is Outcome.CRASHED
    assert "killed at the memory limit" in result.output_tail
    # The kernel (a control group) may kill it before farm's own watch saw it over.
    assert "by the kernel" in result.output_tail or result.peak_memory_mb > 150


def test_second_trial_on_a_cached_base_needs_no_bundle(trial, make_spec, cache_dir: Path) -> None:
    trial(make_spec())
    result = run_trial(make_spec(trial_id="t2"), b"", cache_dir=cache_dir)
    assert (result.trial_id, result.outcome) == ("t2", Outcome.OK)


def test_hardware_names_the_gpus_of_cuda_visible_devices(
    trial, make_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    # Answers only for the devices it is asked about, like the real one with -i.
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "assert sys.argv[-2:] == ['-i', '2,3'], sys.argv\n"
        "print('NVIDIA GeForce RTX 4090\\nNVIDIA GeForce RTX 4090')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    result = trial(make_spec())
    assert result.hardware == "NVIDIA GeForce RTX 4090"
