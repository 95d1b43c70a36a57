from __future__ import annotations

import math

import pytest

from workers.metric import parse_metric, parse_summary

AUTORESEARCH_TAIL = """\
step 00950 (99.1%) | loss: 3.021 | lr: 1.2e-04
val_bpb:          1.050000
---
val_bpb:          0.997900
training_seconds: 300.1
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
depth:            8
"""


def test_last_summary_line_wins() -> None:
    assert parse_metric(AUTORESEARCH_TAIL, name="val_bpb") == 0.9979


def test_summary_collects_every_numeric_line() -> None:
    summary = parse_summary(AUTORESEARCH_TAIL)
    assert summary == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "peak_vram_mb": 45060.2,
        "mfu_percent": 39.8,
        "total_tokens_M": 499.6,
        "num_steps": 953.0,
        "depth": 8.0,
    }


def test_lines_that_are_not_key_number_pairs_are_ignored() -> None:
    text = "time: 12:30\nmodel: gpt2\nnote: 1.0 (best)\n  loss : 2.5  \n"
    assert parse_summary(text) == {"loss": 2.5}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("val_bpb: 1e-3", 1e-3),
        ("val_bpb: -2.5E+2", -250.0),
        ("val_bpb: .5", 0.5),
        ("val_bpb: 3.", 3.0),
        ("    val_bpb:\t0.25", 0.25),
    ],
)
def test_numbers_in_any_float_notation_parse(line: str, expected: float) -> None:
    assert parse_metric(line, name="val_bpb") == expected


@pytest.mark.parametrize("word", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_and_inf_parse_as_non_finite(word: str) -> None:
    value = parse_metric(f"val_bpb: {word}\n", name="val_bpb")
    assert value is not None and not math.isfinite(value)


def test_non_finite_values_stay_out_of_the_summary() -> None:
    assert parse_summary("val_bpb: 0.9\nval_bpb: nan\nloss: 2.0\n") == {"loss": 2.0}


def test_missing_metric_is_none() -> None:
    assert parse_metric("loss: 2.0\nval_bpb_ema: 1.0\n", name="val_bpb") is None


def test_progress_bar_redraws_count_as_lines() -> None:
    assert parse_metric("10%|#  |\rval_bpb: 0.75\r\n", name="val_bpb") == 0.75


def test_regex_takes_last_match_of_its_capture_group() -> None:
    text = "final loss=0.50\nfinal loss=0.25\nother loss=0.1\n"
    assert parse_metric(text, name="val_bpb", regex=r"^final loss=(\S+)$") == 0.25


def test_regex_capture_that_is_not_a_number_is_none() -> None:
    assert parse_metric("score=high\n", name="x", regex=r"score=(\w+)") is None
