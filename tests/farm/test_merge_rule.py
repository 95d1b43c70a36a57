"""The merge rule's arithmetic on what a hostile or broken target can print."""

from __future__ import annotations

import math

import pytest
from helpers import Bench, MakeTarget

from farm.config import MergeConfig
from farm.merge import NoisePools, baseline, judge, lucky, noise, paired_bar, sequential
from farm.merge.verdicts import diverging
from farm.progress import snapshot
from farm.records import CandidateState, Direction, TrialKind


def test_metrics_at_the_edge_of_float_never_raise() -> None:
    # statistics.stdev and math.fsum raise OverflowError on these; the rule must not.
    runs = [1e308, -1e308, 1e308, -1e308]
    found = noise(runs, tolerance=0.0)
    assert found.sigma == math.inf and not found.deterministic
    pools = NoisePools(start="a", min_dof=1)
    pools.add("a", runs, key="baseline")
    assert pools.sigma("a", lambda sha: sha) == math.inf
    verdict = judge(
        [-1e308, -1e308, -1e308],
        incumbent=1e308,
        incumbent_runs=12,
        sigma=1.0,
        direction=Direction.MINIMIZE,
        z=1.5,
        dof=11,
        min_delta=0.0,
    )
    assert verdict.delta == math.inf and verdict.passed  # bounds or `evaluate` stop this one


def test_a_nan_anywhere_is_never_a_keep() -> None:
    keep, verdict = sequential(
        [0.5, math.nan],
        m=MergeConfig(),
        stages=2,
        incumbent=1.0,
        incumbent_runs=12,
        sigma=0.1,
        direction=Direction.MINIMIZE,
    )
    assert keep is False and not verdict.passed


def look(*runs: float, diverging: bool = False) -> bool | None:
    """The sequential test's look at these runs (four confirmations at most, against an
    incumbent of 1.0 from 12 runs, σ 0.1): keep, discard, or None for one more."""
    keep, _ = sequential(
        list(runs),
        m=MergeConfig(confirm=4),
        stages=5,
        incumbent=1.0,
        incumbent_runs=12,
        sigma=0.1,
        direction=Direction.MINIMIZE,
        diverging=diverging,
    )
    return keep


def test_a_confirmation_that_diverged_is_run_again_once() -> None:
    assert look(0.9) is None  # the screen earns a confirmation
    assert look(0.9, 9.0) is None  # 80σ worse: a divergent run, not evidence; once more
    assert look(0.9, 9.0, 0.7, 0.7) is True  # judged on the runs that did not diverge
    assert look(0.9, 9.0, 9.5) is False  # twice: the candidate diverges
    assert look(1.5) is False  # a screen far worse is a bad candidate, not bad luck


def test_a_screen_that_diverged_is_run_again_where_the_targets_own_runs_diverge() -> None:
    assert look(9.0, diverging=True) is None  # 80σ worse, where the target's runs do that
    assert look(9.0, 0.9, diverging=True) is None  # the run again earns a confirmation
    assert look(9.0, 0.9, 0.7, 0.7, diverging=True) is True  # the runs that did not diverge
    assert look(9.0, 9.5, diverging=True) is False  # twice: the candidate diverges
    assert look(9.0, 1.02, diverging=True) is False  # its run again is screened as a screen


@pytest.mark.parametrize(
    ("values", "direction", "diverges"),
    [
        ([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 5.0], Direction.MINIMIZE, True),
        ([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.02], Direction.MINIMIZE, False),
        # An accuracy that diverges falls: far above its mean is no divergence.
        ([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 5.0], Direction.MAXIMIZE, False),
        ([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, -3.0], Direction.MAXIMIZE, True),
    ],
)
def test_a_target_diverges_where_a_baseline_run_ended_far_worse_than_the_rest(
    values: list[float], direction: Direction, diverges: bool
) -> None:
    runs = [(f"base-{i}", v, "") for i, v in enumerate(values)]
    assert diverging(baseline(runs, MergeConfig()), direction) is diverges


@pytest.mark.parametrize(("last", "act"), [(5.0, "runs again"), (1.02, "discarded")])
def test_a_campaign_runs_a_diverged_screen_again_only_on_a_target_that_diverges(
    make_target: MakeTarget, last: float, act: str
) -> None:
    target = make_target(
        {"train.py": "LR = 0.5  # learning rate\nprint('loss: 1.0')\n"},
        extra_toml="[merge]\nrepeats = 7\nconfirm_ahead = 0\n",
    )
    b = Bench(target)
    base = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, last]  # the last 5.0: an outlier, and diverged
    b.finish({f"base-{i}": v for i, v in enumerate(base)})
    (c,) = b.propose(("LR = 0.5", "LR = 1.0"))
    b.finish({f"c{c}-g0-screen": 5.0}, only=True)
    b.ctl.step(slots=8)
    again = b.store.get_trial("default", f"c{c}-g0-confirm0") is not None
    assert (again, b.state(c)) == (
        (True, CandidateState.RUNNING) if act == "runs again" else (False, CandidateState.DISCARDED)
    )


