"""One truth: every view of a campaign states the incumbent, the baseline and σ the merge
rule has, each equal to a recount from the raw records (farm/figures.py).

The campaign has what made the views disagree before: a baseline with an outlier, a
winner on a stale base merged on its evidence, and measuring runs that disagree with the
estimate it was merged at."""

from __future__ import annotations

import io
import statistics
from urllib.request import urlopen

import pytest
from helpers import Bench, MakeTarget, free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from farm.metrics import LedgerCollector, serve
from farm.progress import full_history, snapshot, status_report
from farm.propose import build_context
from farm.records import DecisionKind, TrialKind
from farm.report import export_tsv, report_markdown
from proposer.prompt import digest

TRAIN = "LR = 0.5  # learning rate\nMOM = 0.1  # momentum\nprint('loss: 1.0')\n"
FIXED = "confirm = 2\nz = 1.5\nscreen_z = 0\nfutility_z = -99\nefficacy_z = 99\n"
FIXED += "confirm_ahead = 0\n"  # one at a time: mom's win goes stale, merged untried
BASE = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 9.0]  # the last an outlier: 40 robust σ out


@pytest.fixture
def bench(make_target: MakeTarget) -> Bench:
    target = make_target(
        {"train.py": TRAIN},
        extra_toml=f"[merge]\nrepeats = {len(BASE)}\n{FIXED}max_rebases = 0\n",
    )
    b = Bench(target)
    b.finish({f"base-{i}": v for i, v in enumerate(BASE)})
    lr, mom = b.propose(("LR = 0.5", "LR = 1.0"), ("MOM = 0.1", "MOM = 0.9"))
    for _ in range(3):  # screens and confirmations: lr kept, mom merged untried at 0.2
        b.finish({f"c{lr}-": 0.5, f"c{mom}-": 0.7})
    b.ctl.step(slots=8)
    assert b.store.get_incumbent("default").estimated
    b.finish({f"c{mom}-measure0": 0.35, f"c{mom}-measure1": 0.45})  # measured: 0.4
    b.ctl.step(slots=8)
    (late,) = b.propose(("LR = 1.0", "LR = 1.5"))
    for _ in range(3):  # judged against the measured incumbent, and discarded
        b.finish({f"c{late}-": 0.41})
    b.ctl.step(slots=8)
    assert b.store.get_decision("default", late).kind is DecisionKind.DISCARDED  # type: ignore[union-attr]
    return b


def recount(b: Bench) -> dict[str, float]:
    """The figures, from the raw trial records alone."""
    trials = b.store.list_trials("default")
    base = [t.result.metric for t in trials if t.kind is TrialKind.BASELINE and t.result]
    kept = [v for v in base if v < 5]  # the outlier out
    measure = [t.result.metric for t in trials if t.kind is TrialKind.MEASURE and t.result]
    return {
        "start": statistics.mean(kept),
        "baseline_sigma": statistics.stdev(kept),
        "incumbent": statistics.mean(measure),  # type: ignore[arg-type]
    }


def test_every_view_states_the_incumbent_baseline_and_sigma_of_a_recount(bench: Bench) -> None:
    want = recount(bench)
    assert want["incumbent"] == pytest.approx(0.4) and want["start"] == pytest.approx(1.0)
    store, c = bench.store, "default"
    inc, camp = store.get_incumbent(c), store.get_campaign(c)
    assert camp is not None
    assert inc.metric == pytest.approx(want["incumbent"]) and inc.runs == 2
    assert camp.baseline_metric == pytest.approx(want["start"])
    assert camp.sigma == pytest.approx(want["baseline_sigma"])
    sigma = store.list_decisions(c, last=1)[0].sigma  # the rule's σ in force now

    s = snapshot(store, c)
    status = status_report(s)
    assert f"incumbent {inc.sha[:10]} loss 0.4 · start 1 ·" in status
    assert f"(baseline {camp.sigma:.5g})" in status and f"noise σ {sigma:.5g}" in status
    assert "(estimated" not in status
    # The running best ends where the incumbent stands, measured: not at the 0.2 estimate.
    assert [round(step.metric, 6) for step in s.line] == [1.0, 0.5, 0.4]
    assert "best loss: 1 " in status and " 0.4 (2 kept" in status

    h = full_history(store, c)
    assert [round(v, 6) for _, v in h.best] == [1.0, 0.5, 0.4]
    assert h.sigmas[0] == pytest.approx(want["baseline_sigma"])  # the outlier left out

    report = report_markdown(store, c)
    assert "| start | 1 (baseline mean of 7 runs" in report
    assert f"| incumbent | 0.4 (`{inc.sha[:10]}`, 2 runs) |" in report

    tsv = export_tsv(store, c).splitlines()
    rows = [dict(zip(tsv[0].split("\t"), line.split("\t"), strict=True)) for line in tsv[1:]]
    assert sorted({r["candidate"] for r in rows if r["status"] == "keep"}) == ["1", "2"]

    registry = CollectorRegistry()
    registry.register(LedgerCollector(store))
    server = serve(f"127.0.0.1:{free_port()}", registry, out=io.StringIO(), what="test")
    assert server is not None
    try:
        text = urlopen(server.url).read().decode()
    finally:
        server.close()
    got = {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.labels.get("campaign") == c
    }
    assert got["farm_incumbent_metric"] == pytest.approx(want["incumbent"])
    assert got["farm_incumbent_runs"] == 2
    assert got["farm_baseline_sigma"] == pytest.approx(want["baseline_sigma"])
    assert got["farm_sigma"] == pytest.approx(sigma)

    ctx = build_context(store, bench.cfg, c)
    assert ctx.incumbent_metric == pytest.approx(want["incumbent"])
    assert ctx.start_metric == pytest.approx(want["start"]) and ctx.sigma == pytest.approx(sigma)
    prompt = digest(ctx, 4000)
    assert "Current best: 0.4 (candidate #2, mean of 2 runs); start 1." in prompt
