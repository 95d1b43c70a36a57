from __future__ import annotations

import pytest

from farm.records import Draft, Edit, edit_hash
from proposer.knobs import find_knobs
from proposer.validate import Rejected, Validated, near_duplicates, validate_batch, validate_draft

DEPTH_LINE = "DEPTH = 4  # transformer blocks"


def draft(*edits: Edit, title: str = "Deeper model", hypothesis: str = "") -> Draft:
    return Draft(title=title, hypothesis=hypothesis, edits=list(edits))


def check(
    d: Draft,
    files: dict[str, str],
    *,
    editable: tuple[str, ...] = ("train.py",),
    seen: frozenset[str] = frozenset(),
    max_edit_bytes: int = 20_000,
) -> Validated | Rejected:
    return validate_draft(
        d,
        files=files,
        editable=list(editable),
        seen_hashes=set(seen),
        max_edit_bytes=max_edit_bytes,
    )


def rejected(verdict: Validated | Rejected) -> str:
    assert isinstance(verdict, Rejected), verdict
    return verdict.reason


def test_good_edit_gives_the_new_file_and_its_hash(train_py: str) -> None:
    edit = Edit("train.py", DEPTH_LINE, "DEPTH = 6  # transformer blocks")
    verdict = check(draft(edit), {"train.py": train_py})
    assert isinstance(verdict, Validated)
    assert verdict.files == {
        "train.py": train_py.replace(DEPTH_LINE, "DEPTH = 6  # transformer blocks")
    }
    assert verdict.edit_hash == edit_hash([edit])
    assert verdict.warnings == []


def test_later_edits_apply_to_the_text_earlier_edits_left(train_py: str) -> None:
    d = draft(
        Edit("train.py", "DEPTH = 4", "DEPTH = 6"),
        Edit("train.py", "DEPTH = 6", "DEPTH = 8"),
    )
    verdict = check(d, {"train.py": train_py})
    assert isinstance(verdict, Validated)
    assert "DEPTH = 8  # transformer blocks" in verdict.files["train.py"]


def test_search_not_found_is_rejected(train_py: str) -> None:
    reason = rejected(
        check(draft(Edit("train.py", "DEPTH = 5", "DEPTH = 6")), {"train.py": train_py})
    )
    assert "search text not found in train.py" in reason
    assert reason.startswith("edit 1 ")


def test_search_matching_twice_asks_for_more_context(train_py: str) -> None:
    reason = rejected(check(draft(Edit("train.py", "LEARNING_RATE", "LR")), {"train.py": train_py}))
    assert "matches 2 times" in reason
    assert "include more context" in reason


def test_overlapping_matches_count_as_several() -> None:
    reason = rejected(check(draft(Edit("train.py", "aa", "b")), {"train.py": "x = 'aaa'\n"}))
    assert "matches 2 times" in reason


def test_path_outside_editable_names_it_and_lists_editable_files(train_py: str) -> None:
    files = {"train.py": train_py, "model.py": "X = 1\n"}
    reason = rejected(
        check(draft(Edit("model.py", "X = 1", "X = 2")), files, editable=("train.py", "optim.py"))
    )
    assert "'model.py'" in reason
    assert "train.py, optim.py" in reason


def test_protected_file_cannot_be_edited(train_py: str) -> None:
    reason = rejected(check(draft(Edit("prepare.py", "", "EVIL = 1\n")), {"train.py": train_py}))
    assert "prepare.py is not an editable file" in reason


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../train.py", "'..'"),
        ("sub/../../train.py", "'..'"),
        ("/etc/passwd", "absolute"),
        ("sub\\train.py", "forward slashes"),
        ("", "empty path"),
    ],
)
def test_unsafe_paths_are_rejected(train_py: str, path: str, why: str) -> None:
    reason = rejected(check(draft(Edit(path, DEPTH_LINE, "DEPTH = 6")), {"train.py": train_py}))
    assert why in reason
    assert "editable files: train.py" in reason


def test_paths_are_normalised_before_matching_editable(train_py: str) -> None:
    verdict = check(draft(Edit("./train.py", DEPTH_LINE, "DEPTH = 6")), {"train.py": train_py})
    assert isinstance(verdict, Validated)
    assert list(verdict.files) == ["train.py"]


