"""`farm init` on a corpus of autoresearch-format repos (tests/targets/): the farm.toml it
writes, then a short campaign on it; and how it says what it could not find."""

from __future__ import annotations

import io
import random
import shutil
import tomllib
from pathlib import Path

import pytest
from helpers import RunCampaign, farm, git

from farm.config import MergeConfig, load_config
from farm.errors import FarmError
from farm.init import init_target
from farm.progress import baseline_noise
from farm.records import DecisionKind, Direction, TrialState
from farm.trials import trial_seed

TARGETS = Path(__file__).resolve().parents[1] / "targets"
NO_SEED = "no file reads $FARM_SEED"
WALL_CLOCK = "it stops on wall-clock time ({}): its metric depends on the machine's load"


def spec(editable: str, protected: list[str], command: str, metric: str, direction: str,
         budget_s: int = 60, program: str = "program.md") -> dict[str, object]:  # fmt: skip
    """Every key farm init writes (seed_env is FARM_SEED for every corpus repo)."""
    return {
        "editable": [editable],
        "protected": protected,
        "command": command,
        "metric": metric,
        "direction": direction,
        "budget_s": budget_s,
        "program": program,
        "seed_env": "FARM_SEED",
    }


# target -> (the whole spec farm init must write, a piece of each warning it must give, the
# commands it must leave out unrun and why)
CORPUS: dict[str, tuple[dict[str, object], list[str], list[str]]] = {
    # scikit-learn-style regression, fixed random_state: every run prints the same number.
    "ridge_regression": (
        spec("train.py", ["minisk.py", "prepare.py"], "python train.py", "val_rmse", "minimize"),
        [NO_SEED],
        [],
    ),
    # Classifier with keyword-argument hyperparameters, accuracy, a warning line printed.
    "forest_classifier": (
        spec("train.py", ["minisk.py", "prepare.py"], "python train.py", "accuracy", "maximize"),
        [NO_SEED],
        [],
    ),
    # Stdlib heuristic under a wall-clock budget, program_TSP.md, `name : value`, a doc
    # naming a file that does not exist.
    "tsp_heuristic": (
        spec(
            "optimize.py",
            ["evaluate.py"],
            "python optimize.py",
            "tour_length",
            "minimize",
            program="program_TSP.md",
        ),
        [
            "program_TSP.md names instances.py, which is not in the repo",
            WALL_CLOCK.format("optimize.py: `time.time() - start < TIME_BUDGET_SECONDS`"),
        ],
        [],
    ),
    # `python run.py` (from the README) evaluates the model of train.py and prints the metric
    # as `name=value`: run.py is protected because it is what the command runs.
    "evaluator_run": (
        spec("train.py", ["run.py"], "python run.py", "val_loss", "minimize"),
        [],
        [],
    ),
    # SGD whose runs now and then diverge from a bad initialisation: a heavy tail.
    "divergent_sgd": (
        spec("train.py", ["prepare.py"], "python train.py", "val_loss", "minimize"),
        [],
        [],
    ),
    # `[run] score=...` lines, a config dict of knobs, higher is better.
    "tagged_score": (
        spec("solve.py", ["data.py"], "python solve.py", "score", "maximize"),
        [],
        [],
    ),
    # karpathy/autoresearch's own layout: a summary block of several lines after `---`, a
    # command with a redirection, "What you CANNOT do".
    "autoresearch_mlp": (
        spec("train.py", ["prepare.py"], "python train.py", "val_loss", "minimize"),
        [],
        [],
    ),
    # The README's first commands list the data and check the setup; the Makefile repeats
    # them: only `python3 train.py` trains.
    "data_step_first": (
        spec("train.py", ["prepare.py"], "python3 train.py", "val_mse", "minimize"),
        [],
        [
            "`python3 prepare.py --list` (README.md): a setup or data step (prepare.py)",
            "`python3 train.py --dry-run` (README.md): a listing or checking step (--dry-run)",
        ],
    ),
    # Every command behind `uv run`, a uv.lock: farm runs plain python and says how to
    # activate the project's environment; the probe never runs uv.
    "uv_project": (
        spec("train.py", ["prepare.py"], "python train.py", "val_loss", "minimize"),
        [
            "README.md runs it through uv (`uv run train.py`); farm runs `python train.py` "
            "with the python on PATH, so activate the project's environment before `farm "
            "run`: uv (uv.lock): `uv sync`, then `source .venv/bin/activate`"
        ],
        ["`uv run prepare.py` (README.md): a setup or data step (prepare.py)"],
    ),
    # A reading list naming the harness, a "What you CANNOT do" list whose item says only
    # "Modify `prepare.py`", and a README inviting to tune it: protected, with a CHECK line.
    "reading_list": (
        spec("optimize.py", ["prepare.py"], "python optimize.py", "cost", "minimize"),
        [
            'prepare.py is protected (program.md: "**What you CANNOT do:** Modify '
            '`prepare.py`."), though README.md: "its constants can be tuned to try other '
            'maps.": a prohibition wins'
        ],
        [],
    ),
    # The seed is an argparse flag: the command passes the trial's seed through it.
    "seed_flag": (
        spec(
            "train.py", ["data.py"], "python train.py --seed $FARM_SEED", "val_accuracy", "maximize"
        ),
        [],
        [],
    ),
    # autoresearch's budget: trains for TIME_BUDGET seconds of wall clock; program.md says to
    # kill a run after 2 minutes.
    "documented_budget": (
        spec("train.py", ["prepare.py"], "python train.py", "val_bpb", "minimize", 120),
        [WALL_CLOCK.format("train.py: `time.time() - t0 < TIME_BUDGET`")],
        [],
    ),
    # A game bot, not a model: a deterministic win rate; program.md names the key metric
    # among two that say "higher is better" by their names alone.
    "game_bot": (
        spec("bot.py", ["arena.py"], "python arena.py", "win_rate", "maximize"),
        [NO_SEED],
        [],
    ),
}


