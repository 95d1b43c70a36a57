"""`farm simulate`: the real controller and proposer scheduling on a virtual clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import farm

from farm.config import MergeConfig
from farm.records import DecisionKind, TrialKind, TrialState
from farm.simulate import CAMPAIGN, Landscape, SimModel, Simulation, simulate

SMALL = SimModel(slots=4, constants=8, trial_s=300, llm_s=75, max_candidates=80, seed=1)
# A short run of the CLI: 4 slots, one seed, no one-slot comparison.
QUICK = ("--slots", "4", "--constants", "8", "--seeds", "1", "--no-sequential")


def rows_of(out: str) -> list[dict[str, str]]:
    """The table `farm simulate` printed, a dict per row."""
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln]
    head, *body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return [dict(zip(head, row, strict=True)) for row in body]


def decided(out: str, row: int) -> list[str]:
    """What `farm simulate` said under the table about one row (its first seed): the
    summary line, then what the controller said and each decision."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"- row {row},"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("- ")), None)
    return lines[start:end]


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
    decided = [d for d in sim.store.list_decisions(CAMPAIGN) if d.kind is not DecisionKind.REJECTED]
    assert len(decided) == result.candidates  # every valid candidate decided
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
    model = dataclasses.replace(
        SMALL,
        slots=8,
        constants=32,
        merge=MergeConfig(screen_budget_s=0.25 * SMALL.trial_s),
        target=0.0,
    )
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
    screened = {t.candidate_id for t in trials if t.kind is TrialKind.CANDIDATE}
    later = screened - {t.candidate_id for t in shorts}
    assert later, "no candidate was screened at the full budget after the monitor stopped"
    biased.close()


def write_target(where: Path, toml: str) -> Path:
    where.mkdir(exist_ok=True)
    (where / "farm.toml").write_text(
        'editable = ["train.py"]\ncommand = "python train.py"\nmetric = "loss"\n' + toml
    )
    return where


def test_simulate_runs_the_rule_of_the_targets_farm_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pre-flights, short screens, paired screens and the proposer's scheduling, all from the
    # target's farm.toml: `farm simulate` run in the target's directory applies them all.
    target = write_target(
        tmp_path / "target",
        "budget_s = 600\n"
        "[merge]\npreflight_s = 100\nscreen_budget_s = 120\npaired = true\n"
        "[proposer]\nbatch_size = 2\nbacklog = 1\n[resources]\nslots = 4\n",
    )
    monkeypatch.chdir(target)
    args = ("--constants", "8", "--seeds", "1", "--no-sequential", "--max-candidates", "40")
    code, out = farm(capsys, "simulate", *args, "--crash-rate", "0.5", "--target", "0")
    assert code == 0, out
    assert "[merge] from farm.toml:" in out and "paired=true" in out
    (row,) = rows_of(out)
    assert (row["slots"], row["batch"], row["backlog"]) == ("4", "2", "1")
    assert (row["short screen"], row["paired"]) == ("40%", "on")
    said = decided(out, 1)[0]
    # Crashes caught by a pre-flight, candidates left behind by their short screen.
    assert "crashed" in said and "in pre-flight" in said, said
    assert "at a short screen" in said, said
    # Elsewhere, with no farm.toml: farm's defaults, as `farm run` has them for a target
    # that trains for FARM_BUDGET_S as the synthetic one does (short screens of ¼ budget).
    monkeypatch.chdir(tmp_path)
    code, out = farm(capsys, "simulate", *args)
    assert code == 0, out
    assert "[merge] from farm's defaults for a target that reads FARM_BUDGET_S" in out
    assert "paired=false" in out
    assert rows_of(out)[0]["short screen"] == "25%"
    assert rows_of(out)[0]["batch"].endswith("(sized)")
    # --config names the target from anywhere; a flag overrides the key it names.
    code, out = farm(
        capsys, "simulate", *args, "--config", str(target / "farm.toml"), "--merge", "paired=false"
    )
    assert code == 0, out
    assert f"[merge] from {target / 'farm.toml'}, overridden by --merge paired" in out
    (row,) = rows_of(out)
    assert (row["short screen"], row["paired"], row["batch"]) == ("40%", "off", "2")


def test_rho_decides_whether_paired_screens_pay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Paired screens share a seed with a run of their reference. Where runs of one seed are
    # alike on both commits (ρ 0.95) the spread of their gaps is small and the controller
    # gates screens on it; where they are not (ρ 0), it never does. A noise larger than the
    # effects of the mutations keeps the gaps from being the effects alone.
    monkeypatch.chdir(tmp_path)
    code, out = farm(
        capsys,
        "simulate",
        *QUICK,
        "--noise",
        "30",
        "--target",
        "0",
        "--max-candidates",
        "40",
        "--merge",
        "paired=true",
        "--screen-fraction",
        "0",  # every candidate screened in full, each screen paired
        "--rho",
        "0.95,0",
        "--decisions",
    )
    assert code == 0, out
    assert [r["ρ"] for r in rows_of(out)] == ["0.95", "0"]
    correlated, independent = decided(out, 1), decided(out, 2)
    assert any(ln.strip().startswith("said: screens share a seed") for ln in correlated)
    assert sum("paired with" in ln for ln in correlated) >= 10
    assert not any("paired with" in ln or "said: screens share" in ln for ln in independent)


