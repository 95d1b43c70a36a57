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
    dockerfile_values,
    farm_image,
    farm_run_args,
    kustomization,
    manifests,
    pod_specs,
    rendered,
    split_farm_job,
)
from k8s_semantics import quantity, relabel, schedulable_on
from kuberay_pods import ray_start_params

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


RTX4090 = "NVIDIA-GeForce-RTX-4090"  # GPU feature discovery's nvidia.com/gpu.product


@pytest.mark.parametrize(
    ("product", "lands"),
    [
        (RTX4090, True),
        (f"{RTX4090}-SHARED", True),  # time-slicing (renameByDefault: false) renames the label
        ("NVIDIA-A100-SXM4-80GB", False),
        (None, False),  # a node without GPU feature discovery
    ],
)
def test_gpu_workers_land_on_rtx4090_nodes_with_or_without_time_slicing(
    product: str | None, lands: bool
) -> None:
    pod = gpu_group()["template"]["spec"]
    node = {"kubernetes.io/os": "linux"} | ({"nvidia.com/gpu.product": product} if product else {})
    assert schedulable_on(pod, node) is lands
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    # Time-slicing with renameByDefault: true would advertise nvidia.com/gpu.shared instead:
    # the docs say to keep the default, which keeps this resource name.
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_cluster_farm_toml_pins_trials_to_the_worker_group_labels_and_resources() -> None:
    from ray._private.label_utils import parse_node_labels_string

    # What `ray start` on a worker pod gets from the operator (top-level labels/resources).
    params = ray_start_params(gpu_group(), head=False, head_address="farm-head-svc:6379")
    node_labels = parse_node_labels_string(params["labels"])
    custom = json.loads(params["resources"].strip("'"))
    cfg = cluster_toml()
    assert cfg.resources.labels == node_labels == {"gpu-model": "rtx4090"}
    assert resource_options(cfg)["label_selector"] == node_labels
    assert custom == {"rtx4090": 1}
    # One trial must fit a worker pod: Ray reads its CPUs and GPUs from the limits.
    assert cfg.resources.gpus_per_trial == 1 <= int(params["num-gpus"])
    assert cfg.resources.cpus_per_trial <= int(params["num-cpus"])
    # The head takes no trials.
    assert obj("RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_the_cluster_farm_toml_is_the_bundled_example_campaign() -> None:
    example = tomllib.loads((ROOT / "examples" / "eclip" / "farm.toml").read_text())
    ours = tomllib.loads((K8S / "eclip.farm.toml").read_text())

    def scalars(d: dict) -> dict:
        return {k: v for k, v in d.items() if not isinstance(v, dict)}

    assert scalars(ours) == scalars(example)
    assert ours["proposer"]["params"] == example["proposer"]["params"]


def test_every_farm_container_runs_the_image_kustomize_sets_at_the_dockerfiles_ray() -> None:
    images = {c["image"] for o in manifests().values() for _, c in containers(o)}
    assert images == {farm_image(), "redis:7.2"}
    assert obj("RayCluster")["spec"]["rayVersion"] == dockerfile_ray_version()
    assert kustomization()["images"] == [{"name": "farm", "newTag": farm_image().split(":")[1]}]
    # The RayJob, applied on its own, names no image: its submitter then runs the head's,
    # which `kustomize edit set image` moves with the rest of the stack.
    assert "submitterPodTemplate" not in obj("RayJob")["spec"]


def test_token_auth_is_managed_by_the_operator_from_the_secret_the_docs_create() -> None:
    auth = obj("RayCluster")["spec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "farm-ray-token"}
    docs = (ROOT / "docs" / "gpu-cluster.md").read_text()
    assert "kubectl -n farm create secret generic farm-ray-token --from-literal=auth_token=" in docs
    # Nobody sets the variables by hand: the operator injects them into every Ray container
    # and the submitter, and uses the same Secret for its own calls to the dashboard.
    for o in manifests().values():
        for where, c in containers(o):
            names = {e["name"] for e in c.get("env", [])}
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & names, where


def test_every_object_goes_to_the_farm_namespace() -> None:
    namespace = kustomization()["namespace"]
    assert namespace == "farm"
    for rel in ("rayjob.yaml", "secret-anthropic.example.yaml"):  # applied with -f
        for doc in yaml.safe_load_all((K8S / rel).read_text()):
            assert doc["metadata"]["namespace"] == namespace, rel


def test_redis_is_restarted_when_it_stops_answering_but_not_while_loading() -> None:
    (c,) = obj("StatefulSet", "farm-redis")["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["exec"]["command"]
    live = c["livenessProbe"]
    command = live["exec"]["command"]
    # A Redis replaying a long AOF answers LOADING: alive, and must not be killed for it.
    assert "LOADING" in " ".join(command) and "PONG" in " ".join(command)
    assert live["failureThreshold"] * live["periodSeconds"] >= 30
    if shutil.which("redis-cli"):  # the probe, run against this machine's Redis
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_ray_node_has_shared_memory_for_its_object_store() -> None:
    """Ray's object store lives in /dev/shm and moves to disk (slowly, with a warning)
    when /dev/shm is smaller; its default is 30% of the pod's memory, so it is set here."""
    cluster = obj("RayCluster")
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (c,) = pod["containers"]
        store = int(group["rayStartParams"]["object-store-memory"])
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        shm = quantity(volume["emptyDir"]["sizeLimit"])
        assert volume["emptyDir"]["medium"] == "Memory"
        assert shm >= store + 2**30, group.get("groupName", "head")  # + 1 GiB for the trials
        assert shm + quantity(c["resources"]["requests"]["memory"]) / 2 <= quantity(
            c["resources"]["limits"]["memory"]
        )


def test_gpu_workers_may_create_the_trial_sandbox() -> None:
    """bwrap makes user, PID and network namespaces and mounts a private /proc: the pod runs
    in a user namespace of its own (hostUsers: false), which allows an unmasked /proc; the
    runtime's default seccomp and AppArmor profiles refuse unshare and mount."""
    pod = gpu_group()["template"]["spec"]
    assert pod["hostUsers"] is False
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["procMount"] == "Unmasked"
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert not sc.get("privileged") and "capabilities" not in sc


def test_the_head_keeps_the_target_repos_where_the_image_makes_them() -> None:
    head_pod = obj("RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    (mount,) = [m for m in head_pod["containers"][0]["volumeMounts"] if m["name"] == "work"]
    assert mount["mountPath"] == dockerfile_values("ENV")["FARM_WORK_DIR"]
    assert head_pod["securityContext"]["fsGroup"] == 100  # the image's `ray` user's group


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


def discovered_pods() -> list[tuple[str, dict[str, str]]]:
    """(what, meta labels) of the pod targets Kubernetes discovery would offer Prometheus:
    one per declared container port of every RayCluster pod, and a pod elsewhere."""
    cluster = obj("RayCluster")
    namespace = kustomization()["namespace"]
    targets = []
    groups = [("head", cluster["spec"]["headGroupSpec"])] + [
        ("worker", g) for g in cluster["spec"]["workerGroupSpecs"]
    ]
    for node_type, group in groups:
        for port in group["template"]["spec"]["containers"][0].get("ports", []):
            meta = {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": f"farm-{node_type}-x",
                "__meta_kubernetes_pod_label_ray_io_cluster": cluster["metadata"]["name"],
                "__meta_kubernetes_pod_label_ray_io_node_type": node_type,
                "__meta_kubernetes_pod_container_port_name": port["name"],
                "__address__": f"10.0.0.1:{port['containerPort']}",
            }
            targets.append((f"{node_type}:{port['name']}", meta))
    return targets


def test_prometheus_finds_the_driver_and_every_ray_node_in_farms_namespace_only() -> None:
    cfg = yaml.safe_load(obj("ConfigMap", "farm-prometheus-scrape")["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    namespace = kustomization()["namespace"]
    for name, job in jobs.items():  # no Service names: they resolve only inside farm's namespace
        assert "static_configs" not in job
        (sd,) = job["kubernetes_sd_configs"]
        role = "endpoints" if name == "farm-exporter" else "pod"  # the exporter's Service
        assert sd == {"role": role, "namespaces": {"names": [namespace]}}
    pods = {name: job for name, job in jobs.items() if name != "farm-exporter"}
    kept = {
        name: sorted(
            what for what, meta in discovered_pods() if relabel(meta, job["relabel_configs"])
        )
        for name, job in pods.items()
    }
    assert kept == {"farm": ["head:farm-metrics"], "ray": ["head:metrics", "worker:metrics"]}
    head_port = ports(head())["farm-metrics"]
    assert head_port == cluster_toml().metrics.host_port()[1]
    assert cluster_toml().metrics.host_port()[0] == "0.0.0.0"  # reachable from outside the pod
    cluster = obj("RayCluster")
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        c = group["template"]["spec"]["containers"][0]
        assert ports(c)["metrics"] == int(group["rayStartParams"]["metrics-export-port"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_stack_offline_into_farms_namespace() -> None:
    stack = rendered()
    assert stack is not None
    built = {(d["kind"], d["metadata"]["name"]): d for d in stack}
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
    assert {d["metadata"]["namespace"] for d in stack} == {"farm"}
    # The image transformer reaches the RayCluster's containers (a custom resource).
    images = {c["image"] for _, c in containers(built[("RayCluster", "farm")])}
    assert images == {farm_image()}
