"""docker/: the image's sources exist, and the compose stack agrees with itself and with k8s/.

No Docker engine (nor the compose plugin) runs here, so nothing is built or started: these
check what a build or `docker compose up` would trip over first.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    DOCKER,
    ROOT,
    dockerfile_ray_version,
    dockerfile_values,
    dockerignored,
    farm_image,
    farm_run_args,
    instructions,
    split_farm_job,
)
from deploy_files import compose as load_compose
from k8s_semantics import docker_bytes

from farm.config import config_from_dict


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
    assert pip[-1] == "pip install --no-cache-dir ray[default]==${RAY_VERSION} ."
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert requires["requires-python"] == ">=3.11"
    ray_req = next(d for d in requires["dependencies"] if d.startswith("ray[default]"))
    floor = tuple(int(x) for x in ray_req.split(">=")[1].split("."))
    assert tuple(int(x) for x in version.split(".")) >= floor


def test_image_installs_git_and_bubblewrap() -> None:
    apt = [a for w, a in instructions() if w == "RUN" and "apt-get" in a]
    packages = {word for args in apt for word in args}
    assert {"git", "bubblewrap"} <= packages  # gitops; every trial runs under bwrap


def test_image_pins_the_torch_the_tests_run_and_states_its_cuda_and_driver() -> None:
    args, labels = dockerfile_values("ARG"), dockerfile_values("LABEL")
    makefile = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision)==(\S+)", makefile))
    assert pins == {"torch": args["TORCH_VERSION"], "torchvision": args["TORCHVISION_VERSION"]}
    pip = [" ".join(a) for w, a in instructions() if w == "RUN" and "pip" in a]
    assert "torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}" in pip[0]
    cuda, driver = labels["farm.torch-cuda"], labels["farm.nvidia-driver-min"]
    docs = (ROOT / "docs" / "gpu-cluster.md").read_text()
    assert f"CUDA {cuda}" in docs and f"driver {driver} or newer" in docs
    import torch

    if torch.__version__.split("+")[0] != args["TORCH_VERSION"] or torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} here is not the CUDA build the image installs")
    # The build the image installs is this one: say what it really is.
    assert torch.version.cuda == cuda
    archs = torch._C._cuda_getArchFlags().split()
    # An RTX 4090 is sm_89: it runs kernels built for sm_80..sm_89 (same major version)
    # and can JIT-compile PTX for compute_80..89.
    assert any(re.fullmatch(r"(sm|compute)_8[0-9]", a) for a in archs), archs


def test_the_work_volume_mounts_on_a_directory_the_image_made_for_ray() -> None:
    """A fresh named volume takes the owner of the image's directory it is mounted on; a
    directory the image lacks is made by root, and farm-job (user ray) cannot write it."""
    work = dockerfile_values("ENV")["FARM_WORK_DIR"]
    steps = instructions()
    users = [(i, a[0]) for i, (w, a) in enumerate(steps) if w == "USER"]
    (mkdir,) = [i for i, (w, a) in enumerate(steps) if w == "RUN" and a[:2] == ["mkdir", "-p"]]
    assert steps[mkdir][1][2:] == ["$FARM_WORK_DIR"]
    assert max((i, u) for i, u in users if i < mkdir)[1] == "ray"
    assert f"farm-work:{work}" in service("ray-head")["volumes"]


def test_every_compose_ray_node_has_shared_memory_for_its_object_store() -> None:
    for name in ("ray-head", "ray-worker-gpu"):
        svc = service(name)
        flags = dict(w.split("=", 1) for w in shlex.split(svc["command"]) if "=" in w)
        store = int(flags["--object-store-memory"])
        assert docker_bytes(svc["shm_size"]) >= store + 2**30, name  # + 1 GiB for trials


def test_compose_ray_nodes_may_create_the_trial_sandbox() -> None:
    for name in ("ray-head", "ray-worker-gpu"):  # the head runs CPU trials without the gpu profile
        opts = set(service(name)["security_opt"])
        assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= opts


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
