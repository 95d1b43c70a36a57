"""The merge rule's stages as a specification: runs in, a ruling out (farm/merge/verdicts.py).

Each table reads as the rule: what a stage is shown and what it does. Numbers alone: no
store, no git, no controller."""

from __future__ import annotations

import dataclasses

import pytest

from farm.config import MergeConfig
from farm.merge import NoisePools, Verdict, flattered
from farm.merge.verdicts import (
    Act,
    Reference,
    Target,
    baseline_ruling,
    few_runs,
    first_wave,
    measured_ruling,
    preflight_ruling,
    rebased_ruling,
    screened_ruling,
    short_ruling,
)
from farm.records import Direction, Outcome, Trial, TrialKind, TrialResult, TrialState

T = Target(metric="loss", command="python train.py")
OK, TIMEOUT, CRASHED, QUEUED = "ok", "timeout", "crashed", "queued"


def run(i: int, value: float | str, *, hw: str = "", kind: TrialKind = TrialKind.CONFIRM) -> Trial:
    """A trial: a metric (ok), an outcome name, or `queued` (still out)."""
    t = Trial(id=f"t{i}", campaign="c", kind=kind, commit_sha="x", base_sha="s", seed=i)
    if value == QUEUED:
        return t
    t.state = TrialState.DONE
    if isinstance(value, float | int):
        t.result = TrialResult(t.id, Outcome.OK, metric=float(value), hardware=hw)
    else:
        t.result = TrialResult(t.id, Outcome(value), exit_code=1, output_tail="boom\n")
    return t


def runs(*values: float | str) -> list[Trial]:
    return [run(i, v) for i, v in enumerate(values)]


# -- the baseline -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("repeats", "values", "act", "center"),
    [
        (6, [1.0, 1.2, QUEUED], Act.WAIT, None),  # a run is still out
        (6, [1.0, 1.2, 0.9], Act.MORE, None),  # three that differ: the rest of `repeats`
        (6, [1.0, 1.0, 1.0], Act.PASS, 1.0),  # three that agree: deterministic, no more
        (6, [CRASHED, CRASHED, CRASHED], Act.FAIL, None),  # none ran: no more runs of it
        (4, [1.0, CRASHED, CRASHED, CRASHED], Act.FAIL, None),  # one is not a baseline
        (4, [0.9, 1.1, 0.9, 1.1], Act.PASS, 1.0),
        # A run 40 robust σ out is named and left out of the centre and σ.
        (8, [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 9.0], Act.PASS, 1.0),
    ],
)
def test_the_baseline(repeats: int, values: list, act: Act, center: float | None) -> None:
    ruling, base = baseline_ruling(runs(*values), MergeConfig(repeats=repeats), T)
    assert ruling.act is act
    if center is None:
        assert base is None
    else:
        assert base is not None and base.noise.center == pytest.approx(center)
    if act is Act.FAIL:
        assert "fix the target so `python train.py` runs" in ruling.reason


@pytest.mark.parametrize(("repeats", "slots", "first"), [(12, 2, 3), (12, 8, 8), (2, 8, 2)])
def test_the_first_wave_of_baseline_runs(repeats: int, slots: int, first: int) -> None:
    assert first_wave(MergeConfig(repeats=repeats), slots) == first


# -- gates before a full budget ------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "act"), [(QUEUED, Act.WAIT), (0.5, Act.PASS), (CRASHED, Act.FAIL)]
)
def test_the_preflight(value: float | str, act: Act) -> None:
    assert preflight_ruling(run(0, value), 2.0, T).act is act


@pytest.mark.parametrize(
    ("value", "standing", "act"),
    [
        (QUEUED, (0, 1), Act.WAIT),
        (0.5, (0, 1), Act.PASS),  # the first always goes on: nothing to rank it by
        (0.5, (0, 4), Act.PASS),  # best of four; the best half go on
        (0.75, (2, 4), Act.DISCARD),  # third of four
        (TIMEOUT, (0, 2), Act.PASS),  # says nothing of the candidate
        (CRASHED, (0, 2), Act.FAIL),
    ],
)
def test_the_short_screen(value: float | str, standing: tuple[int, int], act: Act) -> None:
    short = run(0, value, kind=TrialKind.SHORT)
    m = MergeConfig(screen_budget_s=30, promote=0.5)
    ruling = short_ruling(short, standing, m, T, moved=False, last=True)
    assert ruling.act is act
    if act is Act.DISCARD:
        assert "ranked 3 of 4" in ruling.reason


