"""The /metrics endpoint, scraped over HTTP, against the store of a finished campaign."""

from __future__ import annotations

import collections
import io
import re
import socket
import urllib.request

import pytest
from helpers import MIXED_DRAFTS, MIXED_TOML, MakeTarget, RunCampaign, free_port
from prometheus_client.parser import text_string_to_metric_families

from farm.cli import main
from farm.config import MetricsConfig
from farm.metrics import DEAD, serve
from farm.records import CandidateState


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels: value} of every sample at `url`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name][tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    total: dict[str, float] = collections.Counter()
    for labels, value in samples.items():
        total[dict(labels)[label]] += value
    return {k: v for k, v in total.items() if v}


def test_metrics_endpoint_counts_exactly_what_the_store_holds(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    port = free_port()
    target = make_target(
        {"drafts.jsonl": MIXED_DRAFTS},
        extra_toml=MIXED_TOML + f'[metrics]\naddress = "127.0.0.1:{port}"\n',
    )
    done = run_campaign(target)
    assert done.code == 0, done.output
    assert f"metrics at http://127.0.0.1:{port}/metrics" in done.output
    with socket.socket() as s:  # the endpoint lives as long as the run
        s.bind(("127.0.0.1", port))
    store, c = done.store, "default"
    server = serve(
        MetricsConfig(address=f"127.0.0.1:{free_port()}"),
        store=store,
        campaign=c,
        slots=2,
        busy=lambda: 1,
        proposer="replay",
        out=io.StringIO(),
    )
    assert server is not None
    try:
        server.driver.observe_proposal(0.25)
        m = scrape(server.url)
    finally:
        server.close()

    trials = store.list_trials(c)
    outcomes = collections.Counter(t.result.outcome.value for t in trials if t.result)
    assert by(m["farm_trials_total"], "outcome") == outcomes
    assert {"crashed", "invalid_metric", "no_metric", "ok"} <= set(outcomes)
    # Every combination is exported from the start, so rate() sees the first increment.
    assert m["farm_trials_total"][(("campaign", c), ("kind", "rebase"), ("outcome", DEAD))] == 0
    kinds = collections.Counter(t.kind.value for t in trials)
    assert by(m["farm_trial_duration_seconds_count"], "kind") == kinds
    durations = sum(t.result.duration_s for t in trials if t.result)
    assert abs(sum(m["farm_trial_duration_seconds_sum"].values()) - durations) < 1e-6

    decisions = collections.Counter(d.kind.value for d in store.list_decisions(c))
    assert by(m["farm_decisions_total"], "decision") == decisions
    cands = store.list_candidates(c)
    assert by(m["farm_candidates"], "state") == collections.Counter(x.state.value for x in cands)
    rejected = sum(x.state is CandidateState.REJECTED for x in cands)
    assert by(m["farm_proposals_total"], "result") == {
        "valid": len(cands) - rejected,
        "rejected": rejected,
    }
    camp, inc = store.get_campaign(c), store.get_incumbent(c)
    assert camp is not None and inc.metric is not None
    assert m["farm_incumbent_metric"][(("campaign", c),)] == inc.metric
    assert m["farm_baseline_sigma"][(("campaign", c),)] == camp.sigma
    assert m["farm_queue_depth"][(("campaign", c),)] == 0
    assert m["farm_slots"][(("campaign", c),)] == 2
    assert m["farm_slots_busy"][(("campaign", c),)] == 1
    key = (("campaign", c), ("proposer", "replay"))
    assert m["farm_proposer_call_seconds_count"][key] == 1
    assert m["farm_llm_cost_usd_total"][key] == 0
    assert by(m["farm_llm_tokens_total"], "type") == {}

    # Bounded labels only: no trial id, sha, candidate number or error text in any value.
    labels = {pair for series in m.values() for key in series for pair in key}
    names = {"campaign", "kind", "outcome", "state", "decision", "proposer", "result", "type"}
    assert {k for k, _ in labels} == {*names, "le"}
    values = {v for k, v in labels if k != "le"}
    leaks = [v for v in values if re.search(r"[0-9a-f]{7,}|^c\d+|base-|screen|diverged", v)]
    assert not leaks, leaks


def test_a_bad_metrics_address_is_refused_naming_the_key_or_the_flag(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_target(extra_toml='[metrics]\naddress = "9464"\n', name="bad")
    assert main(["status", str(bad)]) == 2
    assert "farm.toml: metrics.address: '9464' is not host:port" in capsys.readouterr().err
    good = make_target(name="good")
    assert main(["run", str(good), "--metrics-address", "localhost"]) == 2
    assert "--metrics-address: 'localhost' is not host:port" in capsys.readouterr().err