def corpus_repo(tmp_path: Path, name: str) -> Path:
    """A committed git repo holding tests/targets/<name>, with no farm.toml yet."""
    root = tmp_path / name
    shutil.copytree(TARGETS / name, root, ignore=shutil.ignore_patterns("__pycache__"))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "baseline")
    return root


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_init_writes_the_right_spec_for_each_corpus_repo(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = corpus_repo(tmp_path, name)
    code, out = farm(capsys, "init", str(root))
    assert code == 0, out
    expected, warnings, left_out = CORPUS[name]
    assert f"running `{expected['command']}` once to read its output" in out
    assert out.count("running `") == 1, out  # the first command probed is the one
    text = (root / "farm.toml").read_text()
    # Every key it writes, and only these: every other key keeps its one default, listed
    # commented out for the user to set (a copied default would freeze it in the file).
    assert tomllib.loads(text) == expected
    out = " ".join(out.split())  # the terminal's lines, unwrapped
    for w in warnings:
        assert w in out and f"# CHECK: {w}" in " ".join(text.split())
    assert out.count("warning:") == len(warnings), out
    for c in left_out:  # each command that is no trial, unrun, with why
        assert f"left out {c}" in out
    assert out.count("left out `") == len(left_out), out
    for path in [*expected["editable"], *expected["protected"]]:  # type: ignore[misc]
        assert (root / path).is_file()  # never a file that does not exist
    assert "# [merge]\n# repeats = 24" in text
    assert load_config(root).merge == MergeConfig()


@pytest.mark.parametrize(
    "name",
    sorted(CORPUS),
)
def test_a_short_campaign_runs_to_a_decision_on_what_init_wrote(
    tmp_path: Path, name: str, run_campaign: RunCampaign
) -> None:
    root = corpus_repo(tmp_path, name)
    toml = init_target(root, out=io.StringIO())
    # Shorter than the defaults, so a campaign fits in a test.
    toml.write_text(toml.read_text() + "[merge]\nrepeats = 4\nconfirm = 1\n")
    git(root, "add", "farm.toml")
    git(root, "commit", "-q", "-m", "farm.toml")
    done = run_campaign(root, max_candidates=2)
    assert done.code == 0, done.output
    decisions = done.store.list_decisions("default")
    assert len(decisions) == 2, done.output
    assert {d.kind for d in decisions} <= {DecisionKind.KEPT, DecisionKind.DISCARDED}
    trials = done.store.list_trials("default")
    assert trials and all(t.state is TrialState.DONE for t in trials)
    camp = done.store.get_campaign("default")
    assert camp is not None and camp.sigma is not None


def test_a_heavy_tailed_target_names_its_outliers_and_judges_without_them(
    tmp_path: Path, run_campaign: RunCampaign
) -> None:
    root = corpus_repo(tmp_path, "divergent_sgd")
    toml = init_target(root, out=io.StringIO())
    toml.write_text(toml.read_text() + "[merge]\nconfirm = 1\n")
    git(root, "add", "farm.toml")
    git(root, "commit", "-q", "-m", "farm.toml")
    done = run_campaign(root, max_candidates=2)
    assert done.code == 0, done.output
    # The runs that diverge are the ones whose seed draws the bad initialisation first.
    diverged = [
        f"base-{i}"
        for i in range(12)
        if random.Random(trial_seed(f"default/base-{i}")).random() < 1 / 12
    ]
    assert diverged  # this campaign's seeds do draw some
    said = baseline_noise(done.store, "default")
    assert said.endswith("outliers left out of σ and the mean: " + ", ".join(diverged)), said
    camp = done.store.get_campaign("default")
    assert camp is not None and camp.sigma is not None and camp.baseline_metric is not None
    # Normal runs end between 0.3 and 1.6, diverged ones near 40: neither σ nor the mean
    # may carry them (with them σ would be above 10).
    assert camp.sigma < 0.6 and camp.baseline_metric < 1.6
    assert len(done.store.list_decisions("default")) == 2


def repo(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "repo"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_failing_command_writes_nothing_and_shows_its_output(tmp_path: Path) -> None:
    root = repo(tmp_path, {"train.py": 'raise SystemExit("no data in ./data: run prepare")\n'})
    with pytest.raises(FarmError, match="exited 1 in a copy of the repo") as err:
        init_target(root, out=io.StringIO())
    assert "no data in ./data" in str(err.value)
    assert not (root / "farm.toml").exists()


def test_output_without_a_summary_line_says_which_formats_are_read(tmp_path: Path) -> None:
    root = repo(tmp_path, {"train.py": 'print("final accuracy is 0.93 (best)")\n'})
    with pytest.raises(FarmError, match="no summary line") as err:
        init_target(root, out=io.StringIO())
    assert "'final accuracy is 0.93 (best)'" in str(err.value)
    assert "metric_regex" in str(err.value)
    assert not (root / "farm.toml").exists()


def test_a_metric_that_is_not_printed_is_refused_with_the_closest_lines(tmp_path: Path) -> None:
    root = repo(tmp_path, {"train.py": 'print("val_los: 0.5")\nprint("step: 3")\n'})
    with pytest.raises(FarmError, match="--metric val_loss: the probe printed no") as err:
        init_target(root, metric="val_loss", out=io.StringIO())
    assert "'val_los: 0.5'" in str(err.value)


def test_an_unsure_direction_is_asked_when_someone_can_answer(tmp_path: Path) -> None:
    root = repo(tmp_path, {"train.py": 'print("zeta: 0.5")\n'})
    asked: list[str] = []

    def answer(question: str) -> str:
        asked.append(question)
        return "y"

    init_target(root, ask=answer, out=io.StringIO())
    assert asked == ["is a higher zeta better? [y/N] "]
    assert tomllib.loads((root / "farm.toml").read_text())["direction"] == "maximize"


def test_an_unsure_direction_without_anyone_to_ask_is_a_marked_guess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = repo(tmp_path, {"train.py": 'print("zeta: 0.5")\n'})
    code, out = farm(capsys, "init", str(root))
    assert code == 0
    text = (root / "farm.toml").read_text()
    assert "whether a lower or higher zeta is better" in out
    assert 'direction = "minimize"' in text and "# CHECK: minimize or maximize (a guess)" in text
    assert "the trial's seed" in text  # a plain apostrophe, not `the trial"s`


def test_without_a_probe_every_unchecked_value_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = "Edit `train.py` only. Do not modify `prepare.py`.\n\nIt prints `loss: <value>`.\n"
    root = repo(tmp_path, {"train.py": "x = 1\n", "prepare.py": "", "program.md": docs})
    code, out = farm(capsys, "init", str(root), "--no-probe")
    assert code == 0, out
    assert "running" not in out
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert (spec["editable"], spec["protected"], spec["metric"]) == (
        ["train.py"],
        ["prepare.py"],
        "loss",
    )
    assert "metric 'loss' was not checked" in out and "budget_s = 300 is the default" in out


def test_the_docs_may_name_the_editable_file_by_exception(tmp_path: Path) -> None:
    docs = "Do not modify any file other than `model.py`. `data.py` is read-only.\n"
    root = repo(
        tmp_path,
        {
            "model.py": "LR = 0.1\n",
            "data.py": "ROWS = 3\n",
            "main.py": "import data\nimport model\nprint(f'loss: {model.LR}')\n",
            "README.md": "Run `python main.py`.\n",
            "program.md": docs,
        },
    )
    init_target(root, direction=Direction.MINIMIZE, out=io.StringIO())
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert (spec["editable"], spec["protected"], spec["command"]) == (
        ["model.py"],
        ["data.py", "main.py"],
        "python main.py",
    )


def test_a_command_whose_program_is_missing_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = repo(
        tmp_path,
        {"train.py": "", "uv.lock": "version = 1\n", "program.md": "Run `uv run train.py`.\n"},
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FarmError, match=r"`python` .* is not on PATH here") as err:
        init_target(root, out=io.StringIO())
    assert "activate the project's environment (uv (uv.lock): `uv sync`" in str(err.value)


def test_a_missing_module_says_which_environment_to_activate(tmp_path: Path) -> None:
    root = repo(
        tmp_path,
        {
            "train.py": "import farm_no_such_module.linear\nprint('loss: 1')\n",
            "poetry.lock": "",
            "README.md": "Run `poetry run python train.py`.\n",
        },
    )
    out = io.StringIO()
    with pytest.raises(FarmError) as err:
        init_target(root, out=out)
    assert "`python train.py` exited 1: no module named 'farm_no_such_module'" in str(err.value)
    assert "Activate the project's environment, poetry (poetry.lock): `poetry install`" in str(
        err.value
    )
    assert "running `python train.py`" in out.getvalue()  # never `poetry run`: it installs


def test_commands_are_probed_likeliest_first_until_one_prints_a_metric(tmp_path: Path) -> None:
    files = {
        "report.py": "print('report written to report.html')\n",
        "agent.py": "import anthropic\n",
        "train.py": "LR = 0.1\nprint(f'loss: {LR}')\n",
        "README.md": (
            "Drive it with `python agent.py`, or by hand:\n\n    python report.py\n"
            "    python train.py\n"
        ),
    }
    root = repo(tmp_path, files)
    out = io.StringIO()
    init_target(root, direction=Direction.MINIMIZE, out=out)
    said = out.getvalue()
    assert "left out `python agent.py` (README.md): drives a coding agent (anthropic)" in said
    assert said.index("running `python report.py`") < said.index("running `python train.py`")
    assert "not the command: printed no summary line" in said
    text = (root / "farm.toml").read_text()
    assert tomllib.loads(text)["command"] == "python train.py"
    assert "`python agent.py`: drives a coding agent (anthropic)" in text
    assert "`python report.py`: printed no summary line" in text

    # None prints one: the error names each command and why it is not the one.
    (root / "farm.toml").unlink()
    (root / "train.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(FarmError, match="no command the repo shows printed a metric") as err:
        init_target(root, out=io.StringIO())
    assert "`python report.py` (README.md): the probe printed no summary line" in str(err.value)
    assert "`python train.py` (README.md): `python train.py` exited 3" in str(err.value)
    assert not (root / "farm.toml").exists()


def test_seed_arguments_and_variables_carry_the_trials_seed(tmp_path: Path) -> None:
    def init(files: dict[str, str]) -> dict[str, object]:
        root = repo(tmp_path / str(len(list(tmp_path.iterdir()))), files)
        out = io.StringIO()
        init_target(root, probe=False, metric="loss", direction=Direction.MINIMIZE, out=out)
        assert NO_SEED not in out.getvalue()
        return tomllib.loads((root / "farm.toml").read_text())

    hydra = init({"train.py": "", "README.md": "Run `python train.py seed=3 lr=0.1`.\n"})
    assert (hydra["command"], hydra["seed_env"]) == (
        "python train.py seed=$FARM_SEED lr=0.1",
        "FARM_SEED",
    )
    env = "import os\nrandom_state = int(os.environ.get('RANDOM_STATE', 0))\n"
    by_env = init({"train.py": env, "README.md": "Run `python train.py`.\n"})
    assert (by_env["command"], by_env["seed_env"]) == ("python train.py", "RANDOM_STATE")


def test_karpathy_autoresearch_wording_gives_every_field(tmp_path: Path) -> None:
    """Sentences of karpathy/autoresearch's program.md and README that misled init: a "do
    NOT use tee" beside the command, a code block listing every file, "Not modified.", a
    "Timeout" heading over "~5 minutes", "the lowest val_bpb." before "increase"."""
    program = (
        "The training script runs for a **fixed time budget of 5 minutes** (wall clock). "
        "You launch it simply as: `uv run train.py`.\n\n"
        "**What you CAN do:**\n- Modify `train.py` — this is the only file you edit.\n\n"
        "**What you CANNOT do:**\n- Modify `prepare.py`. It is read-only.\n\n"
        "4. Run the experiment: `uv run train.py > run.log 2>&1` (redirect everything — do "
        "NOT use tee or let output flood your context)\n\n"
        "**Timeout**: Each experiment should take ~5 minutes total (+ a few seconds for "
        "startup and eval overhead). If a run exceeds 10 minutes, kill it and treat it as a "
        "failure.\n\n**The goal is simple: get the lowest val_bpb.** Some increase is "
        "acceptable for meaningful val_bpb gains.\n"
    )
    readme = (
        "- **`prepare.py`** — fixed constants, one-time data prep. Not modified.\n\n"
        "```\nprepare.py      — constants, data prep (do not modify)\n"
        "train.py        — model, optimizer, training loop (agent modifies this)\n```\n\n"
        "```bash\nuv sync\nuv run prepare.py\nuv run train.py\n```\n"
    )
    files = {"train.py": "", "prepare.py": "", "program.md": program, "README.md": readme}
    root = repo(tmp_path, {**files, "uv.lock": ""})
    out = io.StringIO()
    init_target(root, probe=False, metric="val_bpb", out=out)
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert {k: spec[k] for k in ("editable", "protected", "command", "direction")} == {
        "editable": ["train.py"],
        "protected": ["prepare.py"],
        "command": "python train.py",
        "direction": "minimize",
    }
    assert spec["budget_s"] == 600  # "exceeds 10 minutes, kill it": the limit
    said = " ".join(out.getvalue().split())
    assert "left out `uv run prepare.py` (README.md): a setup or data step" in said
    assert "both" not in said and "a prohibition wins" not in said  # no conflict there


def test_a_documented_limit_the_probe_overran_gives_way_to_the_probe(tmp_path: Path) -> None:
    docs = (
        "Edit `train.py` only. A trial must finish within the budget (0.5 s wall clock, "
        "including imports).\n"
    )
    train = "import time\ntime.sleep(0.6)\nprint('loss: 1.0')\n"
    root = repo(tmp_path, {"train.py": train, "program.md": docs})
    out = io.StringIO()
    init_target(root, direction=Direction.MINIMIZE, out=out)
    assert tomllib.loads((root / "farm.toml").read_text())["budget_s"] == 60
    assert "the docs limit a run to 0.5 s" in out.getvalue()
    assert "wrote budget_s = 60" in out.getvalue()


def test_an_environment_manager_becomes_advice_to_activate_its_environment(
    tmp_path: Path,
) -> None:
    docs = "Edit `model.py`, never `score.py`.\n\n    conda run -n lab python train.py\n"
    files = {"train.py": "", "model.py": "", "score.py": "", "README.md": docs}
    root = repo(tmp_path, files)
    out = io.StringIO()
    init_target(root, probe=False, metric="loss", direction=Direction.MINIMIZE, out=out)
    spec = tomllib.loads((root / "farm.toml").read_text())
    # One clause, two files: each takes the word nearest to it.
    assert (spec["editable"], spec["protected"]) == (["model.py"], ["score.py", "train.py"])
    assert spec["command"] == "python train.py"
    said = " ".join(out.getvalue().split())
    assert "README.md runs it through conda (`conda run -n lab python train.py`)" in said
    assert "activate the project's environment before `farm run`: conda: `conda activate lab`" in (
        said
    )


def test_a_documented_training_time_sets_the_budget_with_room_to_evaluate(
    tmp_path: Path,
) -> None:
    docs = (
        "Edit `train.py` only. Each run trains for a fixed time budget of 5 minutes, then "
        "evaluates.\n\nRun `python train.py`.\n"
    )
    root = repo(tmp_path, {"train.py": "", "program.md": docs})
    out = io.StringIO()
    init_target(root, probe=False, metric="loss", direction=Direction.MINIMIZE, out=out)
    # 300 s of training, a quarter and 30 s more: start-up, evaluation, a busy node.
    assert tomllib.loads((root / "farm.toml").read_text())["budget_s"] == 410
    assert "budget_s = 300 is the default" not in out.getvalue()


def test_equally_likely_metrics_are_asked_about_or_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = repo(tmp_path, {"train.py": 'print("loss: 0.7")\nprint("accuracy: 0.6")\n'})
    init_target(root, ask=lambda question: "accuracy", out=io.StringIO())
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert (spec["metric"], spec["direction"]) == ("accuracy", "maximize")

    (root / "farm.toml").unlink()
    code, out = farm(capsys, "init", str(root))
    assert code == 0
    assert "metric 'loss' is a guess among equally likely lines (accuracy)" in out


def test_init_proposes_freezing_the_evaluation_protocol_of_the_editable_file_and_says_why(
    tmp_path: Path,
) -> None:
    train = (
        "LR = 0.1\nEVAL_DAYS = 30\nSPLIT_SEED = 7\n\n\nclass ValidationConfig:\n"
        "    n_folds = 5\n    purge = 10\n\n\nclass Config:\n    depth = 4\n"
        "    embargo_days = 2\n\n\ncv = TimeSeriesSplit(n_splits=5, gap=3)\n"
        "print(f'loss: {LR}')\n"
    )
    docs = "Edit `train.py` only.\n\nIt prints `loss: <value>`.\n"
    root = repo(tmp_path, {"train.py": train, "program.md": docs})
    out = io.StringIO()
    init_target(root, probe=False, metric="loss", direction=Direction.MINIMIZE, out=out)
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert spec["frozen"] == [
        "EVAL_DAYS",
        "SPLIT_SEED",
        "ValidationConfig",
        "Config.embargo_days",
        "TimeSeriesSplit",
    ]
    assert "look like the evaluation protocol" in out.getvalue()
    (tmp_path / "plain").mkdir()
    plain = repo(tmp_path / "plain", {"train.py": "LR = 0.1\n", "program.md": docs})
    init_target(plain, probe=False, metric="loss", direction=Direction.MINIMIZE, out=out)
    assert "frozen" not in tomllib.loads((plain / "farm.toml").read_text())


def test_what_the_evaluator_imports_and_reads_is_protected_with_it(tmp_path: Path) -> None:
    root = repo(
        tmp_path,
        {
            "train.py": "LR = 0.1\nopen('model.txt', 'w').write('0.1')\nprint(f'loss: {LR}')\n",
            "evaluate.py": (
                "import json\n"
                "import scoring\n"
                "import train\n"
                "labels = json.load(open('data/labels.json'))\n"
                "print(f'loss: {abs(train.LR - labels[0])}')\n"
            ),
            "scoring.py": "SCALE = 1.0  # a helper only the evaluator imports\n",
            "data/labels.json": "[0.5]\n",
            "notes.txt": "not read by anything\n",
            "README.md": "Run `python train.py`; `python evaluate.py` scores a run.\n",
            "program.md": "`train.py` is the only file you edit.\n",
        },
    )
    out = io.StringIO()
    init_target(root, direction=Direction.MINIMIZE, out=out)
    spec = tomllib.loads((root / "farm.toml").read_text())
    assert (spec["editable"], spec["command"]) == (["train.py"], "python train.py")
    assert spec["protected"] == ["data/labels.json", "evaluate.py", "scoring.py"]
    assert "read by those: data/labels.json" in " ".join(out.getvalue().split())
    # What the probe run left is proposed as `artifacts`, for an `evaluate` step.
    assert '# artifacts = ["model.txt"]' in (root / "farm.toml").read_text()
