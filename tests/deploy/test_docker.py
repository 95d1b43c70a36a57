"""docker/: the image's sources exist, and the compose stack agrees with itself and with k8s/.

No Docker engine (nor the compose plugin) runs here, so nothing is built or started: these
check what a build or `docker compose up` would trip over first.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml
from deploy_files import (
    DOCKER,
    ROOT,
    dockerfile_ray_version,
    farm_image,
    farm_run_args,
    split_farm_job,
)
from deploy_files import compose as load_compose

from farm.config import config_from_dict

DOCKERFILE = (DOCKER / "Dockerfile").read_text()


def instructions() -> list[tuple[str, list[str]]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), shlex.split(rest)))
    return out


def dockerignored(rel: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pat) or fnmatch.fnmatch(prefix, pat.removeprefix("**/"))
        for pat in patterns
        for prefix in prefixes
    )


def service(name: str) -> dict[str, Any]:
    return load_compose()["services"][name]


def container_ports(svc: dict[str, Any]) -> set[int]:
    ports = {int(p) for p in svc.get("expose", [])}
    ports |= {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])}
    return ports


def test_dockerfile_copies_only_files_that_exist_and_survive_dockerignore() -> None:
    copies = [args for word, args in instructions() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        paths = [a for a in args if not a.startswith("--")]
        for src in paths[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
            assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for rel in (".git", ".venv", "runs/eclip", "farm/__pycache__", "examples/eclip/.cache"):
        assert dockerignored(rel), rel
    for rel in ("farm/cli.py", "examples/eclip/train.py", "docker/farm-job.sh"):
        assert not dockerignored(rel), rel


def test_image_installs_farm_with_ray_default_pinned_to_the_base_images_ray() -> None:
    version = dockerfile_ray_version()
    (base,) = [args[0] for word, args in instructions() if word == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py311-gpu"
    pip = [" ".join(a) for w, a in instructions() if w == "RUN" and "pip" in a]
    assert pip == ["pip install --no-cache-dir ray[default]==${RAY_VERSION} ."]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requires["requires-python"] == ">=3.11"
    ray_req = next(d for d in requires["dependencies"] if d.startswith("ray[default]"))
    floor = tuple(int(x) for x in ray_req.split(">=")[1].split("."))
    assert tuple(int(x) for x in version.split(".")) >= floor
    assert any(w == "RUN" and "git" in a for w, a in instructions())  # gitops needs git


def test_compose_builds_from_the_repo_root_and_every_mounted_path_exists() -> None:
    build = service("ray-head")["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    for name, svc in load_compose()["services"].items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if not src.startswith("."):
                assert src in load_compose()["volumes"], f"{name}: undeclared volume {src}"
                continue
            rel = (DOCKER / src).resolve().relative_to(ROOT).as_posix()
            assert (ROOT / rel).exists(), f"{name}: mounts missing {rel}"


def test_compose_runs_the_image_k8s_runs() -> None:
    images = {svc.get("image") for svc in load_compose()["services"].values()}
    assert farm_image() in images
    for name in ("ray-head", "ray-worker-gpu", "farm"):
        assert service(name)["image"] == farm_image(), name


def test_compose_redis_keeps_an_append_only_file_fsynced_every_second() -> None:
    cmd = service("redis")["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "everysec"
    assert "--save" in cmd
    assert any(v.endswith(":" + cmd[cmd.index("--dir") + 1]) for v in service("redis")["volumes"])


def test_every_ray_container_and_the_submitter_use_token_auth() -> None:
    for name in ("ray-head", "ray-worker-gpu", "farm"):
        env = service(name)["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name


def test_the_gpu_worker_carries_the_label_the_cluster_farm_toml_selects() -> None:
    words = shlex.split(service("ray-worker-gpu")["command"])
    labels = next(w for w in words if w.startswith("--labels=")).removeprefix("--labels=")
    path = ROOT / "k8s" / "eclip.farm.toml"
    cfg = config_from_dict(tomllib.loads(path.read_text()), source=str(path))
    assert dict(kv.split("=") for kv in labels.split(",")) == cfg.resources.labels
    assert service("ray-worker-gpu")["profiles"] == ["gpu"]


def test_the_farm_service_submits_farm_run_with_known_flags_and_the_redis_store() -> None:
    svc = service("farm")
    assert svc["command"][:2] == ["bash", "-c"]
    # Stand in for the values bash would expand in the container.
    script = svc["command"][2]
    for var, value in {
        "FARM_CONFIG": "/home/ray/farm/docker/eclip.farm.toml",
        "FARM_CAMPAIGN": "eclip-compose",
        "FARM_RUN_ARGS": "--max-candidates 24",
    }.items():
        assert svc["environment"][var].endswith(value + "}"), var
        script = script.replace(f'"$${var}"', shlex.quote(value)).replace(f"$${var}", value)
    words = shlex.split(script)
    assert words[:3] == ["exec", "ray", "job"]
    assert "http://ray-head:8265" in words
    job = words[words.index("--") + 1 :]
    assert job[0] == "farm-job"
    target, config, args = split_farm_job(job[1:])
    for path in (target, config):
        assert (ROOT / Path(path).relative_to("/home/ray/farm")).exists(), path
    parsed = farm_run_args(target, args)
    assert parsed.store == "redis://redis:6379/0"
    assert 6379 in container_ports(service("redis"))


def test_prometheus_scrapes_compose_services_on_ports_they_serve() -> None:
    path = DOCKER / "prometheus" / "prometheus.yml"
    cfg = yaml.safe_load(path.read_text())
    targets = [
        t
        for job in cfg["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    ]
    assert "ray-head:9464" in targets  # the driver: farm run runs as the job on ray-head
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in load_compose()["services"], target
        assert int(port) in container_ports(service(host)), target
    local = ROOT / "docker" / "eclip.farm.toml"
    metrics = config_from_dict(tomllib.loads(local.read_text()), source=str(local)).metrics
    assert metrics.host_port() == ("0.0.0.0", 9464)
