"""The k8s/ manifests parse and agree with each other, with the image and with farm itself."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    K8S,
    ROOT,
    after,
    containers,
    dockerfile_ray_version,
    env_of,
    farm_image,
    farm_run_args,
    manifests,
    pod_specs,
    split_farm_job,
)

from farm.config import config_from_dict
from farm.dispatch import resource_options


def obj(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for (k, n), o in manifests().items() if k == kind and name in (None, n)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


def cluster_toml() -> Any:
    path = K8S / "eclip.farm.toml"
    return config_from_dict(tomllib.loads(path.read_text()), source=str(path))


def ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def head() -> dict[str, Any]:
    return obj("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def gpu_group() -> dict[str, Any]:
    (group,) = obj("RayCluster")["spec"]["workerGroupSpecs"]
    return group


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    kinds = {k for k, _ in manifests()}
    assert {"RayCluster", "RayJob", "StatefulSet", "Service", "ConfigMap", "Secret"} <= kinds
    for (kind, name), o in manifests().items():
        assert "/" in o["apiVersion"] or o["apiVersion"] == "v1", (kind, name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (kind, name)


def test_kustomization_applies_the_stack_but_not_the_campaign_or_the_placeholder_key() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization.yaml lists missing {res}"
    assert "rayjob.yaml" not in kust["resources"]
    assert "secret-anthropic.example.yaml" not in kust["resources"]
    (gen,) = kust["configMapGenerator"]
    assert gen["files"] == ["grafana/farm-dashboard.json"]
    assert gen["options"]["labels"] == {"grafana_dashboard": "1"}
    dashboard = K8S / gen["files"][0]
    json.loads(dashboard.read_text())


def test_every_referenced_secret_volume_claim_and_configmap_exists() -> None:
    docs = (ROOT / "docs" / "gpu-cluster.md").read_text()
    made_by_docs = set(re.findall(r"kubectl create secret generic ([a-z0-9-]+)", docs))
    have = {(k, n) for k, n in manifests()}
    secrets = {n for k, n in have if k == "Secret"} | made_by_docs
    claims = {n for k, n in have if k == "PersistentVolumeClaim"}
    for (_, name), o in manifests().items():
        spec = o.get("spec", {})
        templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for where, pod in pod_specs(o):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                for mount in c.get("volumeMounts", []):
                    assert mount["name"] in volumes or mount["name"] in templates, (name, where)
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] in secrets, f"{name}/{where}: no Secret {ref['name']}"
                for src in c.get("envFrom", []):
                    ref = src["secretRef"]
                    assert ref.get("optional") or ref["name"] in secrets, (name, where)
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, (name, where)
                if "configMap" in v:
                    assert ("ConfigMap", v["configMap"]["name"]) in have, (name, where)


def test_the_example_secret_is_the_one_the_head_pod_reads_and_holds_no_real_key() -> None:
    secret = obj("Secret", "farm-anthropic")
    (src,) = head()["envFrom"]
    assert src["secretRef"]["name"] == "farm-anthropic"
    assert secret["stringData"]["ANTHROPIC_API_KEY"].endswith("REPLACE-ME")


def test_redis_service_selects_the_statefulset_and_targets_its_port() -> None:
    svc, sts = obj("Service", "farm-redis"), obj("StatefulSet", "farm-redis")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    (port,) = svc["spec"]["ports"]
    assert ports(c)[port["targetPort"]] == port["port"] == 6379


def test_redis_keeps_an_append_only_file_fsynced_every_second_and_rdb_on_its_volume() -> None:
    sts = obj("StatefulSet", "farm-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert after(args, "--appendonly")[0] == "yes"
    assert after(args, "--appendfsync")[0] == "everysec"
    assert args.count("--save") >= 1
    data_dir = after(args, "--dir")[0]
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == data_dir
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}


def test_gpu_worker_group_requests_one_gpu_on_rtx4090_nodes() -> None:
    pod = gpu_group()["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-4090"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_cluster_farm_toml_pins_trials_to_the_worker_group_labels_and_resources() -> None:
    from ray._private.label_utils import parse_node_labels_string

    params = gpu_group()["rayStartParams"]
    node_labels = parse_node_labels_string(params["labels"])
    custom = json.loads(params["resources"].strip('"').replace('\\"', '"'))
    cfg = cluster_toml()
    assert cfg.resources.labels == node_labels == {"gpu-model": "rtx4090"}
    assert resource_options(cfg)["label_selector"] == node_labels
    assert custom == {"rtx4090": 1}
    # One trial must fit a worker pod: Ray reads its CPUs and GPUs from the limits.
    limits = gpu_group()["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert cfg.resources.gpus_per_trial == 1 <= limits["nvidia.com/gpu"]
    assert cfg.resources.cpus_per_trial <= float(limits["cpu"])
    # The head takes no trials.
    assert obj("RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_cluster_farm_toml_is_the_bundled_example_campaign() -> None:
    example = tomllib.loads((ROOT / "examples" / "eclip" / "farm.toml").read_text())
    ours = tomllib.loads((K8S / "eclip.farm.toml").read_text())

    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if not isinstance(v, dict)}

    assert scalars(ours) == scalars(example)
    assert ours["proposer"]["params"] == example["proposer"]["params"]


def test_every_farm_container_runs_the_image_docker_builds_at_the_dockerfiles_ray() -> None:
    images = {c["image"] for o in manifests().values() for _, c in containers(o)}
    assert images == {farm_image(), "redis:7.2"}
    assert obj("RayCluster")["spec"]["rayVersion"] == dockerfile_ray_version()
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["images"] == [{"name": "farm", "newTag": farm_image().split(":")[1]}]


def test_token_auth_is_on_for_every_ray_node_and_the_job_submitter() -> None:
    ray_objs = [obj("RayCluster"), obj("RayJob")]
    seen = set()
    for o in ray_objs:
        for where, c in containers(o):
            env = env_of(c)
            assert env["RAY_AUTH_MODE"] == "token", where
            seen.add(env["RAY_AUTH_TOKEN"]["secretKeyRef"]["name"])
    assert seen == {"farm-ray-token"}


def test_rayjob_runs_farm_run_on_the_cluster_with_the_redis_store() -> None:
    job, cluster = obj("RayJob"), obj("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[0] == "farm-job"
    target, config, args = split_farm_job(words[1:])
    # The paths are the image's copies of repo files (WORKDIR /home/ray/farm).
    for path in (target, config):
        rel = Path(path).relative_to("/home/ray/farm")
        assert (ROOT / rel).exists(), path
    assert Path(config).name == "eclip.farm.toml"
    parsed = farm_run_args(target, args)  # SystemExit on a flag `farm run` does not have
    svc = obj("Service", "farm-redis")
    assert parsed.store == f"redis://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/0"
    assert parsed.campaign


def test_the_entrypoint_commands_exist() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["farm"] == "farm.cli:main"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "docker/farm-job.sh /usr/local/bin/farm-job" in dockerfile
    farm_job = (ROOT / "docker" / "farm-job.sh").read_text()
    assert re.search(r'^exec farm run "\$repo" "\$@"$', farm_job, re.M)


def test_prometheus_scrapes_the_driver_on_the_head_service_and_ray_on_every_node() -> None:
    cfg = yaml.safe_load(obj("ConfigMap", "farm-prometheus-scrape")["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    (target,) = jobs["farm"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    cluster = obj("RayCluster")
    assert host == f"{cluster['metadata']['name']}-head-svc"  # KubeRay's head Service name
    assert int(port) == ports(head())["farm-metrics"] == cluster_toml().metrics.host_port()[1]
    assert cluster_toml().metrics.host_port()[0] == "0.0.0.0"  # reachable from outside the pod
    keep = {
        tuple(r["source_labels"]): r["regex"]
        for r in jobs["ray"]["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert keep[("__meta_kubernetes_pod_label_ray_io_cluster",)] == cluster["metadata"]["name"]
    port_name = keep[("__meta_kubernetes_pod_container_port_name",)]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        c = group["template"]["spec"]["containers"][0]
        assert ports(c)[port_name] == int(group["rayStartParams"]["metrics-export-port"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_stack_offline() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    assert set(built) == {
        ("Service", "farm-redis"),
        ("StatefulSet", "farm-redis"),
        ("PersistentVolumeClaim", "farm-head-work"),
        ("RayCluster", "farm"),
        ("ConfigMap", "farm-prometheus-scrape"),
        ("ConfigMap", "farm-grafana-dashboard"),
        ("Deployment", "farm-exporter"),
        ("Service", "farm-exporter"),
    }
    # The image transformer reaches the RayCluster's containers (a custom resource).
    images = {c["image"] for _, c in containers(built[("RayCluster", "farm")])}
    assert images == {farm_image()}
