from __future__ import annotations

import ast
from pathlib import Path

import pytest

from farm.records import Direction, Draft, Edit, edit_hash
from proposer.base import LedgerEntry, ProposalContext
from proposer.mutate import MutateProposer
from proposer.validate import Validated, validate_batch

ECLIP_TRAIN = Path(__file__).resolve().parents[2] / "examples" / "eclip" / "train.py"


def hyperparameters(text: str) -> dict[str, object]:
    """Module-level `NAME = value` and `NAME: type = value` assignments."""
    found = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            assert isinstance(target, ast.Name)
            found[target.id] = ast.literal_eval(node.value)
    return found


def propose_all(proposer: MutateProposer, ctx: ProposalContext, n: int = 3) -> list[Draft]:
    """Ask until the proposer has nothing new, recording each draft as the controller would."""
    drafts: list[Draft] = []
    for _ in range(100):
        batch = proposer.propose(ctx, n)
        if not batch:
            return drafts
        assert len(batch) <= n
        drafts += batch
        ctx.seen_hashes |= {edit_hash(d.edits) for d in batch}
    raise AssertionError("the proposer never ran out")


def test_every_draft_validates_and_changes_exactly_one_constant(ctx: ProposalContext) -> None:
    base = ctx.files["train.py"]
    drafts = propose_all(MutateProposer(seed=0), ctx)
    verdicts = validate_batch(
        drafts, files=ctx.files, editable=ctx.editable, seen_hashes=set(), max_edit_bytes=20_000
    )
    before = hyperparameters(base)
    for d, verdict in zip(drafts, verdicts, strict=True):
        assert isinstance(verdict, Validated), (d.title, verdict)
        after = hyperparameters(verdict.files["train.py"])
        changed = [name for name in before if before[name] != after[name]]
        assert changed == [d.title.split()[0]]
        differing = [
            (a, b)
            for a, b in zip(base.splitlines(), verdict.files["train.py"].splitlines(), strict=True)
            if a != b
        ]
        assert len(differing) == 1


def test_only_numeric_unfrozen_knobs_are_mutated_not_locals_or_switches(
    ctx: ProposalContext, constants: set[str]
) -> None:
    drafts = propose_all(MutateProposer(seed=0), ctx)
    assert {d.title.split()[0] for d in drafts} == constants


def test_never_repeats_an_edit_across_calls(ctx: ProposalContext) -> None:
    drafts = propose_all(MutateProposer(seed=0), ctx, n=2)
    hashes = [edit_hash(d.edits) for d in drafts]
    assert len(hashes) == len(set(hashes))
    # Everything seen: nothing is left, even for a fresh proposer.
    assert MutateProposer(seed=0).propose(ctx, 5) == []


@pytest.mark.parametrize("seed", range(4))
def test_tries_every_constant_up_and_down_before_bigger_steps(
    ctx: ProposalContext, constants: set[str], seed: int
) -> None:
    drafts = propose_all(MutateProposer(seed=seed), ctx)
    first = {d.hypothesis for d in drafts[: 2 * len(constants)]}
    assert first == {f"Scale {c} by {f}" for c in constants for f in ("2.0", "0.5")}


def test_first_batch_spreads_over_different_constants(ctx: ProposalContext) -> None:
    batch = MutateProposer(seed=0).propose(ctx, 4)
    assert len({d.title.split()[0] for d in batch}) == 4


def test_order_is_reproducible_per_seed(ctx: ProposalContext) -> None:
    titles = [[d.title for d in MutateProposer(seed=s).propose(ctx, 7)] for s in (0, 0, 1)]
    assert titles[0] == titles[1]
    assert titles[0] != titles[2]


def test_exhausts_and_then_returns_nothing(ctx: ProposalContext) -> None:
    proposer = MutateProposer(seed=0)
    drafts = propose_all(proposer, ctx)
    # floats: x2 x0.5 x4 x0.25; ints ≥ 8: x2 ÷2; DEPTH = 4: x2 ÷2 +1 -1
    assert len(drafts) == 3 * 4 + 3 * 2 + 4
    assert proposer.propose(ctx, 3) == []


def test_keeps_comments_and_literal_style(ctx: ProposalContext) -> None:
    edits = {d.title: d.edits for d in propose_all(MutateProposer(seed=0), ctx)}
    assert edits["LEARNING_RATE 3e-4 → 6e-4"] == [
        Edit(
            "train.py",
            "LEARNING_RATE = 3e-4  # AdamW peak LR",
            "LEARNING_RATE = 6e-4  # AdamW peak LR",
        )
    ]
    assert "LEARNING_RATE 3e-4 → 7.5e-5" in edits
    assert edits["LOGIT_SCALE_MAX 0.5 → 1.0"][0].replace == (
        "LOGIT_SCALE_MAX = 1.0  # clamp on the log-temperature"
    )
    assert "WEIGHT_DECAY 0.1 → 0.025" in edits
    assert "BATCH_SIZE 64 → 128" in edits
    assert "TOTAL_TOKENS 2_000_000 → 1_000_000" in edits
    assert (
        edits["EVAL_EVERY 50 → 25"][0].replace
        == "EVAL_EVERY: int = 25  # steps between evaluations"
    )


def test_small_ints_are_also_nudged_by_one(ctx: ProposalContext) -> None:
    titles = {d.title for d in propose_all(MutateProposer(seed=0), ctx)}
    assert {"DEPTH 4 → 5", "DEPTH 4 → 3", "DEPTH 4 → 8", "DEPTH 4 → 2"} <= titles
    assert "BATCH_SIZE 64 → 65" not in titles


