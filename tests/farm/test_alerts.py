"""The alert rules: their `promtool test rules` suite, one set of rules for compose and k8s,
and only metrics farm really serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import farm_metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "farm-alerts.yml"
PROMETHEUS_RULE = ROOT / "k8s" / "farm-alerts.yaml"
RULE_TESTS = Path(__file__).parent / "alerts" / "farm-alerts.test.yml"


def test_the_alert_rules_pass_their_promtool_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool: scripts/test.sh installs Debian's prometheus package")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # Every rule has a test that makes it fire.
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert tested == rules


def test_k8s_and_compose_load_the_same_rules() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert f"./prometheus/{RULES.name}:/etc/prometheus/{RULES.name}:ro" in mounts


def test_the_rules_use_only_metrics_farm_serves(tmp_path: Path) -> None:
    served = farm_metric_names(tmp_path)
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {name for e in exprs for name in re.findall(r"\bfarm_\w+", e)}
    assert used and used <= served, used - served
