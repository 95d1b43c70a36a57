"""The Grafana dashboard against a real Prometheus that scraped a real campaign.

Prometheus is Debian's `prometheus` package (scripts/test.sh installs it when missing).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import TOY_TRAIN, MakeTarget, RunCampaign, free_port

from farm.records import TrialKind

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "k8s/grafana/farm-dashboard.json"
SCRAPE_CONFIG = ROOT / "docker/prometheus/prometheus.yml"
# What Grafana would put in for the dashboard's variables over a short campaign.
VARIABLES = {"$campaign": "default", "$__rate_interval": "1m"}


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, int]]:
    """A real Prometheus on loopback scraping a farm driver every second; yields (it, port)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: scripts/test.sh installs Debian's package")
    farm_port, port = free_port(), free_port()
    # The compose stack's scrape config, pointed at this test's driver and sped up.
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "farm"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{farm_port}"]}]
    config["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
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
            if prom.get("/api/v1/targets")["activeTargets"]:
                break
            time.sleep(0.1)
        yield prom, farm_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def panel_queries(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' panels included."""
    for p in panels:
        yield from panel_queries(p.get("panels", []))
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            yield p["title"], expr


def test_every_dashboard_panel_has_data_from_a_real_campaign(
    make_target: MakeTarget,
    run_campaign: RunCampaign,
    prometheus: tuple[Prometheus, int],
) -> None:
    prom, farm_port = prometheus
    # Trials long enough that Prometheus sees the campaign move over a few scrapes.
    slow = TOY_TRAIN.replace("import random\n", "import random\nimport time\n\ntime.sleep(0.5)\n")
    target = make_target(
        {"train.py": slow}, extra_toml=f'[metrics]\naddress = "127.0.0.1:{farm_port}"\n'
    )
    done = run_campaign(target, max_candidates=4)
    assert done.code == 0, done.output

    # The driver's endpoint closed with the run: query at its last successful scrape.
    (series,) = prom.get("/api/v1/query", query='up{job="farm"}[5m]')["result"]
    good = [float(ts) for ts, value in series["values"] if value == "1"]
    assert len(good) >= 3, series
    at = str(max(good))

    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(panel_queries(dashboard["panels"]))
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
        result = prom.get("/api/v1/query", query=expr, time=at)["result"]
        if not result:
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)

    def value(expr: str) -> float:
        (sample,) = prom.get("/api/v1/query", query=expr, time=at)["result"]
        return float(sample["value"][1])

    # The campaign really moved while Prometheus watched.
    assert value('sum(rate(farm_trials_total{campaign="default"}[1m]))') > 0
    assert value('max_over_time(farm_slots_busy{campaign="default"}[1m])') >= 1
    # The incumbent it saw is the baseline's estimate or a kept candidate's.
    estimates = [d.metric for d in done.store.list_decisions("default") if d.metric is not None]
    base = [
        t.result.metric
        for t in done.store.list_trials("default")
        if t.kind is TrialKind.BASELINE and t.result and t.result.metric is not None
    ]
    estimates.append(sum(base) / len(base))
    seen = value("farm_incumbent_metric")
    assert any(math.isclose(seen, e) for e in estimates), (seen, estimates)