def test_mutates_the_incumbents_current_values_and_does_not_undo_a_kept_change(
    ctx: ProposalContext,
) -> None:
    kept = Edit("train.py", "DEPTH = 4  # transformer blocks", "DEPTH = 8  # transformer blocks")
    ctx.files = {"train.py": ctx.files["train.py"].replace(kept.search, kept.replace)}
    ctx.history = [LedgerEntry(1, "DEPTH 4 → 8", "", "kept", [kept], delta=0.01)]
    titles = {d.title for d in propose_all(MutateProposer(seed=0), ctx)}
    assert "DEPTH 8 → 16" in titles
    assert "DEPTH 8 → 4" not in titles


def test_search_widens_until_the_line_occurs_once() -> None:
    text = "HEAD_DEPTH = 4\nDEPTH = 4\nX = 1\n"
    ctx = ProposalContext("c", "", {"m.py": text}, ["m.py"], "loss", Direction.MINIMIZE)
    drafts = {d.title: d for d in propose_all(MutateProposer(seed=0), ctx)}
    verdicts = validate_batch(
        list(drafts.values()),
        files=ctx.files,
        editable=["m.py"],
        seen_hashes=set(),
        max_edit_bytes=1000,
    )
    assert all(isinstance(v, Validated) for v in verdicts)
    assert drafts["DEPTH 4 → 8"].edits[0].search == "HEAD_DEPTH = 4\nDEPTH = 4\nX = 1"


def test_drafts_carry_provenance(ctx: ProposalContext) -> None:
    batch = MutateProposer(seed=0).propose(ctx, 3)
    assert {(d.proposer, d.strategy) for d in batch} == {("mutate", "one-constant")}
    assert len({d.batch_id for d in batch}) == 1
    assert batch[0].batch_id


def test_bundled_example_mutations_all_validate(ctx: ProposalContext) -> None:
    ctx.files = {"train.py": ECLIP_TRAIN.read_text()}
    drafts = propose_all(MutateProposer(seed=0), ctx, n=8)
    verdicts = validate_batch(
        drafts, files=ctx.files, editable=ctx.editable, seen_hashes=set(), max_edit_bytes=20_000
    )
    assert drafts
    assert all(isinstance(v, Validated) for v in verdicts)


CLASSIFIER = """\
import os

from minisk import RandomForestClassifier, accuracy_score, load_data

seed = int(os.environ.get("FARM_SEED", "0"))
X_train, X_val, y_train, y_val = load_data(test_size=0.25)
clf = RandomForestClassifier(n_estimators=100, max_depth=5, random_state=seed)
clf.fit(X_train, y_train)
print(f"accuracy: {accuracy_score(y_val, clf.predict(X_val)):.4f}")
"""


def test_keyword_argument_hyperparameters_are_mutated() -> None:
    ctx = ProposalContext(
        "c", "", {"train.py": CLASSIFIER}, ["train.py"], "acc", Direction.MAXIMIZE
    )
    proposer = MutateProposer(seed=0)
    assert proposer.nothing_to_try(ctx) == ""
    drafts = propose_all(proposer, ctx)
    assert {d.title for d in drafts} == {
        "RandomForestClassifier.n_estimators 100 → 200",
        "RandomForestClassifier.n_estimators 100 → 50",
        "RandomForestClassifier.max_depth 5 → 10",
        "RandomForestClassifier.max_depth 5 → 2",
        "RandomForestClassifier.max_depth 5 → 6",
        "RandomForestClassifier.max_depth 5 → 4",
    }
    verdicts = validate_batch(
        drafts, files=ctx.files, editable=ctx.editable, seen_hashes=set(), max_edit_bytes=20_000
    )
    assert all(isinstance(v, Validated) for v in verdicts)


def test_declared_constants_go_before_inline_keywords() -> None:
    text = "LR = 0.1\nDEPTH = 4\nmodel = Net(width=64, dropout=0.4)\n"
    ctx = ProposalContext("c", "", {"m.py": text}, ["m.py"], "loss", Direction.MINIMIZE)
    names = [d.title.split()[0] for d in propose_all(MutateProposer(seed=1), ctx)]
    assert len(names) == 8 + 6  # LR, DEPTH: x2 x0.5 then x4 x0.25 / ±1; Net.width x2 x0.5
    assert set(names[:4]) == {"LR", "DEPTH"}  # x2 and x0.5 of every constant first
    assert set(names[4:8]) == {"LR", "DEPTH"}
    assert set(names[8:10]) == {"Net.width", "Net.dropout"}


def test_a_file_without_knobs_says_there_is_nothing_to_try() -> None:
    text = "import os\nseed = int(os.environ['FARM_SEED'])\nprint(f'loss: {seed * 0.1}')\n"
    ctx = ProposalContext("c", "", {"run.py": text}, ["run.py"], "loss", Direction.MINIMIZE)
    why = MutateProposer(seed=0).nothing_to_try(ctx)
    assert "found no number it can change in the editable files (run.py)" in why
    assert MutateProposer(seed=0).propose(ctx, 4) == []


def test_values_just_below_one_move_their_distance_to_one() -> None:
    text = "opt = AdamW(params, betas=(0.9, 0.999))\nCOOLING = 0.9995\n"
    ctx = ProposalContext("c", "", {"m.py": text}, ["m.py"], "loss", Direction.MINIMIZE)
    titles = {d.title for d in propose_all(MutateProposer(seed=0), ctx)}
    assert {
        "AdamW.betas[0] 0.9 → 0.8",
        "AdamW.betas[0] 0.9 → 0.95",
        "AdamW.betas[0] 0.9 → 0.6",
    } <= titles
    assert {"COOLING 0.9995 → 0.999", "COOLING 0.9995 → 0.99975"} <= titles
    assert all(0 < float(t.split(" → ")[1]) < 1 for t in titles)
