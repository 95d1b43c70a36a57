"""What the KubeRay operator (v1.6-1.7) makes of k8s/: each group's `ray start` command,
the Ray containers' environment, the RayJob submitter's command and environment. A
literal transcription of ray-operator/controllers/ray/common/pod.go
(generateRayStartCommand, setMissingRayStartParams, updateRayStartParams{Labels,Resources},
setContainerEnvVars, SetContainerTokenAuthEnvVars) and common/job.go
(BuildJobSubmitCommand, K8sJobMode), so that the rehearsal runs what the pods would run.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from k8s_semantics import quantity

Doc = dict[str, Any]
DEFAULT_METRICS_PORT = "8080"
DEFAULT_AGENT_LISTEN_PORT = "52365"
AUTH_TOKEN_KEY = "auth_token"  # utils.RAY_AUTH_TOKEN_SECRET_KEY
# Boolean-looking values these flags keep as `--flag=false` (convertParamMap).
EXPLICIT_BOOLEANS = ("log-color", "include-dashboard", "include-log-monitor")


def ray_container(group: Doc) -> Doc:
    container: Doc = group["template"]["spec"]["containers"][0]  # utils.RayContainerIndex
    return container


def ray_start_params(group: Doc, *, head: bool, head_address: str = "") -> dict[str, str]:
    """The group's rayStartParams as the operator completes them."""
    params = dict(group.get("rayStartParams") or {})
    custom = {}
    for name, value in (group.get("resources") or {}).items():
        amount = quantity(value)
        if name.lower() == "cpu":
            params["num-cpus"] = str(math.ceil(amount))
        elif name.lower() == "memory":
            params["memory"] = str(math.ceil(amount))
        elif name.lower().endswith("gpu"):
            params["num-gpus"] = str(math.ceil(amount))
        else:
            custom[name] = amount
    if custom:
        params["resources"] = f"'{json.dumps(custom, separators=(',', ':'))}'"
    labels = group.get("labels") or {}
    if labels:
        params["labels"] = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
    else:
        params.setdefault("address", head_address)
    params.setdefault("metrics-export-port", DEFAULT_METRICS_PORT)
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", DEFAULT_AGENT_LISTEN_PORT)
    resources = ray_container(group).get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if "num-cpus" not in params and (limits.get("cpu") or requests.get("cpu")):
        params["num-cpus"] = str(math.ceil(quantity(limits.get("cpu") or requests["cpu"])))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(math.ceil(quantity(limits["memory"])))
    gpus = [k for k in sorted(limits) if k.endswith("gpu") and quantity(limits[k])]
    if "num-gpus" not in params and gpus:
        params["num-gpus"] = str(math.ceil(quantity(limits[gpus[0]])))
    return params


def ray_start_command(params: dict[str, str], *, head: bool) -> str:
    """`ray start` as the container runs it (a shell line: the shell strips the quotes)."""
    flags = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in EXPLICIT_BOOLEANS:
            if value.lower() == "true":
                flags.append(f"--{key}")
        else:
            flags.append(f"--{key}={value}")
    return " ".join(["ray", "start", *(["--head"] if head else []), *flags])


def token_secret(cluster: Doc) -> str | None:
    """The Secret holding the token when the cluster has token auth, else None."""
    auth = cluster["spec"].get("authOptions") or {}
    if auth.get("mode") != "token":
        return None
    name: str = auth.get("secretName") or cluster["metadata"]["name"]
    return name


def operator_env(cluster: Doc, *, head: bool, head_host: str, head_port: str) -> list[Doc]:
    """The variables the operator adds to a Ray container (it skips a name already set)."""
    host = "127.0.0.1" if head else head_host
    env = [
        {"name": "RAY_CLUSTER_NAME", "value": cluster["metadata"]["name"]},
        {"name": "RAY_PORT", "value": head_port},
        {"name": "RAY_ADDRESS", "value": f"{host}:{head_port}"},
        {"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"},
    ]
    if not head:
        env.append({"name": "FQ_RAY_IP", "value": head_host})
    return env + auth_env(cluster)


def auth_env(cluster: Doc) -> list[Doc]:
    """SetContainerTokenAuthEnvVars: on every Ray container and on the job submitter."""
    secret = token_secret(cluster)
    if secret is None:
        return []
    ref = {"secretKeyRef": {"name": secret, "key": AUTH_TOKEN_KEY}}
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "valueFrom": ref},
    ]


def container_env(container: Doc, injected: list[Doc], secrets: Path) -> dict[str, str]:
    """A container's environment as the kubelet sets it, Secrets read from files laid out
    as a mounted Secret volume (`secrets/<name>/<key>`): envFrom first, then env, then what
    the operator added to the names not set."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["secretRef"]
        folder = secrets / ref["name"]
        if folder.is_dir():
            env.update({f.name: f.read_text() for f in sorted(folder.iterdir())})
        else:
            assert ref.get("optional"), f"Secret {ref['name']} (envFrom) does not exist"
    own = {e["name"] for e in container.get("env", [])}
    for var in container.get("env", []) + [e for e in injected if e["name"] not in own]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            path = secrets / ref["name"] / ref["key"]
            assert path.is_file(), f"{var['name']}: Secret {ref['name']} has no key {ref['key']}"
            env[var["name"]] = path.read_text()
    return env


def submitter_command(job: Doc, *, dashboard: str, job_id: str, python: str) -> str:
    """The K8sJobMode submitter's shell line (BuildJobSubmitCommand): wait for the
    dashboard, submit unless this submission id exists (the submitter Job may retry), then
    follow the logs. `dashboard` is the RayJob's status.dashboardURL (host:port)."""
    address = f"http://{dashboard}"
    probe = f"import urllib.request as u; u.urlopen({address + '/api/gcs_healthz'!r}, timeout=5)"
    health = f"{python} -c {shlex.quote(probe)}"
    spec = job["spec"]
    # Fields that add flags here (runtimeEnvYAML, metadata, entrypoint resources) are
    # not modelled: farm's RayJob sets none of them.
    assert not {"runtimeEnvYAML", "metadata", "entrypointNumCpus", "entrypointResources"} & set(
        spec
    )
    submit = ["ray", "job", "submit", "--address", address, "--no-wait"]
    submit += ["--submission-id", job_id, "--", spec["entrypoint"].strip(), ";"]
    return " ".join(
        [
            "until", health, ">/dev/null", "2>&1", ";", "do", "echo", "waiting", ";",
            "sleep", "2", ";", "done", ";",
            "if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null",
            "2>&1", ";", "then", *submit, "fi", ";",
            "ray", "job", "logs", "--address", address, "--follow", job_id,
        ]
    )  # fmt: skip


def submitter_env(cluster: Doc, *, dashboard: str, job_id: str) -> list[Doc]:
    """The submitter container's variables (configureSubmitterContainer)."""
    return [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "RAY_DASHBOARD_ADDRESS", "value": dashboard},
        {"name": "RAY_JOB_SUBMISSION_ID", "value": job_id},
        *auth_env(cluster),
    ]
