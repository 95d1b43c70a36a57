"""`farm simulate`: the real controller and proposer scheduling on a virtual clock."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import farm

from farm.records import DecisionKind, TrialKind, TrialState
from farm.simulate import CAMPAIGN, Landscape, SimModel, Simulation, simulate

SMALL = SimModel(slots=4, constants=8, trial_s=300, llm_s=75, max_candidates=80, seed=1)


def test_the_synthetic_target_knows_its_optimum() -> None:
    land = Landscape.make(constants=6, noise=0.5, seed=3)
    start = land.train_py()
    best = start
    for name, opt in zip(land.names, land.optima, strict=True):
        best = best.replace(f"{name} = 1.0", f"{name} = {2.0**opt}")
    assert land.true_loss(best) == pytest.approx(0.0, abs=1e-12)
    assert land.true_loss(start) > 0
    draws = [land.draw(start, seed) for seed in range(400)]
    assert sum(draws) / len(draws) == pytest.approx(land.true_loss(start), abs=0.1)


def test_a_simulated_campaign_reaches_its_target_with_the_real_controller(tmp_path) -> None:
    sim = Simulation(SMALL, tmp_path)
    result = sim.run()
    assert result.reached_s is not None and result.best_loss <= 0.2 * result.start_loss
    # The store holds what the controller did: every trial with a result, decisions made.
    trials = sim.store.list_trials(CAMPAIGN)
    done = [t for t in trials if t.state is TrialState.DONE]
    assert result.trials == len(done) and result.trials >= SMALL.merge.repeats
    decisions = sim.store.list_decisions(CAMPAIGN)
    assert sum(d.kind is DecisionKind.KEPT for d in decisions) == result.kept > 0
    assert result.false_keeps <= result.kept
    # Durations are virtual: 4 slots over the wall time hold all the trials' time.
    busy = sum(t.result.duration_s for t in done if t.result)
    assert result.busy_s == pytest.approx(busy)
    assert 0.5 < result.utilisation <= 1.0
    assert result.wall_s > SMALL.trial_s  # hours of virtual time, no sleeps
    sim.close()


def test_backlog_keeps_slots_busier_than_synchronous_rounds() -> None:
    backlog = simulate(SMALL)
    rounds = simulate(dataclasses.replace(SMALL, schedule="rounds", batch_size=4, backlog=0))
    # Rounds leave slots idle while the LLM drafts and while the round's last trials run.
    assert backlog.utilisation > rounds.utilisation
    assert backlog.starved_s < rounds.starved_s


def test_lost_nodes_give_their_trials_back_and_nothing_is_lost(tmp_path) -> None:
    model = dataclasses.replace(SMALL, slots=8, node_slots=4, node_loss_per_h=3.0, target=0.0)
    sim = Simulation(dataclasses.replace(model, max_candidates=30), tmp_path)
    result = sim.run()
    assert result.lost_s > 0  # some trials died with their node
    trials = sim.store.list_trials(CAMPAIGN)
    assert all(t.state.is_finished() for t in trials)
    retried = [t for t in trials if t.deliveries > 1]
    assert retried and all(t.state is TrialState.DONE for t in retried)
    assert len(sim.store.list_decisions(CAMPAIGN)) == result.candidates
    sim.close()


def test_the_cli_prints_a_row_per_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = farm(
        capsys,
        "simulate",
        "--slots",
        "1,4",
        "--constants",
        "8",
        "--seeds",
        "1",
        "--schedule",
        "backlog,rounds",
    )
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| slots | schedule |")
    settings = [tuple(c.strip() for c in r.strip("|").split("|")[:2]) for r in rows[1:]]
    assert settings == [("1", "backlog"), ("1", "rounds"), ("4", "backlog"), ("4", "rounds")]
    assert "parallel eff." in rows[0]


def test_the_cli_refuses_a_bad_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = farm(capsys, "simulate", "--schedule", "greedy")
    assert code == 2 and '"backlog", "rounds"' in out


def test_a_mixed_fleet_is_judged_per_class(tmp_path) -> None:
    # 8 slots, 2 of them on a class that takes 5σ off every run, on any commit alike.
    fleet = (("rtx4090", 6, 0.0), ("h100", 2, -2.5))
    model = dataclasses.replace(SMALL, slots=8, node_slots=2, fleet=fleet, target=0.0)
    sim = Simulation(dataclasses.replace(model, max_candidates=40), tmp_path)
    result = sim.run()
    ran = {t.result.hardware for t in sim.store.list_trials(CAMPAIGN) if t.result}
    assert ran == {"rtx4090", "h100"}
    # The controller measured the offset on the baseline (h100 runs sit below the rest)...
    offsets = sim.controller.evidence.offsets()
    assert offsets["h100"] - offsets["rtx4090"] == pytest.approx(-2.5, abs=0.8)
    # ... and judged on its scale: decisions say so, and changes were still kept.
    reasons = [d.reason for d in sim.store.list_decisions(CAMPAIGN)]
    assert any("on the baseline's scale" in r and "h100" in r for r in reasons)
    assert result.kept > 0
    sim.close()


def test_short_screens_are_watched_and_stop_where_they_rank_apart(tmp_path) -> None:
    # A short screen a quarter of a trial long; with every knob "late" (its benefit shows
    # only at the full budget) the two budgets rank candidates apart and the monitor stops
    # short screens; with none late they agree and screening short goes on to the end.
    model = dataclasses.replace(SMALL, slots=8, constants=32, screen_fraction=0.25, target=0.0)
    fair = simulate(dataclasses.replace(model, max_candidates=60))
    assert fair.short_off_s is None
    assert fair.fidelity.tau is not None and fair.fidelity.tau > 0.5, fair.fidelity
    biased = Simulation(dataclasses.replace(model, late=1.0, max_candidates=60), tmp_path)
    result = biased.run()
    assert result.short_off_s is not None
    assert result.fidelity.apart and result.fidelity.pairs >= model.merge.rank_pairs
    trials = biased.store.list_trials(CAMPAIGN)
    shorts = [t for t in trials if t.kind is TrialKind.SHORT]
    # Short screens ran at a quarter of the trial length, and none started after the stop.
    assert shorts and all(t.result and t.result.duration_s < 0.5 * model.trial_s for t in shorts)
    assert max(t.created_at for t in shorts) <= max(
        t.created_at for t in trials if t.kind is TrialKind.CANDIDATE
    )
    later = [
        c
        for c in biased.store.list_candidates(CAMPAIGN)
        if biased.store.get_trial(CAMPAIGN, f"c{c.id}-g0-screen")
        and not biased.store.get_trial(CAMPAIGN, f"c{c.id}-g0-short")
    ]
    assert later, "no candidate was screened at the full budget after the monitor stopped"
    biased.close()
