"""k8s/ and docker/ checked as an operator would before applying them, against the real
schemas and rules (checks.py), and every check shown failing on a manifest broken on
purpose, so that a pass means something."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from checks import (
    builtin_errors,
    cluster_rule_errors,
    compose_errors,
    crd_errors,
    job_rule_errors,
)
from deploy_files import DOCKER, compose, manifests, rendered

Doc = dict[str, Any]


def docs_to_apply() -> list[Doc]:
    """What `kubectl apply -k k8s/` sends (the raw files without kubectl), plus the
    objects applied on their own (RayJob, the example Secret)."""
    stack = rendered()
    if stack is None:
        return list(manifests().values())
    applied = {(d["kind"], d["metadata"]["name"]) for d in stack}
    return stack + [o for key, o in manifests().items() if key not in applied]


def of_kind(kind: str) -> list[Doc]:
    return [d for d in docs_to_apply() if d["kind"] == kind]


def one(kind: str) -> Doc:
    (doc,) = of_kind(kind)
    return copy.deepcopy(doc)


def test_every_kuberay_resource_passes_its_crd_schema() -> None:
    ray_docs = of_kind("RayCluster") + of_kind("RayJob")
    assert len(ray_docs) == 2
    assert [e for d in ray_docs for e in crd_errors(d)] == []


# Custom resources of other operators, checked elsewhere: the PrometheusRule's rules by
# promtool in tests/farm/test_alerts.py (Kubernetes' schemas do not know the kind).
OTHER_OPERATORS = {"PrometheusRule"}


def test_every_built_in_kind_and_pod_template_passes_kubernetes_1_30_to_1_37() -> None:
    docs = [d for d in docs_to_apply() if d["kind"] not in OTHER_OPERATORS]
    kinds = {d["kind"] for d in docs}
    assert {"Service", "StatefulSet", "PersistentVolumeClaim", "ConfigMap", "Secret"} <= kinds
    assert [e for d in docs for e in builtin_errors(d)] == []


def test_the_raycluster_and_rayjob_pass_the_operators_spec_rules() -> None:
    clusters = of_kind("RayCluster")
    assert [e for c in clusters for e in cluster_rule_errors(c)] == []
    assert job_rule_errors(one("RayJob"), clusters) == []


def test_compose_passes_the_compose_spec_schema() -> None:
    assert compose_errors(compose()) == []


def prometheus_configs() -> dict[str, str]:
    (scrape,) = [d for d in of_kind("ConfigMap") if "prometheus.yml" in d.get("data", {})]
    return {
        "k8s": scrape["data"]["prometheus.yml"],
        "compose": (DOCKER / "prometheus" / "prometheus.yml").read_text(),
    }


def promtool(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` on a config, its Kubernetes service discovery stood in for by
    a static target: Debian's promtool is built without Kubernetes discovery and refuses
    `kubernetes_sd_configs` (test_manifests.py checks that part: roles, namespaces, and
    what the relabelling keeps)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus; scripts/test.sh)")
    cfg = yaml.safe_load(config)
    for job in cfg["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["discovered-by-kubernetes:80"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("which", ["k8s", "compose"])
def test_both_prometheus_configs_pass_promtool(which: str, tmp_path: Path) -> None:
    out = promtool(prometheus_configs()[which], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# --- each check fails on a manifest broken on purpose ----------------------------------


def worker(cluster: Doc) -> Doc:
    group: Doc = cluster["spec"]["workerGroupSpecs"][0]
    return group


def ray_container(group: Doc) -> Doc:
    container: Doc = group["template"]["spec"]["containers"][0]
    return container


def break_cluster(change: Callable[[Doc], Any]) -> Doc:
    cluster = one("RayCluster")
    change(cluster)
    return cluster


def crd(change: Callable[[Doc], Any]) -> list[str]:
    return crd_errors(break_cluster(change))


def builtin(kind: str, change: Callable[[Doc], Any]) -> list[str]:
    doc = one(kind)
    change(doc)
    return builtin_errors(doc, versions=["1.30.0", "1.37.0"])


def rules(change: Callable[[Doc], Any]) -> list[str]:
    return cluster_rule_errors(break_cluster(change))


def job_rules(change: Callable[[Doc], Any]) -> list[str]:
    job = one("RayJob")
    change(job)
    return job_rule_errors(job, of_kind("RayCluster"))


def broken_compose(change: Callable[[Doc], Any]) -> list[str]:
    doc = copy.deepcopy(compose())
    change(doc)
    return compose_errors(doc)


def old_token_env(cluster: Doc) -> None:
    """Token auth as the first manifests had it: environment variables only."""
    del cluster["spec"]["authOptions"]
    for group in [cluster["spec"]["headGroupSpec"], worker(cluster)]:
        ray_container(group).setdefault("env", []).extend(
            [
                {"name": "RAY_AUTH_MODE", "value": "token"},
                {
                    "name": "RAY_AUTH_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "farm-ray-token", "key": "auth_token"}},
                },
            ]
        )


BROKEN: dict[str, tuple[Callable[[], list[str]], str]] = {
    "unknown field in a worker group": (
        lambda: crd(lambda c: worker(c).update(rayStartParam={})),
        "'rayStartParam' was unexpected",
    ),
    "replicas of the wrong type": (
        lambda: crd(lambda c: worker(c).update(replicas="two")),
        "'two' is not of type 'integer'",
    ),
    "two ports with one number (a map list)": (
        lambda: crd(
            lambda c: ray_container(worker(c))["ports"].append(
                {"containerPort": 8080, "name": "again"}
            )
        ),
        "duplicate ['containerPort', 'protocol']",
    ),
    "an authOptions mode KubeRay does not know": (
        lambda: crd(lambda c: c["spec"]["authOptions"].update(mode="on")),
        "'on' is not one of ['disabled', 'token']",
    ),
    "a typo in a StatefulSet's container": (
        lambda: builtin(
            "StatefulSet",
            lambda s: s["spec"]["template"]["spec"]["containers"][0].update(livenessProbes={}),
        ),
        "'livenessProbes' was unexpected",
    ),
    "a typo in a worker's pod template": (
        lambda: builtin("RayCluster", lambda c: worker(c)["template"]["spec"].update(hostUser=0)),
        "'hostUser' was unexpected",
    ),
    "labels in rayStartParams (refused since KubeRay 1.5)": (
        lambda: rules(lambda c: worker(c)["rayStartParams"].update(labels="gpu-model=rtx4090")),
        "rayStartParams['labels'] is not supported for rtx4090 group",
    ),
    "an invalid group label": (
        lambda: rules(lambda c: worker(c).update(labels={"gpu model": "rtx 4090"})),
        "invalid label gpu model=rtx 4090",
    ),
    "custom resources both in rayStartParams and the top-level field": (
        lambda: rules(
            lambda c: worker(c).update(
                resources={"rtx4090": "1"},
                rayStartParams={**worker(c)["rayStartParams"], "resources": '{"rtx4090": 1}'},
            )
        ),
        "should not be set in both rayStartParams and Resources",
    ),
    "token auth by environment variables only": (
        lambda: rules(old_token_env),
        "no spec.authOptions.mode: token",
    ),
    "token auth below Ray 2.52": (
        lambda: rules(lambda c: c["spec"].update(rayVersion="2.51.0")),
        "authOptions.mode is 'token' but rayVersion is 2.51.0",
    ),
    "a RayJob on a RayCluster that is not there": (
        lambda: job_rules(lambda j: j["spec"].update(clusterSelector={"ray.io/cluster": "frm"})),
        "names no RayCluster 'frm'",
    ),
    "a compose service with an unknown key": (
        lambda: broken_compose(lambda d: d["services"]["redis"].update(healthchek={})),
        "'healthchek' was unexpected",
    ),
    "a compose volume that is not a mapping": (
        lambda: broken_compose(lambda d: d["volumes"].update({"farm-work": ["x"]})),
        "is not of type 'object', 'null'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_check_fails_on_a_manifest_broken_on_purpose(case: str) -> None:
    check, expected = BROKEN[case]
    errors = check()
    assert any(expected in e for e in errors), errors


def test_promtool_fails_on_a_broken_scrape_config(tmp_path: Path) -> None:
    cfg = yaml.safe_load(prometheus_configs()["k8s"])
    job = next(j for j in cfg["scrape_configs"] if j.get("relabel_configs"))
    job["relabel_configs"][0]["action"] = "kep"
    out = promtool(yaml.safe_dump(cfg), tmp_path)
    assert out.returncode != 0
    assert "kep" in out.stdout + out.stderr