def test_draft_over_the_size_limit_is_rejected(train_py: str) -> None:
    d = draft(Edit("train.py", DEPTH_LINE, DEPTH_LINE + "\n" + "# padding\n" * 20))
    reason = rejected(check(d, {"train.py": train_py}, max_edit_bytes=100))
    assert "over the limit of 100" in reason


def test_syntax_error_in_the_result_names_the_line(train_py: str) -> None:
    line = train_py.splitlines().index(DEPTH_LINE) + 1
    reason = rejected(
        check(draft(Edit("train.py", DEPTH_LINE, "DEPTH = = 4")), {"train.py": train_py})
    )
    assert f"train.py does not parse after the edits: line {line}:" in reason
    assert "DEPTH = = 4" in reason


def test_non_python_files_are_not_parsed() -> None:
    files = {"notes.md": "# Notes\n"}
    verdict = check(draft(Edit("notes.md", "# Notes", "def (")), files, editable=("notes.md",))
    assert isinstance(verdict, Validated)


def test_no_op_edit_is_rejected(train_py: str) -> None:
    reason = rejected(
        check(draft(Edit("train.py", DEPTH_LINE, DEPTH_LINE)), {"train.py": train_py})
    )
    assert "identical" in reason


def test_edits_that_cancel_out_are_rejected(train_py: str) -> None:
    d = draft(
        Edit("train.py", "DEPTH = 4", "DEPTH = 6"), Edit("train.py", "DEPTH = 6", "DEPTH = 4")
    )
    assert "as it was" in rejected(check(d, {"train.py": train_py}))


def test_draft_needs_a_title_and_an_edit(train_py: str) -> None:
    files = {"train.py": train_py}
    assert "no title" in rejected(check(draft(Edit("train.py", "a", "b"), title=" "), files))
    assert "no edits" in rejected(check(draft(), files))


def test_duplicate_of_a_seen_hash_is_rejected(train_py: str) -> None:
    edit = Edit("train.py", DEPTH_LINE, "DEPTH = 6  # transformer blocks")
    # Whitespace at line ends does not hide a duplicate.
    d = draft(Edit(edit.path, edit.search + "  ", edit.replace))
    verdict = check(d, {"train.py": train_py}, seen=frozenset({edit_hash([edit])}))
    assert "duplicate of an earlier candidate" in rejected(verdict)


def test_identical_drafts_in_one_batch_second_is_a_duplicate(train_py: str) -> None:
    edit = Edit("train.py", DEPTH_LINE, "DEPTH = 6  # transformer blocks")
    seen: set[str] = set()
    verdicts = validate_batch(
        [draft(edit), draft(edit)],
        files={"train.py": train_py},
        editable=["train.py"],
        seen_hashes=seen,
        max_edit_bytes=20_000,
    )
    assert isinstance(verdicts[0], Validated)
    assert "duplicate" in rejected(verdicts[1])
    assert seen == set()  # the caller's set is left alone


def test_same_result_spelled_differently_in_one_batch_is_a_duplicate(train_py: str) -> None:
    verdicts = validate_batch(
        [
            draft(Edit("train.py", "DEPTH = 4", "DEPTH = 6")),
            draft(Edit("train.py", DEPTH_LINE, "DEPTH = 6  # transformer blocks")),
            draft(Edit("train.py", DEPTH_LINE, "DEPTH = 8  # transformer blocks")),
        ],
        files={"train.py": train_py},
        editable=["train.py"],
        seen_hashes=set(),
        max_edit_bytes=20_000,
    )
    assert isinstance(verdicts[0], Validated)
    assert "same files as draft 1" in rejected(verdicts[1])
    assert isinstance(verdicts[2], Validated)


def test_empty_search_creates_a_missing_editable_file(train_py: str) -> None:
    d = draft(Edit("extra.py", "", "SCALE = 2.0\n"))
    verdict = check(d, {"train.py": train_py}, editable=("train.py", "extra.py"))
    assert isinstance(verdict, Validated)
    assert verdict.files == {"extra.py": "SCALE = 2.0\n"}


def test_empty_search_on_an_existing_file_is_rejected(train_py: str) -> None:
    reason = rejected(check(draft(Edit("train.py", "", "X = 1\n")), {"train.py": train_py}))
    assert "already exists" in reason


