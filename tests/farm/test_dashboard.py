"""The Grafana dashboard and the alert rules against a real Prometheus that scrapes a real
distributed campaign: `farm control`, `farm work` and `farm propose` as processes of their
own, each on its metrics port, and `farm exporter`. The roles are killed at the end; the
exporter still serves the final state, and every panel has data.

Prometheus is Debian's `prometheus` package (scripts/test.sh installs it when missing).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import TOY_TOML, TOY_TRAIN, MakeTarget, RedisServer, farm_metric_names, free_port

from farm.records import DecisionKind, TrialState
from farm.store import Store, open_store

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "k8s/grafana/farm-dashboard.json"
SCRAPE_CONFIG = ROOT / "docker/prometheus/prometheus.yml"
RULES = ROOT / "docker/prometheus/farm-alerts.yml"
REDIS_URL = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
# What Grafana would put in for the dashboard's variables over a short campaign.
VARIABLES = {"$campaign": "default", "$__rate_interval": "1m", "$window": "5m"}
ROLES = ("control", "work", "propose")
CAMPAIGN = '{campaign="default"}'


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, expr: str, at: float) -> float:
        (sample,) = self.get("/api/v1/query", query=expr, time=str(at))["result"]
        return float(sample["value"][1])

    def by(self, expr: str, label: str, at: float) -> dict[str, float]:
        result = self.get("/api/v1/query", query=expr, time=str(at))["result"]
        return {s["metric"][label]: float(s["value"][1]) for s in result if float(s["value"][1])}


@dataclass
class Watched:
    prom: Prometheus
    ports: dict[str, int]  # exporter and each role


@contextlib.contextmanager
def prometheus(
    tmp_path: Path, *, exporter: int, roles: list[int], rules: Path = RULES
) -> Iterator[Prometheus]:
    """A real Prometheus on loopback scraping the exporter's and the roles' ports every
    second, with `rules` loaded; the compose stack's scrape config, pointed at this test."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: scripts/test.sh installs Debian's package")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    jobs["farm-exporter"]["static_configs"] = [{"targets": [f"127.0.0.1:{exporter}"]}]
    jobs["farm"]["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in roles]}]
    config["scrape_configs"] = [jobs["farm-exporter"], jobs["farm"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(port)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.1)
        # Targets reach the scrape loop only after discovery syncs (every 5 s): wait for it,
        # so that the campaign is watched from its start.
        for _ in range(100):
            if len(prom.get("/api/v1/targets")["activeTargets"]) == 1 + len(roles):
                break
            time.sleep(0.1)
        yield prom
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    """Prometheus watching the exporter and the three roles, with farm's alert rules."""
    ports = {name: free_port() for name in ("exporter", *ROLES)}
    with prometheus(tmp_path, exporter=ports["exporter"], roles=[ports[r] for r in ROLES]) as p:
        yield Watched(p, ports)


@pytest.fixture
def shared_store() -> Iterator[Store]:
    """The Redis store the roles share, on the tests' database, flushed around the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    store = open_store(REDIS_URL)
    yield store
    store.close()
    client.flushdb()
    client.close()


def farm(*args: str, log: Path) -> subprocess.Popen[str]:
    """A `farm` process of this checkout, in a process group of its own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "farm.cli", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def panel_queries(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' panels included."""
    for p in panels:
        yield from panel_queries(p.get("panels", []))
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            yield p["title"], expr


SLOW = TOY_TRAIN.replace("import random\n", "import random\nimport time\n\ntime.sleep(0.4)\n")
# One draft at a time as the backlog drains: the proposer lives through the campaign.
TOML = TOY_TOML + (
    "[merge]\nrepeats = 3\nconfirm = 1\n[proposer]\nbatch_size = 1\nbacklog = 1\n"
    "[metrics]\nhour_usd = { cpu = 36.0 }\n"
)


def test_a_distributed_campaign_is_watched_to_its_end_and_after_its_roles_die(
    make_target: MakeTarget, watched: Watched, shared_store: Store, tmp_path: Path
) -> None:
    prom, ports = watched.prom, watched.ports
    target = make_target({"train.py": SLOW}, toml=TOML)
    store = ["--store", REDIS_URL]

    def address(name: str) -> list[str]:
        return ["--metrics-address", f"127.0.0.1:{ports[name]}"]

    exporter = farm(
        "exporter",
        *store,
        "--address",
        f"127.0.0.1:{ports['exporter']}",
        log=tmp_path / "exporter.log",
    )
    started = time.time()
    roles = {
        "control": farm(
            "control", str(target), *store, *address("control"), log=tmp_path / "control.log"
        ),
        "work": farm(
            "work", str(target), *store, *address("work"), "--slots", "2", log=tmp_path / "work.log"
        ),
        "propose": farm(
            "propose",
            str(target),
            *store,
            *address("propose"),
            "--max-candidates",
            "4",
            log=tmp_path / "propose.log",
        ),
    }
    try:
        # Until every candidate is decided: 4 valid candidates from the mutate proposer.
        deadline = time.time() + 240
        while time.time() < deadline:
            camp = shared_store.get_campaign("default")
            decided = len(shared_store.list_decisions("default")) if camp else 0
            if decided >= 4 and roles["propose"].poll() is not None:
                break
            for name, p in roles.items():
                assert p.poll() in (None, 0), (tmp_path / f"{name}.log").read_text()
            time.sleep(0.5)
        else:
            logs = {n: (tmp_path / f"{n}.log").read_text() for n in roles}
            raise AssertionError(f"the campaign did not finish: {logs}")
        time.sleep(3)  # a few scrapes of the final state from the roles too
        assert roles["control"].poll() is None and roles["work"].poll() is None
        for p in roles.values():  # the driver and the dispatcher die, hard
            kill(p)
        time.sleep(4)  # scrapes that find the roles gone
        at = time.time()

        # The roles are down; the exporter is up and serves the final state.
        up = prom.get("/api/v1/query", query="up", time=str(at))["result"]
        assert {(s["metric"]["job"], s["value"][1]) for s in up} == {
            ("farm", "0"),
            ("farm-exporter", "1"),
        }
        trials = shared_store.list_trials("default")
        assert all(t.state is TrialState.DONE for t in trials)
        outcomes = collections.Counter(t.result.outcome.value for t in trials if t.result)
        q = "sum by (outcome) (max by (campaign, kind, outcome) (farm_trials_total{c}))"
        assert prom.by(q.replace("{c}", CAMPAIGN), "outcome", at) == outcomes
        decisions = collections.Counter(
            d.kind.value for d in shared_store.list_decisions("default")
        )
        q = "sum by (decision) (max by (campaign, decision) (farm_decisions_total{c}))"
        assert prom.by(q.replace("{c}", CAMPAIGN), "decision", at) == decisions
        inc = shared_store.get_incumbent("default")
        assert inc.metric is not None
        assert math.isclose(
            prom.value('max(farm_incumbent_metric{campaign="default"})', at), inc.metric
        )
        kept = decisions[DecisionKind.KEPT.value]
        assert kept >= 1
        seconds = sum(t.result.duration_s for t in trials if t.result)
        per_kept = prom.value('max(farm_cost_per_kept_usd{campaign="default"})', at)
        assert math.isclose(per_kept, seconds / 100 / kept, rel_tol=1e-6)

        # Every panel had data while the campaign ran, and not only NaN.
        dashboard = json.loads(DASHBOARD.read_text())
        queries = list(panel_queries(dashboard["panels"]))
        assert len(queries) >= 40
        empty = []
        for title, expr in queries:
            assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
            result = prom.get(
                "/api/v1/query_range", query=expr, start=str(started), end=str(at), step="1"
            )["result"]
            values = [float(v) for s in result for _, v in s["values"]]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        # The campaign really moved while Prometheus watched, and its roles were seen.
        q = 'max_over_time(sum(farm_slots_busy{campaign="default"})[5m:1s])'
        assert prom.value(q, at) >= 1
        claims = 'max_over_time(sum(farm_dispatcher_claims_total{campaign="default"})[5m:1s])'
        assert prom.value(claims, at) == len(trials)
        # Every alert rule evaluated without an error against these series; none fired.
        groups = prom.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 11 and all(r["health"] == "ok" for r in rules), rules
        assert prom.get("/api/v1/alerts")["alerts"] == []
    finally:
        for p in [*roles.values(), exporter]:
            kill(p)


def firing(prom: Prometheus, *, within_s: float) -> Iterator[set[tuple[str, str]]]:
    """The firing alerts as (name, campaign or role), polled until the caller is satisfied."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        alerts = prom.get("/api/v1/alerts")["alerts"]
        yield {
            (a["labels"]["alertname"], a["labels"].get("role", a["labels"].get("campaign", "")))
            for a in alerts
            if a["state"] == "firing"
        }
        time.sleep(0.5)
    raise AssertionError(f"not firing within {within_s:g} s: {prom.get('/api/v1/alerts')}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it kills it), durable as k8s/redis.yaml's."""
    server = RedisServer(tmp_path / "redis", "--save", "", "--appendonly", "yes").start()
    yield server
    server.kill()


def test_the_store_and_dispatcher_alerts_fire_during_the_fault(
    make_target: MakeTarget,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """`farm control` queues the baseline and no `farm work` runs it: FarmNoDispatcher (the
    case FarmSlotsIdleWithWorkQueued cannot see). Then Redis dies: the exporter still answers
    every scrape (farm_ledger_up 0) and FarmLedgerUnreadable fires, and the driver's store
    errors count while it still retries, so FarmStoreErrors fires before it gives up."""
    url, server = redis_server.url, redis_server
    # The rules as shipped, but with seconds where they wait minutes.
    rules = tmp_path / "farm-alerts.yml"
    rules.write_text(re.sub(r"\bfor: \w+", "for: 2s", RULES.read_text()))
    target = make_target({"train.py": SLOW}, toml=TOML)
    ports = {"exporter": free_port(), "control": free_port()}
    exporter = farm(
        "exporter", "--store", url, "--address", f"127.0.0.1:{ports['exporter']}",
        log=tmp_path / "exporter.log",
    )  # fmt: skip
    control = farm(
        "control", str(target), "--store", url,
        "--metrics-address", f"127.0.0.1:{ports['control']}",
        log=tmp_path / "control.log",
    )  # fmt: skip
    with prometheus(
        tmp_path, exporter=ports["exporter"], roles=[ports["control"]], rules=rules
    ) as prom:
        try:
            for alerts in firing(prom, within_s=60):
                assert control.poll() is None, (tmp_path / "control.log").read_text()
                if alerts:
                    break
            assert alerts == {("FarmNoDispatcher", "default")}

            server.kill()
            for alerts in firing(prom, within_s=20):
                if {("FarmLedgerUnreadable", ""), ("FarmStoreErrors", "control")} <= alerts:
                    break
            # During the fault: the driver is still retrying its store call, not dead.
            assert control.poll() is None, (tmp_path / "control.log").read_text()
            up = prom.get("/api/v1/query", query='up{job="farm-exporter"}')["result"]
            assert [s["value"][1] for s in up] == ["1"]  # scrapes answered in time
        finally:
            for p in (control, exporter):
                kill(p)


def kill(p: subprocess.Popen[str]) -> None:
    """SIGKILL to the process and its group, if it is still there."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def test_the_dashboard_uses_only_metrics_farm_serves(tmp_path: Path) -> None:
    served = farm_metric_names(tmp_path)
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for _, expr in panel_queries(dashboard["panels"])
        for name in re.findall(r"\bfarm_\w+", expr)
    }
    assert used <= served, used - served
