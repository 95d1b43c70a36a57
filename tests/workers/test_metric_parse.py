from __future__ import annotations

import math

import pytest

from workers.metric import (
    missing_metric_note,
    near_misses,
    parse_metric,
    parse_summary,
    summary_names,
)

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


@pytest.mark.parametrize(
    "line",
    [
        "score: 1.23",
        "score : 1.23",
        "score=1.23",
        "score = 1.23",
        "[run] score=1.23",
        "[eval 3/3]  score: 1.23",
    ],
)
def test_every_summary_line_format_in_use_parses(line: str) -> None:
    assert parse_metric(f"start\n{line}\n", name="score") == 1.23
    assert parse_summary(line) == {"score": 1.23}


def test_last_occurrence_wins_across_formats() -> None:
    assert parse_metric("[run] score=1.0\nscore: 2.0\nscore = 3.0\n", name="score") == 3.0


def test_words_and_pairs_inside_a_sentence_are_not_summary_lines() -> None:
    text = "WARNING: 3 features have zero variance\nstep 5 | loss=2.0 | lr=0.1\nx=1 y=2\n"
    assert parse_summary(text) == {}


def test_summary_names_lists_each_name_once_in_order_of_last_use() -> None:
    assert summary_names("a: 1\nb=2\na: nan\n[t] c=3\n") == ["b", "a", "c"]


def test_near_misses_rank_lines_naming_the_metric_first() -> None:
    text = (
        "epoch 1 val_rmse 0.52\n"
        "WARNING: val_rmse is noisy\n"
        "val_rms: 0.40\n"
        "done in 3.1s\n"
        "totally unrelated last line 7\n"
    )
    assert near_misses(text, name="val_rmse") == ["epoch 1 val_rmse 0.52", "val_rms: 0.40"]


def test_missing_metric_note_quotes_the_closest_lines_not_the_last_one() -> None:
    note = missing_metric_note("accuracy = 0.91 (test)\nbye 1\n", name="accuracy")
    assert note == ("it printed no `accuracy: <value>` line; closest: 'accuracy = 0.91 (test)'")
    assert "nor anything like one" in missing_metric_note("all done\n", name="accuracy")
    assert "metric_regex" in missing_metric_note("x\n", name="a", regex=r"a=(\d+)")
