"""Knob discovery through the AST: what counts, how it is named, how edits set it."""

from __future__ import annotations

import pytest

from farm.records import Draft
from proposer.knobs import (
    Knob,
    KnobKind,
    find_knobs,
    knob_edits,
    set_values,
    value_changes,
    value_in,
)
from proposer.validate import Validated, validate_draft

SHAPES = '''"""Every shape a hyperparameter takes in real training code."""
import os

LEARNING_RATE = 3e-4  # module constant
hidden_units: int = 64  # lower case, annotated
CONFIG = {"lr": 0.1, "layers": [64, 32], "opt": dict(beta=0.9), "name": "x"}
TIME_BUDGET_SECONDS = 2.0  # a budget, not an idea
USE_BIAS = True
THRESHOLD = -1  # negative: not a literal


class TrainConfig:
    n_layer: int = 12
    dropout = 0.1


class Model:
    def __init__(self, width=128, *, depth=3):
        self.width = width


def train(data, lr=0.01, epochs=10, verbose=1):
    warmup = 10  # a local: no name outside this function
    clf = RandomForestClassifier(n_estimators=100, max_depth=5, random_state=0, n_jobs=2)
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, betas=(0.9, 0.98))
    print(round(3.3, ndigits=2), flush=True)
    seed = int(os.environ.get("FARM_SEED", 0))
    return clf.fit(data, sample_weight=None, max_iter=200)  # farm: frozen
'''


def names(text: str) -> dict[str, Knob]:
    return {k.name: k for k in find_knobs("m.py", text)}


def test_every_shape_of_hyperparameter_is_found_with_a_readable_name() -> None:
    found = names(SHAPES)
    assert {n: (k.kind, k.literal) for n, k in found.items()} == {
        "LEARNING_RATE": (KnobKind.CONSTANT, "3e-4"),
        "hidden_units": (KnobKind.CONSTANT, "64"),
        "CONFIG.lr": (KnobKind.ENTRY, "0.1"),
        "CONFIG.layers[0]": (KnobKind.ENTRY, "64"),
        "CONFIG.layers[1]": (KnobKind.ENTRY, "32"),
        "CONFIG.opt.beta": (KnobKind.ENTRY, "0.9"),
        "TrainConfig.n_layer": (KnobKind.FIELD, "12"),
        "TrainConfig.dropout": (KnobKind.FIELD, "0.1"),
        "Model.width": (KnobKind.DEFAULT, "128"),
        "Model.depth": (KnobKind.DEFAULT, "3"),
        "train.lr": (KnobKind.DEFAULT, "0.01"),
        "train.epochs": (KnobKind.DEFAULT, "10"),
        "RandomForestClassifier.n_estimators": (KnobKind.KEYWORD, "100"),
        "RandomForestClassifier.max_depth": (KnobKind.KEYWORD, "5"),
        "AdamW.lr": (KnobKind.KEYWORD, "3e-3"),
        "AdamW.betas[0]": (KnobKind.KEYWORD, "0.9"),
        "AdamW.betas[1]": (KnobKind.KEYWORD, "0.98"),
    }


def test_knob_spans_point_at_the_literal() -> None:
    lines = SHAPES.split("\n")
    for k in find_knobs("m.py", SHAPES):
        assert lines[k.line][k.start : k.end] == k.literal


def test_a_name_met_twice_is_numbered_in_source_order() -> None:
    text = "a = Dense(units=64)\nb = Dense(units=32)\n"
    assert [(k.name, k.literal) for k in find_knobs("m.py", text)] == [
        ("Dense.units", "64"),
        ("Dense.units#2", "32"),
    ]


def test_a_file_that_does_not_parse_has_no_knobs() -> None:
    assert find_knobs("m.py", "LR = = 1\n") == []


def test_edits_on_one_line_become_one_edit_that_applies() -> None:
    found = names(SHAPES)
    changes = [
        (found["RandomForestClassifier.max_depth"], "7"),
        (found["RandomForestClassifier.n_estimators"], "200"),
        (found["LEARNING_RATE"], "6e-4"),
    ]
    edits = knob_edits(SHAPES, changes)
    assert len(edits) == 2
    verdict = validate_draft(
        Draft("t", "h", edits),
        files={"m.py": SHAPES},
        editable=["m.py"],
        seen_hashes=set(),
        max_edit_bytes=10_000,
    )
    assert isinstance(verdict, Validated), verdict
    after = names(verdict.files["m.py"])
    assert after["RandomForestClassifier.max_depth"].value == 7
    assert after["RandomForestClassifier.n_estimators"].value == 200
    assert after["LEARNING_RATE"].value == 6e-4
    assert after["CONFIG.lr"].value == 0.1  # untouched


def test_windows_that_touch_merge_into_one_edit() -> None:
    text = "A = 1\nB = 2\nA = 1\nB = 2\nC = 3\n"
    found = find_knobs("m.py", text)
    edits = knob_edits(text, [(found[2], "5"), (found[3], "6")])
    assert len(edits) == 1
    assert text.count(edits[0].search) == 1


@pytest.mark.parametrize(
    ("knob", "replacement", "value"),
    [
        ("LEARNING_RATE", "LEARNING_RATE = 1e-3  # tuned by hand", 1e-3),
        ("LEARNING_RATE", "LEARNING_RATE=0.002", 0.002),
        (
            "RandomForestClassifier.max_depth",
            "    clf = RandomForestClassifier(n_estimators=300, max_depth=9, random_state=0, "
            "n_jobs=2)",
            9,
        ),
        (
            "CONFIG.layers[1]",
            'CONFIG = {"lr": 0.2, "layers": [64, 16], "opt": dict(beta=0.9), "name": "x"}',
            16,
        ),
        ("LEARNING_RATE", "WARMUP = 3", None),
        ("CONFIG.lr", 'CONFIG = {"lr": 0.1}', None),  # another shape of line
    ],
)
def test_value_in_reads_a_knob_back_from_an_edit(
    knob: str, replacement: str, value: float | None
) -> None:
    assert value_in(names(SHAPES)[knob], SHAPES, replacement) == value


def test_a_draft_that_only_sets_values_is_told_from_one_that_changes_code() -> None:
    old = "opt = SGD(lr=0.5, momentum=0.1)  # the optimiser\nEPOCHS = 3\n"
    tuned = old.replace("momentum=0.1", "momentum=0.9").replace("EPOCHS = 3", "EPOCHS = 4")
    assert value_changes("t.py", old, tuned) == {"SGD.momentum": "0.9", "EPOCHS": "4"}
    assert value_changes("t.py", old, old.replace("SGD", "Adam")) is None  # code changed
    assert value_changes("t.py", old, old.replace("optimiser", "optimizer")) is None
    assert value_changes("t.py", old, old) is None  # nothing set
    # Set on a file whose line a keep rewrote: the same values, the rest of the line kept.
    kept = old.replace("lr=0.5", "lr=1.0")
    edits = set_values("t.py", kept, {"SGD.momentum": "0.9"})
    assert edits is not None and len(edits) == 1
    assert edits[0].replace == "opt = SGD(lr=1.0, momentum=0.9)  # the optimiser"
    assert set_values("t.py", "EPOCHS = 3\n", {"SGD.momentum": "0.9"}) is None  # knob gone
