"""A pre-flight: the candidate's command for a few seconds, to catch a crash or a NaN before
it takes a full budget. Still running at its budget is a pass; it never reports a metric."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from farm.records import Outcome, TrialResult, TrialSpec
from workers.trial import EVALUATE_RULE, run_trial


@pytest.fixture
def preflight(target, cache_dir: Path, make_spec) -> Callable[..., TrialResult]:
    """Run a pre-flight of one second against the target; keyword arguments override."""

    def run(**overrides: object) -> TrialResult:
        spec: TrialSpec = make_spec(**{"budget_s": 1.0, "preflight": True, **overrides})
        return run_trial(spec, target.bundle, cache_dir=cache_dir)

    return run


def test_a_run_still_going_at_the_preflight_budget_has_passed(preflight) -> None:
    result = preflight(command="echo 'loss: 2.5'; sleep 1000")
    assert result.outcome is Outcome.OK
    assert (result.metric, result.summary) == (None, {"loss": 2.5})
    assert result.duration_s < 5  # stopped at the pre-flight budget, not the trial's
    assert "pre-flight passed: still running at 1 s, stopped" in result.output_tail


def test_a_run_that_ends_well_within_the_preflight_passes_without_its_metric(preflight) -> None:
    result = preflight(budget_s=30.0)
    assert result.outcome is Outcome.OK
    assert result.metric is None  # a short run is biased: nothing judges it
    assert result.summary["val_bpb"] == 0.9979
    assert "pre-flight passed" not in result.output_tail


def test_a_crash_within_the_preflight_fails_it_as_crashed(preflight) -> None:
    result = preflight(files={"train.py": "raise SystemExit(3)\n"})
    assert (result.outcome, result.exit_code, result.metric) == (Outcome.CRASHED, 3, None)


@pytest.mark.parametrize(
    "command",
    [
        "echo 'loss: nan'; sleep 1000",  # training went NaN and goes on
        "echo 'val_bpb: nan'",  # the metric itself, and the run ended
        "echo 'val_bpb: inf'; sleep 1000",  # the metric printed so far
    ],
)
def test_a_nan_printed_within_the_preflight_fails_it(preflight, command: str) -> None:
    result = preflight(command=command)
    assert (result.outcome, result.metric) == (Outcome.INVALID_METRIC, None)


def test_a_clean_exit_without_the_metric_fails_the_preflight(preflight) -> None:
    result = preflight(command="echo 'val_loss: 2.0'")
    assert result.outcome is Outcome.NO_METRIC


def test_the_preflight_never_runs_evaluate(preflight) -> None:
    # Training prints no metric: `evaluate` would measure it in a full trial.
    result = preflight(command="echo trained", evaluate="echo 'val_bpb: 1.0'")
    assert (result.outcome, result.metric) == (Outcome.OK, None)
    assert EVALUATE_RULE not in result.output_tail and "val_bpb" not in result.output_tail
