from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.errors import ConfigError
from farm.records import Edit, edit_hash
from proposer.base import ProposalContext
from proposer.replay import ReplayProposer


def line(title: str, **extra: object) -> str:
    obj = {
        "title": title,
        "hypothesis": f"because {title}",
        "edits": [{"path": "train.py", "search": "DEPTH = 4", "replace": f"DEPTH = {title}"}],
        **extra,
    }
    return json.dumps(obj)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "drafts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hands_out_drafts_in_file_order_across_calls(tmp_path: Path, ctx: ProposalContext) -> None:
    proposer = ReplayProposer(
        write(tmp_path, line("5"), "", line("6", expected_effect="lower"), line("7"))
    )
    first, second = proposer.propose(ctx, 2), proposer.propose(ctx, 2)
    assert [d.title for d in first] == ["5", "6"]
    assert [d.title for d in second] == ["7"]
    assert proposer.propose(ctx, 2) == []
    assert first[1].expected_effect == "lower"
    assert first[0].hypothesis == "because 5"
    assert first[0].edits == [Edit("train.py", "DEPTH = 4", "DEPTH = 5")]
    assert {(d.proposer, d.batch_id) for d in first} == {("replay", first[0].batch_id)}
    assert first[0].batch_id != second[0].batch_id


def test_skips_drafts_already_in_the_ledger(tmp_path: Path, ctx: ProposalContext) -> None:
    proposer = ReplayProposer(write(tmp_path, line("5"), line("6")))
    ctx.seen_hashes = {edit_hash([Edit("train.py", "DEPTH = 4", "DEPTH = 5")])}
    assert [d.title for d in proposer.propose(ctx, 2)] == ["6"]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("{not json", "Expecting property name"),
        ('["a list"]', "must be a JSON object"),
        ('{"edits": []}', "missing key 'title'"),
        ('{"title": "t", "edits": []}', "non-empty list"),
        ('{"title": "t", "edits": [{"path": "train.py"}]}', "edit 1 must be an object"),
        ('{"title": 3, "edits": [{"path": "a", "search": "", "replace": ""}]}', "'title' must be"),
        ('{"title": "t", "colour": "red", "edits": []}', "unknown key 'colour'"),
    ],
)
def test_malformed_line_is_refused_naming_file_and_line(tmp_path: Path, bad: str, why: str) -> None:
    path = write(tmp_path, line("5"), bad)
    with pytest.raises(ConfigError, match=rf"drafts\.jsonl:2: .*{why}"):
        ReplayProposer(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.jsonl not found"):
        ReplayProposer(tmp_path / "nope.jsonl")


def test_file_without_drafts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no drafts"):
        ReplayProposer(write(tmp_path, "", "  "))