def test_short_screen_flags_set_their_length_and_bias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Short screens a quarter of a trial long; with nine knobs in ten paying off only at the
    # full budget (--late 0.9) the rank monitor stops them, with none (--late 0) it does not.
    monkeypatch.chdir(tmp_path)
    code, out = farm(
        capsys, "simulate", "--slots", "8", "--constants", "32", "--seeds", "1",
        "--no-sequential", "--target", "0", "--max-candidates", "60",
        "--screen-fraction", "0.25", "--late", "0,0.9",
    )  # fmt: skip
    assert code == 0, out
    fair, biased = rows_of(out)
    assert (fair["short screen"], fair["late knobs"]) == ("25%", "0%")
    assert "off" not in fair["rank τ"] and "off" in biased["rank τ"]
    assert any("said: short screens (75 s) rank candidates unlike" in ln for ln in decided(out, 2))


def test_merge_flags_sweep_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = farm(
        capsys, "simulate", *QUICK, "--target", "0", "--max-candidates", "40",
        "--merge", "confirm=1,4", "--max-rebases", "0",
    )  # fmt: skip
    assert code == 0, out
    assert "confirm=1,4" in out and "max_rebases=0" in out
    one, four = rows_of(out)
    # Fewer confirmations, fewer trials for each decision.
    assert float(one["budgets/cand."]) < float(four["budgets/cand."])


def test_model_flags_shape_the_simulated_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    common = (*QUICK, "--target", "0", "--max-candidates", "30", "--trial", "100", "--llm", "5")
    code, out = farm(capsys, "simulate", *common, "--crash-rate", "0")
    assert code == 0, out
    assert "trials 100 s" in out and "LLM calls 5 s" in out
    assert "crashed" not in decided(out, 1)[0]
    (steady,) = rows_of(out)
    code, out = farm(capsys, "simulate", *common, "--crash-rate", "0.5")
    assert code == 0, out
    assert "crashed" in decided(out, 1)[0]
    # Nodes of 2 slots lost 6 times an hour each: their trials run again, slots stand idle.
    code, out = farm(
        capsys, "simulate", *common, "--crash-rate", "0", "--node-loss", "6", "--node-slots", "2"
    )
    assert code == 0, out
    (lossy,) = rows_of(out)
    assert float(lossy["utilisation"].rstrip("%")) < float(steady["utilisation"].rstrip("%"))


def test_fleet_flags_judge_per_class_or_blind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    fleet = ("--fleet", "a:4,b:2:-1", "--constants", "8", "--seeds", "1", "--no-sequential")
    args = (*fleet, "--target", "0", "--max-candidates", "25", "--decisions")
    code, out = farm(capsys, "simulate", *args)
    assert code == 0, out
    assert rows_of(out)[0]["slots"] == "6"
    assert any("on the baseline's scale" in ln for ln in decided(out, 1))
    code, out = farm(capsys, "simulate", *args, "--blind")
    assert code == 0, out
    assert not any("on the baseline's scale" in ln for ln in decided(out, 1))


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (("--rho", "0.9"), "--rho: only a paired screen"),
        (
            ("--late", "0.5", "--screen-fraction", "0"),
            "--late: it biases short screens, and none run",
        ),
        (("--blind",), "--blind: only with --fleet"),
        (("--node-slots", "4"), "--node-slots: nodes matter only when they are lost"),
        (("--merge", "paired=yes"), '[merge] paired: "yes" is not a boolean'),
        (("--merge", "confirms=2"), "[merge] confirms: unknown key; did you mean 'confirm'?"),
        (("--merge", "max_rebases=1", "--max-rebases", "0"), "max_rebases is given twice"),
        (("--merge", "preflight_s=400"), "preflight_s = 400: not shorter than a simulated trial"),
        (("--config", "nowhere"), "nowhere: give a target directory or its farm.toml"),
    ],
)
def test_a_flag_that_changes_nothing_or_a_bad_value_is_refused(
    flags: tuple[str, ...],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = farm(capsys, "simulate", *QUICK, *flags)
    assert code == 2 and said in out, out


def test_runs_in_processes_of_their_own_give_the_same_table(capsys) -> None:
    args = ("--slots", "2,4", "--constants", "8", "--seeds", "2", "--max-candidates", "30")
    tables = []
    for jobs in ("1", "3"):
        code, out = farm(capsys, "simulate", *args, "--jobs", jobs)
        assert code == 0
        tables.append(rows_of(out))
    assert len(tables[0]) == 2 and tables[0] == tables[1]