@pytest.mark.parametrize(
    ("moved", "last", "act"),
    [
        (False, False, Act.WAIT),  # held while the incumbent it was ranked against stands
        (True, False, Act.MORE),  # another look, on the new incumbent
        (False, True, Act.DISCARD),  # its last look
        (True, True, Act.DISCARD),
    ],
)
def test_a_short_screen_below_the_cut_waits_for_another_look(
    moved: bool, last: bool, act: Act
) -> None:
    short = run(0, 0.75, kind=TrialKind.SHORT)
    m = MergeConfig(screen_budget_s=30, promote=0.5, looks=2)
    ruling = short_ruling(short, (2, 4), m, T, moved=moved, last=last)
    assert ruling.act is act
    assert "ranked 3 of 4" in ruling.reason


# -- screen and confirmations --------------------------------------------------------------
REF = Reference(metric=1.0, runs=12, sigma=0.1, offsets={"": 0.0}, counts={"": 12})
# A fixed design: no early stop either way (the bars: z of a t with 11 degrees of freedom).
M = MergeConfig(confirm=2, z=2.0, screen_z=0.0, efficacy_z=99, futility_z=-99, power_z=99)


@pytest.mark.parametrize(
    ("values", "act", "values_kept"),
    [
        ([QUEUED], Act.WAIT, None),
        ([CRASHED], Act.FAIL, None),
        ([1.2], Act.DISCARD, []),  # the screen is worse: no confirmation earned
        ([0.9], Act.MORE, None),  # better than the incumbent: a first confirmation
        ([0.9, 0.85], Act.MORE, None),  # one of two confirmations in
        ([0.9, 0.85, QUEUED], Act.WAIT, None),
        ([0.9, 0.8, 0.8], Act.KEEP, [0.8, 0.8]),  # 0.2 > 2·0.1·sqrt(1/2 + 1/12)
        ([0.9, 0.95, 0.97], Act.DISCARD, [0.95, 0.97]),
        ([0.9, 0.8, TIMEOUT], Act.FAIL, None),
    ],
)
def test_a_new_candidate(values: list, act: Act, values_kept: list[float] | None) -> None:
    ruling = screened_ruling(runs(*values), REF, stages=3, m=M, t=T)
    assert ruling.act is act
    if values_kept is not None:
        assert ruling.values == pytest.approx(values_kept)
    if act is Act.FAIL:
        assert ruling.reason.startswith(("screening run", "confirmation run"))


# The sequential test (z 1.55, screen_z 0.25, efficacy_z 2.25, a discard 1.1 SE short of a
# 1.5σ gain), 12 baseline runs and three confirmations: every look judges all of the
# candidate's runs, the screen included, in standard errors σ·sqrt(1/n + 1/12) of a t with
# 11 degrees of freedom (z 1.55 → 1.68, 2.25 → 2.61, 1.1 → 1.16, 0.25 → 0.26).
S = MergeConfig(confirm=3, repeats=12, screen_z=0.25)


@pytest.mark.parametrize(
    ("values", "act", "why"),
    [
        ([0.98], Act.DISCARD, "the screen's 0.2σ is short of screen_z: 0.26 SE of 1.04σ"),
        ([0.97], Act.MORE, "0.3σ earns a confirmation"),
        ([0.8, 0.78], Act.KEEP, "2.1σ over two runs, beyond efficacy_z: 2.61 SE of 0.76σ"),
        ([0.9, 0.8], Act.MORE, "1.5σ: not yet a keep, and not short of a 1.5σ gain"),
        ([0.94, 0.94], Act.DISCARD, "0.6σ: 1.16 SE of 0.76σ short of a 1.5σ gain (0.62σ)"),
        ([0.9, 0.93, 0.94], Act.MORE, "0.77σ over three: the bar short of 1.5σ rose to 0.75σ"),
        ([0.9, 0.93, 0.94, 0.83], Act.KEEP, "the last look: 1.0σ beyond z, 1.68 SE of 0.58σ"),
        ([0.9, 0.93, 0.94, 0.89], Act.DISCARD, "the last look: 0.85σ is not"),
    ],
)
def test_the_sequential_test(values: list, act: Act, why: str) -> None:
    ruling = screened_ruling(runs(*values), REF, stages=4, m=S, t=T)
    assert ruling.act is act, why
    if act is Act.KEEP:  # its confirmations: the screen passed a gate, σ is pooled without it
        assert ruling.values == pytest.approx(values[1:])


