"""A rehearsal of the cluster path on this machine: what the KubeRay operator would run for
k8s/ (kuberay_pods.py) run for real. The head and the rtx4090 group start with the
`ray start` lines, environment and Secrets their pods get; the RayJob's submitter runs the
operator's command line with the token it injects; the driver is `farm-job` as the image
installs it. From submission to SUCCEEDED and a ledger in Redis; then the operator's view
of the job (its status call, which needs the token), and a stop that leaves no driver.

Where it differs from a cluster, and why:
- One machine: both nodes run here, so the rayStartParams' fixed ports and the temp dir
  are replaced by free ones (others run Ray here too); the GPU is a logical one. The
  containers' `bash -lc` is `bash -c`: a login shell here would reset PATH.
- The image is a directory tree made by following docker/Dockerfile (COPY, ENV, WORKDIR,
  `RUN mkdir`, `pip install .` into a venv that borrows this venv's packages: no network),
  mounted at /home/ray for each node's processes by bubblewrap (a mount namespace only).
- The target: the RayJob's entrypoint with a toy target in place of the eCLIP example
  (30-45 s a trial on these CPUs) under k8s/eclip.farm.toml's [resources] and [metrics],
  the store URL pointing at this machine's Redis and fewer candidates.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from deploy_files import (
    K8S,
    ROOT,
    manifests,
    split_farm_job,
)
from helpers import TOY_TOML, TOY_TRAIN, free_port
from image_tree import IMAGE_HOME, Image, base_env, build_image, under_image
from kuberay_pods import (
    AUTH_TOKEN_KEY,
    container_env,
    operator_env,
    ray_container,
    ray_start_command,
    ray_start_params,
    submitter_command,
    submitter_env,
    token_secret,
)
from local_ray import head_address, kill_group

from farm.records import TrialState
from farm.store import open_store

REDIS_URL = os.environ.get("FARM_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
CANDIDATES = 1

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (Debian bubblewrap)"
)


def toy_target(folder: Path, metrics_port: int) -> tuple[Path, Path]:
    """A fast target and its cluster farm.toml: k8s/eclip.farm.toml's [resources] and
    [metrics] (on a free port) around the toy's keys."""
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(TOY_TRAIN)
    (folder / "prepare.py").write_text("# FIXED: evaluation and data\n")
    (folder / "program.md").write_text("Lower the loss.\n")
    (folder / "farm.toml").write_text(TOY_TOML)
    text = (K8S / "eclip.farm.toml").read_text()
    sections = dict(re.findall(r"^(\[[a-z.]+\])\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    metrics = re.sub(r"0\.0\.0\.0:\d+", f"0.0.0.0:{metrics_port}", sections["[metrics]"])
    assert metrics != sections["[metrics]"], "k8s/eclip.farm.toml serves metrics on 0.0.0.0"
    config = folder.parent / "toy.farm.toml"
    config.write_text(
        TOY_TOML
        + "\n[merge]\nrepeats = 2\nconfirm = 0\n"  # fewer runs: the path, not the statistics
        + "\n[resources]\n" + sections["[resources]"]
        + "\n[metrics]\n" + metrics
    )  # fmt: skip
    return folder, config


def rehearsal_entrypoint(job: dict[str, Any], target: str, config: str) -> tuple[str, str]:
    """The RayJob's entrypoint with the toy target, this machine's Redis and fewer
    candidates; everything else (farm-job, the flags, the campaign) as written."""
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[0] == "farm-job"
    shipped, shipped_config, args = split_farm_job(words[1:])
    assert shipped.startswith("/home/ray/farm/") and shipped_config.startswith("/home/ray/farm/")
    args[args.index("--store") + 1] = REDIS_URL
    args[args.index("--max-candidates") + 1] = str(CANDIDATES)
    args.append("--volatile-store")  # this machine's Redis keeps no AOF, k8s/redis.yaml's does
    campaign = args[args.index("--campaign") + 1]
    return shlex.join(["farm-job", target, "--config", config, "--", *args]), campaign


@dataclass
class Rehearsal:
    image: Image
    job: dict[str, Any]
    cluster: dict[str, Any]
    dashboard: str  # host:port, the RayJob's status.dashboardURL
    secrets: Path
    token: str
    entrypoint: str
    campaign: str
    metrics_port: int


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )


def node(
    image: Image,
    *,
    cluster: dict[str, Any],
    group: dict[str, Any],
    home: Path,
    gcs_port: int,
    secret_files: Path,
    extra: dict[str, Any] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """A Ray pod of the group: its `ray start` line, run as the container runs it, with
    the image at /home/ray, and its environment. Ports of its own (`extra`: the head's)."""
    head = group is cluster["spec"]["headGroupSpec"]
    gcs = head_address(gcs_port)
    params = ray_start_params(group, head=head, head_address=gcs)
    for key in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                "runtime-env-agent-port", "metrics-export-port"):  # fmt: skip
        params[key] = str(free_port())
    params |= {k: str(v) for k, v in (extra or {}).items()} | {"disable-usage-stats": "true"}
    host = gcs.rsplit(":", 1)[0]
    injected = operator_env(cluster, head=head, head_host=host, head_port=str(gcs_port))
    env = base_env(image) | container_env(ray_container(group), injected, secret_files)
    ulimit = "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}"  # as the operator's line
    line = f"{ulimit}; {ray_start_command(params, head=head)}"
    return under_image(home, ["bash", "-c", line]), env


@pytest.fixture
def rehearsal(tmp_path: Path) -> Iterator[Rehearsal]:
    cluster, job = manifests()[("RayCluster", "farm")], manifests()[("RayJob", "farm-eclip")]
    redis.Redis.from_url(REDIS_URL).flushdb()
    # Short: Ray's socket paths must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="farm-rh-", dir="/tmp"))
    image = build_image(tmp_path / "image", tmp_path / "venv")
    home = image.root / IMAGE_HOME.lstrip("/")
    metrics_port = free_port()
    target, config = toy_target(home / "targets" / "toy", metrics_port)
    inner = {p: f"{IMAGE_HOME}/{p.relative_to(home)}" for p in (target, config)}
    entrypoint, campaign = rehearsal_entrypoint(job, inner[target], inner[config])
    worker_home = tmp_path / "worker-home"  # a pod of its own: a filesystem of its own
    shutil.copytree(home, worker_home)

    # The Secrets docs/gpu-cluster.md has the user create, as files of a Secret volume.
    token = secrets.token_hex(32)
    folder = tmp_path / "secrets"
    docs = (ROOT / "docs" / "gpu-cluster.md").read_text()
    made = re.findall(r"create secret generic ([a-z0-9-]+) --from-literal=(\w+)=", docs)
    assert {key for _, key in made} == {"auth_token", "ANTHROPIC_API_KEY"}, made
    for name, key in made:
        (folder / name).mkdir(parents=True)
        (folder / name / key).write_text(token if key == "auth_token" else "sk-ant-not-a-key")

    gcs_port, dash_port = free_port(), free_port()
    head_group, worker_group = (
        cluster["spec"]["headGroupSpec"],
        cluster["spec"]["workerGroupSpecs"][0],
    )
    common = {"cluster": cluster, "gcs_port": gcs_port, "secret_files": folder}
    head_ports = {"port": gcs_port, "dashboard-port": dash_port, "temp-dir": temp,
                  "ray-client-server-port": free_port()}  # fmt: skip
    nodes = [
        node(image, group=head_group, home=home, extra=head_ports, **common),
        node(image, group=worker_group, home=worker_home, **common),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    r = Rehearsal(
        image=image, job=job, cluster=cluster, dashboard=f"127.0.0.1:{dash_port}",
        secrets=folder, token=token, entrypoint=entrypoint, campaign=campaign,
        metrics_port=metrics_port,
    )  # fmt: skip
    try:
        # The head; then, once its GCS answers (the workers' wait-gcs-ready init
        # container), the worker; then what `kubectl get raycluster` calls ready.
        procs.append(_start(nodes[0][0], nodes[0][1], tmp_path / "head.log"))
        wait_for("the head's GCS", lambda: dashboard_get(r, "/api/gcs_healthz", token=None), 90)
        procs.append(_start(nodes[1][0], nodes[1][1], tmp_path / "worker.log"))
        wait_for("both nodes", lambda: len(alive_nodes(r)) == 2, 90)
        yield r
    finally:
        for p in reversed(procs):
            kill_group(p)
        shutil.rmtree(temp, ignore_errors=True)
        redis.Redis.from_url(REDIS_URL).flushdb()


def dashboard_get(r: Rehearsal, path: str, *, token: str | None) -> Any:
    """A GET on the dashboard, `token` (if any) in x-ray-authorization as the operator's
    client sends it; None while the dashboard does not answer yet."""
    request = urllib.request.Request(f"http://{r.dashboard}{path}")
    if token:
        request.add_header("x-ray-authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
    except urllib.error.HTTPError:
        raise  # an answer: 401 and the like are for the caller to see
    except OSError:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def operator_token(r: Rehearsal) -> str | None:
    """The token the operator's dashboard client sends: read from the Secret that
    spec.authOptions names, and none without authOptions."""
    secret = token_secret(r.cluster)
    return (r.secrets / secret / AUTH_TOKEN_KEY).read_text() if secret else None


def alive_nodes(r: Rehearsal) -> list[dict[str, Any]]:
    answer = dashboard_get(r, "/api/v0/nodes", token=r.token)
    nodes = answer["data"]["result"]["result"] if answer else []
    return [n for n in nodes if n["state"] == "ALIVE"]


def submitter(r: Rehearsal, job_id: str, entrypoint: str) -> tuple[list[str], dict[str, str]]:
    """The submitter pod's command and environment, as the operator builds them: its
    default container, or the first of submitterPodTemplate's, with what it injects."""
    job = {**r.job, "spec": {**r.job["spec"], "entrypoint": entrypoint}}
    line = submitter_command(job, dashboard=r.dashboard, job_id=job_id, python="python")
    injected = submitter_env(r.cluster, dashboard=r.dashboard, job_id=job_id)
    template = job["spec"].get("submitterPodTemplate")
    container = template["spec"]["containers"][0] if template else {}
    env = base_env(r.image) | container_env(container, injected, r.secrets)
    return ["bash", "-ce", "--", line], env


def job_info(r: Rehearsal, job_id: str) -> dict[str, Any]:
    """GET /api/jobs/<id>: the operator's job-status call."""
    info: dict[str, Any] = dashboard_get(r, f"/api/jobs/{job_id}", token=operator_token(r))
    return info


def drivers(campaign: str) -> list[int]:
    """Pids of `farm run` processes driving this campaign."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if "run" in words and campaign in words and any(w.endswith("/farm") for w in words):
            found.append(int(entry.name))
    return found


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return page.read().decode()
    except OSError:
        return None


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to read its exit status."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_the_rayjob_runs_a_campaign_on_the_cluster_path_and_stops_without_a_driver_left(
    rehearsal: Rehearsal, tmp_path: Path
) -> None:
    r = rehearsal
    # Submission to SUCCEEDED, through the operator's submitter (a Job: retried on failure).
    job_id = f"farm-eclip-{secrets.token_hex(3)}"
    command, env = submitter(r, job_id, r.entrypoint)
    backoff = r.job["spec"]["submitterConfig"]["backoffLimit"]
    for _attempt in range(1 + backoff):
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        if out.returncode == 0:
            break
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs
    assert "made /home/ray/farm-work/toy a git repo" in logs  # farm-job, then farm run
    # The operator's status call: a client without the token is refused; the operator,
    # which reads it from the Secret authOptions names, sees the job succeed.
    with pytest.raises(urllib.error.HTTPError) as refused:
        dashboard_get(r, f"/api/jobs/{job_id}", token=None)
    assert refused.value.code == 401
    assert job_info(r, job_id)["status"] == "SUCCEEDED", logs

    store = open_store(REDIS_URL)
    try:
        trials = store.list_trials(r.campaign)
        assert trials and all(t.state is TrialState.DONE for t in trials), logs
        assert len(store.list_decisions(r.campaign)) == CANDIDATES
        # Trials ran on the rtx4090 group's node (labels, custom resource, GPU), not the head.
        assert {t.result.node for t in trials if t.result} == {worker_node_id(r)}

        # A second job on the same campaign, stopped as `kubectl delete rayjob` stops it.
        long_job = f"farm-eclip-{secrets.token_hex(3)}"
        longer = r.entrypoint.replace(f"--max-candidates {CANDIDATES}", "--max-candidates 1000")
        command, env = submitter(r, long_job, longer)
        follower = _start(command, env, tmp_path / "submitter.log")
        try:
            found = wait_for("the second driver", lambda: drivers(r.campaign), 90)
            # Serving metrics (what Prometheus scrapes on farm-metrics): the campaign is on.
            page = wait_for("driver metrics", lambda: scrape(r.metrics_port), 60)
            assert "farm_" in page
            stop = subprocess.run(
                ["ray", "job", "stop", "--address", f"http://{r.dashboard}", long_job],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert stop.returncode == 0, stop.stdout + stop.stderr
            wait_for("STOPPED", lambda: job_info(r, long_job)["status"] == "STOPPED", 30)
            wait_for("no driver", lambda: not drivers(r.campaign), 30)
            assert not [pid for pid in found if running(pid)]
        finally:
            kill_group(follower)
    finally:
        store.close()


def worker_node_id(r: Rehearsal) -> str:
    (node,) = [n for n in alive_nodes(r) if n["labels"].get("gpu-model") == "rtx4090"]
    return str(node["node_id"])