def test_search_in_a_missing_file_says_how_to_create_it(train_py: str) -> None:
    d = draft(Edit("extra.py", "X = 1", "X = 2"))
    reason = rejected(check(d, {"train.py": train_py}, editable=("train.py", "extra.py")))
    assert "extra.py does not exist yet" in reason


def test_near_duplicate_hypothesis_is_flagged() -> None:
    earlier = ["Double the learning rate to 6e-4.", "Halve the model depth"]
    assert near_duplicates("double the Learning Rate to 6e-4", earlier) == [earlier[0]]
    assert near_duplicates("Use a cosine schedule", earlier) == []


def test_near_duplicate_in_a_batch_is_a_warning_not_a_rejection(train_py: str) -> None:
    verdicts = validate_batch(
        [
            draft(
                Edit("train.py", "DEPTH = 4", "DEPTH = 6"), hypothesis="A deeper model fits better"
            ),
            draft(
                Edit("train.py", "DEPTH = 4", "DEPTH = 8"), hypothesis="a deeper model fits better!"
            ),
        ],
        files={"train.py": train_py},
        editable=["train.py"],
        seen_hashes=set(),
        max_edit_bytes=20_000,
    )
    assert isinstance(verdicts[0], Validated)
    assert verdicts[0].warnings == []
    assert isinstance(verdicts[1], Validated)
    assert verdicts[1].warnings == [
        "hypothesis resembles an earlier one: 'A deeper model fits better'"
    ]


PROTOCOL = """\
from dataclasses import dataclass

LR = 0.1
EVAL_DAYS = 30  # the held-out window


@dataclass
class ValidationConfig:
    n_folds: int = 5
    purge: int = 10


cv = TimeSeriesSplit(n_splits=5, gap=3)


def train(lr=0.1):
    return lr
"""
FROZEN = ["ValidationConfig", "EVAL_*", "TimeSeriesSplit.gap"]


def frozen_verdict(search: str, replace: str) -> Validated | Rejected:
    """The verdict on a one-edit draft of PROTOCOL, with FROZEN frozen."""
    return validate_draft(
        draft(Edit("train.py", search, replace)),
        files={"train.py": PROTOCOL},
        editable=["train.py"],
        seen_hashes=set(),
        max_edit_bytes=10_000,
        frozen=FROZEN,
    )


@pytest.mark.parametrize(
    ("search", "replace", "named"),
    [
        ("EVAL_DAYS = 30", "EVAL_DAYS = 3", "EVAL_DAYS"),
        ("purge: int = 10", "purge: int = 0", "ValidationConfig.purge"),
        ("    return lr", "    ValidationConfig.purge = 0\n    return lr", "purge"),
        ("def train(lr=0.1):", "EVAL_DAYS = 1\n\n\ndef train(lr=0.1):", "EVAL_DAYS"),
        ("gap=3", "gap=0", "TimeSeriesSplit.gap"),
        ("cv = Time", "cfg = ValidationConfig(n_folds=2)\ncv = Time", "ValidationConfig.n_folds"),
    ],
)
def test_a_draft_changing_a_frozen_name_is_rejected_naming_it(
    search: str, replace: str, named: str
) -> None:
    verdict = frozen_verdict(search, replace)
    reason = rejected(verdict)
    assert reason.startswith("train.py: the edits change ") and named in reason
    assert "frozen in farm.toml" in reason


@pytest.mark.parametrize(
    ("search", "replace"), [("LR = 0.1", "LR = 0.2"), ("train(lr=0.1)", "train(lr=0.3)")]
)
def test_a_draft_leaving_frozen_names_alone_passes(search: str, replace: str) -> None:
    verdict = frozen_verdict(search, replace)
    assert isinstance(verdict, Validated)


def test_knob_finders_skip_frozen_names() -> None:
    found = {k.name for k in find_knobs("train.py", PROTOCOL, frozen=FROZEN)}
    assert found == {"LR", "TimeSeriesSplit.n_splits", "train.lr"}
    assert {"EVAL_DAYS", "ValidationConfig.purge"} <= {
        k.name for k in find_knobs("train.py", PROTOCOL)
    }