@pytest.mark.parametrize(("repeats", "act"), [(12, Act.KEEP), (3, Act.DISCARD)])
def test_a_sigma_from_few_baseline_runs_widens_every_bar(repeats: int, act: Act) -> None:
    # σ from 3 runs has 2 degrees of freedom: z 1.55 is a t's 2.61 there, 1.68 with 11.
    m = dataclasses.replace(S, repeats=repeats)
    assert screened_ruling(runs(0.9, 0.88, 0.9, 0.9), REF, stages=4, m=m, t=T).act is act


@pytest.mark.parametrize(
    ("delta", "bar", "measured"),
    [(0.15, 0.1, True), (0.19, 0.1, True), (0.2, 0.1, False), (0.5, 0.1, False)],
)
def test_a_keep_near_its_bar_is_measured_afresh(delta: float, bar: float, measured: bool) -> None:
    # The winner's curse flatters an estimate picked near its cut, hardly one far beyond it.
    assert flattered(Verdict(True, 1.0 - delta, delta, bar)) is measured


def test_a_new_candidate_before_the_baseline_is_in_only_fails() -> None:
    assert screened_ruling(runs(0.1), None, stages=3, m=M, t=T).act is Act.WAIT
    assert screened_ruling(runs(CRASHED), None, stages=3, m=M, t=T).act is Act.FAIL


def test_a_run_on_hardware_the_baseline_never_ran_on_is_run_again() -> None:
    screen, odd = run(0, 0.9), run(1, 0.1, hw="h100")
    assert screened_ruling([screen, odd], REF, stages=3, m=M, t=T).act is Act.MORE


@pytest.mark.parametrize(
    ("values", "act"),
    [([0.8, 0.8], Act.KEEP), ([0.95, 1.0], Act.DISCARD), ([0.8, CRASHED], Act.FAIL)],
)
def test_a_rebased_winner(values: list, act: Act) -> None:
    ruling = rebased_ruling(runs(*values), REF, M, T)
    assert ruling.act is act
    if act is Act.DISCARD:
        assert ruling.reason.startswith("rebased, its re-runs did not hold up")


# -- a keep merged untried ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "act", "mean_of"),
    [
        ([0.5, QUEUED], Act.WAIT, None),
        ([0.5, 0.7], Act.PASS, [0.5, 0.7]),
        ([0.5, TIMEOUT], Act.PASS, [0.5]),  # half of them: measured, from one run
        ([0.5, TIMEOUT, TIMEOUT, TIMEOUT], Act.FAIL, None),  # make demo's case: 1 of 4
        ([TIMEOUT], Act.FAIL, None),
    ],
)
def test_the_measuring_runs(values: list, act: Act, mean_of: list[float] | None) -> None:
    ruling = measured_ruling(runs(*values), {"": 0.0}, T)
    assert ruling.act is act
    if mean_of is not None:
        assert ruling.values == pytest.approx(mean_of)
    if act is Act.FAIL:
        assert "measuring runs failed" in ruling.reason


@pytest.mark.parametrize(
    ("runs_", "wanted", "said"),
    [(0, 4, "an estimate, not yet measured"), (1, 4, "stands on 1 run"), (2, 4, ""), (1, 1, "")],
)
def test_what_a_decision_says_of_a_reference_on_few_runs(
    runs_: float, wanted: int, said: str
) -> None:
    assert (said in few_runs(runs_, wanted)) if said else few_runs(runs_, wanted) == ""


# -- noise along the incumbents' lineage ----------------------------------------------------
def test_sigma_follows_a_long_lineage_without_recursion_and_refuses_a_loop() -> None:
    pools = NoisePools(start="k0", min_dof=11)
    pools.add("k0", [0.9, 1.1] * 6, key="baseline")
    parents = {f"k{i}": f"k{i - 1}" for i in range(1, 5001)}
    assert pools.sigma("k5000", parents.__getitem__) == pytest.approx(pools.sigma("k0", str))
    parents["k1"] = "k3"  # a keep whose lineage leads back to itself
    with pytest.raises(ValueError, match="lineage loops"):
        pools.sigma("k4999", parents.__getitem__)  # not asked before: σ is cached per sha


def test_direction_is_read_by_every_stage() -> None:
    up = Target(metric="acc", direction=Direction.MAXIMIZE)
    ruling = screened_ruling(runs(1.1, 1.2, 1.2), REF, stages=3, m=M, t=up)
    assert ruling.act is Act.KEEP
