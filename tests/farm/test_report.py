"""`farm report --out` and `farm status` draw a finished campaign from its store."""

from __future__ import annotations

import pytest
from helpers import MIXED_DRAFTS, MIXED_TOML, MakeTarget, RunCampaign
from matplotlib.image import imread

from farm.cli import main
from farm.records import DecisionKind


def test_report_writes_the_progress_picture_and_the_kept_changes(
    make_target: MakeTarget, run_campaign: RunCampaign, capsys: pytest.CaptureFixture[str]
) -> None:
    target = make_target({"drafts.jsonl": MIXED_DRAFTS}, extra_toml=MIXED_TOML)
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
