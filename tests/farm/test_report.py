"""`farm report --out` and `farm status` draw a finished campaign from its store."""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import pytest
from helpers import MIXED_DRAFTS, MIXED_TOML, MakeTarget, RunCampaign
from matplotlib.image import imread

from farm.campaign import prepare
from farm.cli import main
from farm.config import load_config
from farm.records import (
    CallState,
    Campaign,
    Candidate,
    CandidateState,
    Decision,
    DecisionKind,
    Edit,
    Incumbent,
    Outcome,
    ProposerCall,
    Trial,
    TrialKind,
    TrialResult,
)
from farm.report import proposer_rows, proposer_table, report_markdown
from farm.store import default_url, open_store
from farm.store.sqlite import SQLiteStore


def test_report_status_and_export_of_a_campaign_that_ends_every_way(
    make_target: MakeTarget, run_campaign: RunCampaign, capsys: pytest.CaptureFixture[str]
) -> None:
    # 12 baseline runs: the status line's strip of recent trials still shows them all.
    toml = MIXED_TOML + "[merge]\nrepeats = 12\n"
    target = make_target({"drafts.jsonl": MIXED_DRAFTS}, extra_toml=toml)
    done = run_campaign(target)
    assert done.code == 0, done.output
    (kept,) = [d for d in done.store.list_decisions("default") if d.kind is DecisionKind.KEPT]
    out = target / "report"

    assert main(["report", str(target), "--out", str(out)]) == 0
    png = imread(out / "progress.png")
    height, width = png.shape[:2]
    assert (width, height) == (1440, 720)
    assert png.std() > 0.05  # drawn on, not a blank canvas
    md = (out / "report.md").read_text()
    assert "![progress](progress.png)" in md
    assert "### 1. c1: LR 1.9" in md and f"Δ {kept.delta:+.5g}" in md
    assert "-LR = 0.5  # the knob" in md and "+LR = 1.9  # the knob" in md
    assert "| candidate | 1 | 1 | 1 |" in md  # crashed, invalid_metric, no_metric
    assert "| replay | file |" in md

    capsys.readouterr()
    assert main(["status", str(target)]) == 0
    status = capsys.readouterr().out
    (best,) = [line for line in status.splitlines() if line.startswith("  best loss:")]
    assert "█" in best and "▁" in best and "1 kept, lower is better" in best
    (marks,) = [
        line.split()[3]
        for line in status.splitlines()
        if line.startswith("  last ") and " trials: " in line
    ]
    assert marks.count("✗") == 3 and marks.count("b") == done.cfg.merge.repeats and "✓" in marks

    # Failures are named by how they ended, everywhere a decision is shown.
    failed = "crashed 3 (crashed 1, invalid_metric 1, no_metric 1)"
    assert f"| candidates | 6: {failed}, " in md
    (trials,) = [line for line in status.splitlines() if line.startswith("  trials: ")]
    assert all(f"{o} 1" in trials for o in ("crashed", "invalid_metric", "no_metric"))
    by_title = {c.title: c.id for c in done.store.list_candidates("default")}
    for title, label in (("crash", "crashed"), ("nan", "invalid_metric"), ("silent", "no_metric")):
        line = f"  c{by_title[title]:<4} {label.upper():<10} {title}\n"
        assert line in status and line in done.output
    silent = done.store.get_decision("default", by_title["silent"])
    assert silent is not None
    assert "printed no `loss: <value>` line, nor anything like one" in silent.reason

    # The export leaves empty what was never measured, rather than writing 0.
    assert main(["export", str(target), "--tsv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    for row in rows:
        assert (row["loss"] != "") == (row["outcome"] == "ok"), row
        assert row["memory_gb"] == ""  # the toy target prints no peak_vram_mb
    (rejected,) = [r for r in rows if r["status"] == "rejected"]
    assert rejected["description"] == "not applying"


def test_report_of_a_campaign_without_candidates_says_0(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    target = make_target()
    store = open_store(default_url(target))
    try:
        prepare(target, load_config(target), store, check_command=False)
        md = report_markdown(store, "default")
    finally:
        store.close()
    assert "| candidates | 0 |" in md and "| trials | 0 finished |" in md


def test_report_by_batch_size_and_strategy_weighs_gain_per_slot_hour_and_dollar(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "farm.db")
    store.create_campaign(Campaign(id="c", target="", start_sha="s0", config={}), Incumbent("s0"))

    def candidate(cid: int, batch: str, size: int, strategy: str, cost: float) -> None:
        """A draft, the one its paid call brought."""
        call = ProposerCall("c", f"k{cid}", "anthropic", strategy, reserved_usd=1.0)
        store.hold_call(call)
        store.settle_call(dataclasses.replace(call, state=CallState.ANSWERED, cost_usd=cost))
        store.add_candidate(
            Candidate(
                campaign="c",
                id=cid,
                base_sha="s0",
                title=f"idea {cid}",
                hypothesis="",
                edits=[Edit("train.py", "LR = 0.5", f"LR = {cid}")],
                files={},
                edit_hash=f"h{cid}",
                state=CandidateState.QUEUED,
                proposer="anthropic",
                strategy=strategy,
                batch_id=batch,
                batch_size=size,
                cost_usd=cost,
                call=call.id,
            )
        )

    def trained(cid: int, seconds: float, kind: DecisionKind, delta: float) -> None:
        for i in range(2):  # a screen and a confirmation, `seconds` each
            tid = f"t{cid}.{i}"
            store.enqueue_trial(Trial(tid, "c", TrialKind.CANDIDATE, "x", "s0", i, cid))
            store.record_result("c", TrialResult(tid, Outcome.OK, metric=1.0, duration_s=seconds))
        cand = store.get_candidate("c", cid)
        assert cand is not None
        for state in (CandidateState.RUNNING, CandidateState(kind.value)):
            cand.state = state
            store.update_candidate(cand)
        store.record_decision(Decision("c", cid, kind, "", delta=delta))

    # A focused batch of 4 asked (two drafts came back): one kept, +0.3 in 1 slot-hour, $0.2.
    candidate(1, "b1", 4, "focused", 0.1)
    candidate(2, "b1", 4, "focused", 0.1)
    trained(1, 1800, DecisionKind.KEPT, 0.3)
    trained(2, 1800, DecisionKind.DISCARDED, -0.1)
    # A row from before batch sizes were recorded: its size is how many share its batch id.
    candidate(3, "b2", 0, "single", 0.05)
    trained(3, 900, DecisionKind.KEPT, 0.1)
    try:
        by_batch = proposer_table(store, "c", by="batch").splitlines()
        by_strategy = proposer_table(store, "c", by="strategy").splitlines()
    finally:
        store.close()
    assert by_batch[0] == (
        "| proposer | batch size | drafts | valid | kept | best Δ | gain/trial | gain/slot-hour "
        "| cost | cost/kept | gain/$ |"
    )
    # Best first by gain: 0.3 over 4 trials of 2 slot-hours and $0.20, then 0.1 over 2
    # trials of half a slot-hour and $0.05.
    assert by_batch[2:] == [
        "| anthropic | 4 | 2 | 100% | 50% | +0.3 | 0.075 | 0.15 | $0.20 | $0.20 | 1.5 |",
        "| anthropic | 1 | 1 | 100% | 100% | +0.1 | 0.05 | 0.2 | $0.05 | $0.05 | 2 |",
    ]
    assert [line.split("|")[2].strip() for line in by_strategy[2:]] == ["focused", "single"]


def test_a_call_that_brought_no_draft_counts_in_its_group_s_cost_and_the_report(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "farm.db")
    store.create_campaign(Campaign(id="c", target="", start_sha="s0", config={}), Incumbent("s0"))
    call = ProposerCall("c", "k1", "anthropic", "single", batch_size=2, reserved_usd=0.3)
    store.hold_call(call)
    store.hold_call(dataclasses.replace(call, id="k2"))
    store.settle_call(
        dataclasses.replace(
            call, state=CallState.FAILED, cost_usd=0.01, tokens_in=900, tokens_out=40
        )
    )
    try:
        (row,) = proposer_rows(store, "c", by="strategy")
        md = report_markdown(store, "c")
    finally:
        store.close()
    assert (row.key, row.drafts, row.cost_usd) == (["anthropic", "single"], 0, 0.01)
    assert (
        "| LLM | $0.01 in 1 call (1 failed), 900 tokens in, 40 out, $0.3 held for 1 in "
        "flight |" in md
    )
