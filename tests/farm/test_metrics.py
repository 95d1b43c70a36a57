"""Metrics endpoints scraped over HTTP: the ledger (a finished campaign's store, the
exporter) and a role process's own signals (real store calls, the real anthropic SDK)."""

from __future__ import annotations

import collections
import dataclasses
import io
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic, draft, drafts_reply, error_reply, rate_limited
from helpers import MIXED_DRAFTS, MIXED_TOML, MakeTarget, RunCampaign, free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from farm.cli import main
from farm.config import MergeConfig, ProposerConfig
from farm.errors import ProposerError, StoreError
from farm.metrics import LedgerCollector, MetricsServer, RoleMetrics, serve
from farm.progress import ClusterView
from farm.records import (
    Campaign,
    CandidateState,
    Direction,
    Incumbent,
    Outcome,
    Trial,
    TrialKind,
    TrialResult,
)
from farm.store import Store, open_store
from farm.store.stats import DEAD, duration_bounds
from proposer.anthropic import AnthropicProposer
from proposer.base import ProposalContext

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    """name -> {sorted labels: value} of every sample at `url`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: Samples = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name][tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    total: dict[str, float] = collections.Counter()
    for labels, value in samples.items():
        total[dict(labels)[label]] += value
    return {k: v for k, v in total.items() if v}


def served(registry: CollectorRegistry) -> MetricsServer:
    server = serve(f"127.0.0.1:{free_port()}", registry, out=io.StringIO(), what="test")
    assert server is not None
    return server


def test_ledger_metrics_count_exactly_what_the_store_holds(
    make_target: MakeTarget, run_campaign: RunCampaign
) -> None:
    port = free_port()
    target = make_target(
        {"drafts.jsonl": MIXED_DRAFTS},
        extra_toml=MIXED_TOML + f'[metrics]\naddress = "127.0.0.1:{port}"\n'
        "hour_usd = { cpu = 36.0 }\n",
    )
    done = run_campaign(target)
    assert done.code == 0, done.output
    assert f"metrics at http://127.0.0.1:{port}/metrics" in done.output
    with socket.socket() as s:  # the driver's endpoint lives as long as the run
        s.bind(("127.0.0.1", port))
    store, c = done.store, "default"
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store))
    server = served(registry)
    try:
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
    durations = [t.result.duration_s for t in trials if t.result]
    assert sum(m["farm_trial_duration_seconds_sum"].values()) == pytest.approx(sum(durations))
    # Buckets are fractions of the budget (30 s here), counted exactly.
    les = {dict(k)["le"] for k in m["farm_trial_duration_seconds_bucket"]}
    assert les == {repr(b) for b in duration_bounds(30.0)} | {"+Inf"}
    under_3s = sum(
        v for k, v in m["farm_trial_duration_seconds_bucket"].items() if dict(k)["le"] == "3.0"
    )
    assert under_3s == sum(d <= 3.0 for d in durations)

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
    one = (("campaign", c),)
    assert m["farm_incumbent_metric"][one] == inc.metric
    assert m["farm_baseline_sigma"][one] == camp.sigma
    last = store.list_decisions(c, last=1)[0]
    sigma = next(d.sigma for d in reversed(store.list_decisions(c)) if d.sigma is not None)
    assert m["farm_sigma"][one] == sigma
    # max(min_delta, z·σ·√(1/confirm + 1/incumbent runs)) with the default z and confirm.
    d = MergeConfig()
    assert m["farm_keep_threshold"][one] == pytest.approx(
        d.z * sigma * (1 / d.confirm + 1 / inc.runs) ** 0.5
    )
    assert m["farm_last_decision_timestamp_seconds"][one] == last.created_at
    finished = max(t.result.finished_at for t in trials if t.result)
    assert m["farm_last_result_timestamp_seconds"][one] == pytest.approx(finished)
    assert m["farm_trial_budget_seconds"][one] == 30
    assert m["farm_queue_depth"][one] == 0
    info = (("campaign", c), ("direction", "minimize"), ("metric", "loss"))
    assert m["farm_campaign_info"][info] == 1
    # Hardware classes, and what a kept change cost: 36 USD an hour is 0.01 USD a second.
    assert by(m["farm_hardware_trials_total"], "hardware") == {"cpu": len(durations)}
    assert sum(m["farm_hardware_seconds_total"].values()) == pytest.approx(sum(durations))
    assert m["farm_compute_cost_usd_total"][one] == pytest.approx(sum(durations) / 100)
    kept = decisions["kept"]
    assert kept >= 1
    assert m["farm_cost_per_kept_usd"][one] == pytest.approx(sum(durations) / 100 / kept)
    assert m["farm_llm_cost_usd_total"][(("campaign", c), ("proposer", "replay"))] == 0
    assert by(m["farm_llm_tokens_total"], "type") == {}
    assert m["farm_ledger_up"][()] == 1

    # Bounded labels only: no trial id, sha, candidate number or error text in any value.
    labels = {pair for series in m.values() for key in series for pair in key}
    names = {"campaign", "kind", "outcome", "state", "decision", "proposer", "result", "type"}
    assert {k for k, _ in labels} == {*names, "metric", "direction", "hardware", "le"}
    values = {v for k, v in labels if k != "le"}
    leaks = [v for v in values if re.search(r"[0-9a-f]{7,}|^c\d+|base-|screen|diverged", v)]
    assert not leaks, leaks


def campaign(store: Store, name: str, *, budget_s: float = 60.0) -> None:
    config = {"metric": "acc", "direction": "maximize", "budget_s": budget_s}
    store.create_campaign(
        Campaign(id=name, target="/t", start_sha="a" * 40, config=config), Incumbent(sha="a" * 40)
    )


def trial(campaign_id: str, i: int) -> Trial:
    return Trial(
        id=f"t{i}",
        campaign=campaign_id,
        kind=TrialKind.CANDIDATE,
        commit_sha="b" * 40,
        base_sha="a" * 40,
        seed=i,
        candidate_id=1,
    )


def test_the_rank_monitor_takes_in_the_screens_that_finished_since_the_last_scrape(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    config = {"metric": "loss", "merge": {"screen_budget_s": 10.0}}
    store.create_campaign(
        Campaign(id="c", target="/t", start_sha="a" * 40, config=config), Incumbent(sha="a" * 40)
    )
    registry = CollectorRegistry()
    registry.register(LedgerCollector(store, ["c"]))
    server = served(registry)

    def screened(cand: int, short: float, full: float) -> None:
        for kind, name, metric in (
            (TrialKind.SHORT, "short", short),
            (TrialKind.CANDIDATE, "screen", full),
        ):
            t = dataclasses.replace(
                trial("c", cand), id=f"c{cand}-g0-{name}", kind=kind, candidate_id=cand,
                reference="a" * 40 if kind is TrialKind.SHORT else "",
            )  # fmt: skip
            store.enqueue_trial(t)
            store.record_result("c", TrialResult(trial_id=t.id, outcome=Outcome.OK, metric=metric))

    def monitor() -> tuple[float, float]:
        m = scrape(server.url)
        one = (("campaign", "c"),)
        return m["farm_screen_rank_pairs"][one], m["farm_screen_rank_agreement"][one]

    try:
        screened(1, 1.0, 1.0)
        screened(2, 2.0, 2.0)
        assert monitor() == (1, 1.0)  # the two budgets order them alike
        screened(3, 3.0, 0.5)  # last at the short budget, first at the full one
        pairs, tau = monitor()
        assert pairs == 3 and tau == pytest.approx(-1 / 3)
        assert monitor() == (3, pytest.approx(-1 / 3))  # nothing new: the same
    finally:
        server.close()
        store.close()


def test_role_metrics_are_read_off_the_store_calls_of_the_process(tmp_path: Path) -> None:
    raw = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    campaign(raw, "c")
    role = RoleMetrics(campaign="c", role="work")
    store = role.instrument(raw)
    role.watch_slots(busy=lambda: 3, cluster=lambda: ClusterView(slots=4, asked=4, alive=2))
    for i in range(4):
        store.enqueue_trial(dataclasses.replace(trial("c", i), created_at=time.time() - 90))
    assert len(store.claim_trials("c", worker="w", n=3, lease_s=30)) == 3
    assert store.release("c", "t0", worker="w", max_deliveries=3, failed=True)
    assert store.release("c", "t1", worker="w", max_deliveries=3, failed=False)
    assert not store.release("c", "t1", worker="w", max_deliveries=3, failed=False)
    store.claim_trials("c", worker="gone", n=1, lease_s=0.0)
    assert len(store.reap("c", now=time.time() + 1, max_deliveries=3)) == 1
    with pytest.raises(StoreError):
        store.get_incumbent("no-such-campaign")

    server = served(role.registry)
    try:
        m = scrape(server.url)
    finally:
        server.close()
    one = (("campaign", "c"),)
    assert m["farm_dispatcher_claims_total"][one] == 4
    assert m["farm_dispatcher_infra_retries_total"][one] == 1
    assert m["farm_dispatcher_interrupted_total"][one] == 1
    assert m["farm_dispatcher_lease_reclaims_total"][one] == 1
    assert m["farm_queue_wait_seconds_count"][one] == 4
    assert m["farm_queue_wait_seconds_sum"][one] >= 4 * 90
    assert m["farm_slots"][one] == 4 and m["farm_slots_busy"][one] == 3
    assert m["farm_nodes"][(("campaign", "c"), ("state", "alive"))] == 2
    assert m["farm_nodes"][(("campaign", "c"), ("state", "lost"))] == 0
    op = (("campaign", "c"), ("op", "claim_trials"), ("role", "work"))
    assert m["farm_store_operation_seconds_count"][op] == 2
    missing = (("campaign", "c"), ("op", "get_incumbent"), ("role", "work"))
    assert m["farm_store_errors_total"][missing] == 1
    assert m["farm_role_info"][(("campaign", "c"), ("role", "work"))] == 1
    raw.close()


def test_proposer_metrics_count_calls_errors_and_retries_of_the_real_sdk(
    fake_api: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ProposerConfig(kind="anthropic", base_url=fake_api.url, timeout_s=2.0, max_retries=2)
    role = RoleMetrics(campaign="c", role="propose")
    proposer = role.measure(AnthropicProposer(cfg, api_key="sk-ant-metrics-test"))
    ctx = ProposalContext(
        campaign="c",
        program="",
        files={"train.py": "LR = 0.5  # the knob\n"},
        editable=["train.py"],
        metric="loss",
        direction=Direction.MINIMIZE,
    )
    fake_api.push(rate_limited(0.05), drafts_reply([draft("LR up", "LR = 0.5", "LR = 0.6")]))
    assert [d.title for d in proposer.propose(ctx, 1)] == ["LR up"]
    fake_api.push(error_reply(400, "invalid_request_error", "bad request"))
    with pytest.raises(ProposerError):
        proposer.propose(ctx, 1)

    server = served(role.registry)
    try:
        m = scrape(server.url)
    finally:
        server.close()
    key = (("campaign", "c"), ("proposer", "anthropic"))
    assert m["farm_proposer_calls_total"][key] == 2
    assert m["farm_proposer_errors_total"][key] == 1
    assert m["farm_llm_retries_total"][key] == 1
    assert m["farm_proposer_call_seconds_count"][key] == 2
    # Counting the SDK's retry notes does not print them at the default log level.
    assert not [r for r in caplog.records if "Retrying request" in r.getMessage()]


@pytest.fixture
def exporter_store(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    store = open_store(url)
    for name, budget in (("one", 60.0), ("two", 600.0)):
        campaign(store, name, budget_s=budget)
        store.enqueue_trial(trial(name, 1))
        store.claim_trials(name, worker="w", n=1, lease_s=30)
        store.record_result(
            name, TrialResult(trial_id="t1", outcome=Outcome.OK, metric=0.9, duration_s=30.0)
        )
    store.close()
    yield url


def test_the_exporter_serves_every_campaign_of_a_store(exporter_store: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "exporter", "--store", exporter_store,
         "--address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        m = wait_for_scrape(f"http://127.0.0.1:{port}/metrics", proc)
        ok = {
            c: m["farm_trials_total"][(("campaign", c), ("kind", "candidate"), ("outcome", "ok"))]
            for c in ("one", "two")
        }
        assert ok == {"one": 1, "two": 1}
        # Each campaign's buckets follow its own budget: 30 s is half of one, 5% of two.
        below = {
            dict(k)["campaign"]: v
            for k, v in m["farm_trial_duration_seconds_bucket"].items()
            if dict(k)["le"] == "30.0" and dict(k)["kind"] == "candidate"
        }
        assert below == {"one": 1, "two": 1}
        # A campaign created while it runs is served at the next scrape.
        store = open_store(exporter_store)
        campaign(store, "three")
        store.close()
        assert "three" in {dict(k)["campaign"] for k in scrape_url(port)["farm_campaign_info"]}
        assert scrape_url(port)["farm_role_info"][(("campaign", ""), ("role", "exporter"))] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode in (0, 130), out
    assert "Traceback" not in out


def scrape_url(port: int) -> Samples:
    return scrape(f"http://127.0.0.1:{port}/metrics")


def wait_for_scrape(url: str, proc: subprocess.Popen[str]) -> Samples:
    deadline = time.time() + 30
    while True:
        try:
            return scrape(url)
        except OSError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, "the exporter did not come up"
            time.sleep(0.2)


def test_the_exporter_refuses_a_taken_address(
    exporter_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        code = main(["exporter", "--store", exporter_store, "--address", f"127.0.0.1:{taken}"])
    assert code == 2
    assert "pick a free --address" in capsys.readouterr().err


def test_a_bad_metrics_address_is_refused_naming_the_key_or_the_flag(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_target(extra_toml='[metrics]\naddress = "9464"\n', name="bad")
    assert main(["status", str(bad)]) == 2
    assert "farm.toml: [metrics] address: '9464' is not host:port" in capsys.readouterr().err
    good = make_target(name="good")
    assert main(["run", str(good), "--metrics-address", "localhost"]) == 2
    assert "--metrics-address: 'localhost' is not host:port" in capsys.readouterr().err
    prices = make_target(extra_toml="[metrics]\nhour_usd = { cpu = -1.0 }\n", name="prices")
    assert main(["status", str(prices)]) == 2
    assert "[metrics] hour_usd.cpu: -1 is out of range; write a number >= 0" in (
        capsys.readouterr().err
    )
