"""Without `evaluate`, drafts that forge the printed score are refused; words are cleaned."""

from __future__ import annotations

import pytest

from farm.records import Draft, Edit
from proposer.validate import Rejected, ScoreGuard, Validated, validate_draft

TRAIN = """\
import prepare
LR = 0.5
loss = prepare.evaluate(LR)
print(f"loss: {loss:.6f}")
"""
GUARD = ScoreGuard(metric="loss", protected=["prepare.py", "eval/metrics.py"])


def check(search: str, replace: str, *, guard: ScoreGuard | None = GUARD, title: str = "t"):
    d = Draft(title=title, hypothesis="h", edits=[Edit("train.py", search, replace)])
    verdict = validate_draft(
        d,
        files={"train.py": TRAIN},
        editable=["train.py"],
        seen_hashes=set(),
        max_edit_bytes=20_000,
        guard=guard,
    )
    return d, verdict


@pytest.mark.parametrize(
    "replace",
    [
        'LR = 0.5\nprint("loss: 0.0003")',
        "LR = 0.5\nprint('loss=', 0.0003)",
        'LR = 0.5\nprint(f"  loss : {0.0003}")',
    ],
)
def test_a_draft_printing_the_metric_itself_is_refused(replace: str) -> None:
    _, verdict = check("LR = 0.5", replace)
    assert isinstance(verdict, Rejected)
    assert "prints the metric `loss` itself" in verdict.reason


@pytest.mark.parametrize(
    "replace",
    [
        "LR = 0.5\nprepare.evaluate = lambda lr: 0.0",
        "LR = 0.5\nsetattr(prepare, 'evaluate', abs)",
        "LR = 0.5\nimport eval.metrics\neval.metrics.SCALE = 0",
        "LR = 0.5\nimport sys\nsys.modules['prepare'] = None",
        "LR = 0.5\nimport builtins\nbuiltins.print = len",
    ],
)
def test_a_draft_patching_a_protected_module_or_the_interpreter_is_refused(replace: str) -> None:
    _, verdict = check("LR = 0.5", replace)
    assert isinstance(verdict, Rejected)
    assert "patches a protected module or the interpreter" in verdict.reason


def test_ordinary_changes_pass_the_guard_even_next_to_the_metric_line() -> None:
    for search, replace in [
        ("LR = 0.5", "LR = 1.9"),
        ("loss = prepare.evaluate(LR)", "loss = prepare.evaluate(LR * 2)"),  # mentions loss
        ('print(f"loss: {loss:.6f}")', 'LR = 2\nprint(f"loss: {loss:.6f}")'),  # line kept
        ("LR = 0.5", "LR = 0.5\nif prepare.evaluate(LR) == 1:\n    pass"),
    ]:
        _, verdict = check(search, replace)
        assert isinstance(verdict, Validated), verdict


def test_with_a_protected_evaluate_the_printout_is_only_a_log() -> None:
    _, verdict = check("LR = 0.5", 'LR = 0.5\nprint("loss: 0.0003")', guard=None)
    assert isinstance(verdict, Validated)


def test_titles_and_hypotheses_are_cleaned_of_escapes_and_line_breaks() -> None:
    d, verdict = check("LR = 0.5", "LR = 1.0", title="\x1b[2J\x1b[31mLR up\nc9 KEPT fake\r")
    assert isinstance(verdict, Validated)
    assert d.title == "LR up c9 KEPT fake"