def test_promotion_takes_the_best_share_of_the_short_screens_in() -> None:
    from farm.merge import Cohort, promoted

    def rank(value: float, others: list[float], share: float, direction: Direction) -> object:
        cohort = Cohort()
        for i, other in enumerate(others, start=1):
            cohort.add(i, other)
        return promoted(*cohort.standing(0, value, direction), share=share)

    lower = Direction.MINIMIZE
    assert rank(5.0, [], 0.33, lower) == (True, 1, 1)  # nothing to rank by
    assert rank(2.0, [1.0, 3.0], 0.33, lower) == (False, 2, 1)
    assert rank(0.5, [1.0, 3.0], 0.33, lower) == (True, 1, 1)
    assert rank(1.5, [1.0, 3.0, 4.0], 0.5, lower) == (True, 2, 2)
    assert rank(1.5, [1.0, 3.0, 4.0], 0.5, Direction.MAXIMIZE) == (False, 3, 2)


def test_a_cohort_ranks_a_screen_once_and_ties_do_not_count_as_better() -> None:
    from farm.merge import Cohort

    cohort = Cohort()
    for cand, value in ((1, 1.0), (2, 3.0), (3, 4.0), (1, 9.0)):  # c1 again: its first stands
        cohort.add(cand, value)
    assert cohort.values == [1.0, 3.0, 4.0]
    assert cohort.standing(2, 3.0, Direction.MINIMIZE) == (1, 3)  # in it already: 3 in all
    assert cohort.standing(4, 3.0, Direction.MINIMIZE) == (1, 4)  # the 3.0 of c2 is a tie
    assert cohort.standing(4, 3.0, Direction.MAXIMIZE) == (1, 4)


def test_rank_agreement_compares_candidates_ranked_against_the_same_incumbent() -> None:
    from farm.merge import rank_agreement

    assert rank_agreement([]) == (None, 0)
    # Each incumbent's candidates agree; across incumbents the full level moved (a keep), which
    # would read as disagreement if they were compared.
    same = [("a", 1.0, 10.0), ("a", 2.0, 11.0), ("b", 3.0, 1.0), ("b", 4.0, 2.0)]
    assert rank_agreement(same) == (1.0, 2)
    apart = [("a", 1.0, 3.0), ("a", 2.0, 2.0), ("a", 3.0, 1.0), ("a", 4.0, 1.0)]
    assert rank_agreement(apart) == (-1.0, 5)  # the tie at full budget counts for neither
    assert rank_agreement([("a", 1e308, 1e308), ("a", -1e308, -1e308)]) == (1.0, 1)


def near_bar_bench(make_target: MakeTarget, merge: str) -> Bench:
    """A campaign judged by a fixed test (screen and two confirmations), its baseline in:
    1.0, 1.1, 0.9, 1.0 (σ 0.08)."""
    fixed = "confirm = 2\nz = 1.5\nscreen_z = 0\nfutility_z = -99\nefficacy_z = 99\npower_z = 99\n"
    target = make_target(
        {"train.py": "LR = 0.5  # learning rate\nprint('loss: 1.0')\n"},
        extra_toml=f"[merge]\nrepeats = 4\n{fixed}{merge}",
    )
    b = Bench(target)
    b.finish({"base-0": 1.0, "base-1": 1.1, "base-2": 0.9, "base-3": 1.0})
    return b


def keep_near_bar(b: Bench) -> int:
    """A candidate kept near its bar: its screen and two confirmations at 0.82, 0.18 beyond
    a bar of 0.128."""
    (c,) = b.propose(("LR = 0.5", "LR = 1.0"))
    for _ in range(3):
        b.finish({f"c{c}-g0-": 0.82}, only=True)
    b.ctl.step(slots=8)
    return c


def test_a_keep_near_its_bar_is_measured_afresh_and_every_view_states_the_measurement(
    make_target: MakeTarget,
) -> None:
    # Near its bar, the runs that win a keep are the luckier draws (the winner's curse): the
    # incumbent's value comes from runs of its own, and the line every view shows says so.
    # It is measured by `afresh_runs` runs (`measure_runs` is for merges untried).
    b = near_bar_bench(make_target, "measure_keeps = true\nmeasure_runs = 1\nafresh_runs = 3\n")
    c = keep_near_bar(b)
    inc = b.store.get_incumbent("default")
    assert inc.candidate_id == c and inc.estimated and inc.metric == pytest.approx(0.82)
    assert "measured afresh by its own runs" in b.store.get_decision("default", c).reason  # type: ignore[union-attr]
    measuring = [f"c{c}-measure{i}" for i in range(3)]
    assert b.finish({f"c{c}-measure": 0.9}) == measuring
    b.ctl.step(slots=8)
    inc = b.store.get_incumbent("default")
    assert (inc.metric, inc.runs) == (pytest.approx(0.9), 3)
    assert [round(s.metric, 6) for s in snapshot(b.store, "default").line] == [1.0, 0.9]
    # Far beyond its bar, a keep was never near the cut: it stands on the runs that won it.
    (far,) = b.propose(("LR = 1.0", "LR = 2.0"))
    for _ in range(3):
        b.finish({f"c{far}-g0-": 0.3}, only=True)
    b.ctl.step(slots=8)
    inc = b.store.get_incumbent("default")
    assert (inc.candidate_id, inc.metric, inc.runs) == (far, pytest.approx(0.3), 3)


def test_a_keep_is_lucky_where_candidates_gains_spread_less_than_measure_spread() -> None:
    m = MergeConfig()  # measure_spread 1σ: a robust spread of the screens under √2 σ
    alike = [0.1 * (-1) ** k * (k % 4) for k in range(12)]  # within ±0.3 of σ 1
    apart = [1.5 * (-1) ** k * (k % 4) for k in range(12)]
    assert lucky(alike, sigma=1.0, m=m) and not lucky(apart, sigma=1.0, m=m)
    assert lucky(apart[:9], sigma=1.0, m=m)  # before 10 screens nothing is known: assumed
    # A few far better or far worse do not make the many that do little look apart.
    assert lucky([*alike, 40.0, -40.0, 40.0], sigma=1.0, m=m)
    never = MergeConfig(measure_spread=0)
    assert not lucky(alike, sigma=1.0, m=never) and not lucky([], sigma=1.0, m=never)
    assert lucky(apart, sigma=1.0, m=MergeConfig(measure_keeps=True))


@pytest.mark.parametrize(("spread", "measured"), [(0.03, True), (0.5, False)])
def test_a_keep_near_its_bar_is_measured_where_candidates_gains_hardly_vary(
    make_target: MakeTarget, spread: float, measured: bool
) -> None:
    # Ten screens first, each worse than the incumbent (discarded at the screen), spread less
    # than one run's noise (changes that do about nothing) or far more. Then a keep near
    # its bar: where gains hardly vary its margin is mostly luck, and it is measured afresh.
    b = near_bar_bench(make_target, "confirm_ahead = 0\n")  # σ 0.08
    ids = b.propose(*[("LR = 0.5", f"LR = {0.6 + k / 100}") for k in range(10)])
    worse = {f"c{c}-g0-screen": 1.01 + spread * (k % 4) for k, c in enumerate(ids)}
    b.finish(worse, only=True, slots=16)
    b.ctl.step(slots=16)
    assert all(b.state(c) is CandidateState.DISCARDED for c in ids)
    c = keep_near_bar(b)
    inc = b.store.get_incumbent("default")
    assert inc.candidate_id == c and inc.metric == pytest.approx(0.82)
    assert inc.estimated is measured
    reason = b.store.get_decision("default", c).reason  # type: ignore[union-attr]
    assert ("measured afresh by its own runs" in reason) is measured


def test_a_deterministic_keep_is_not_measured_again(make_target: MakeTarget) -> None:
    target = make_target(
        {"train.py": "LR = 0.5  # learning rate\nprint('loss: 1.0')\n"},
        extra_toml="[merge]\nrepeats = 4\nmeasure_keeps = true\n",
    )
    b = Bench(target)
    b.finish({"base-": 1.0})  # three runs agree: σ = 0, one run decides
    (c,) = b.propose(("LR = 0.5", "LR = 1.0"))
    b.finish({f"c{c}-": 0.5})
    b.ctl.step(slots=8)
    inc = b.store.get_incumbent("default")
    assert (inc.candidate_id, inc.metric, inc.runs) == (c, 0.5, 1)
    assert not [t for t in b.store.list_trials("default") if t.kind is TrialKind.MEASURE]


def test_a_paired_gap_carries_its_partner_runs_noise_as_well_as_its_screens() -> None:
    # Screens against one reference share its partner run, so their gaps' spread (0.3 with
    # σ 1) shows only the screens' share of a gap's noise: the gate is on 0.3·√2.
    m = MergeConfig()
    bar = paired_bar(0.3, sigma=1.0, incumbent_runs=12, m=m)
    assert bar == pytest.approx(m.paired_z * 0.3 * math.sqrt(2))
    # A spread of 0.6 would look like it halves the unpaired variance (0.36 < 0.5·1.08); a
    # gap's 0.72 does not, and the screen is gated unpaired.
    assert paired_bar(0.6, sigma=1.0, incumbent_runs=12, m=m) is None
