"""Loaders for the deployment files (k8s manifests, compose file, Dockerfile) shared by the
deploy tests. A plain module with a unique name: `conftest` is taken by tests/conftest.py."""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"


def instructions() -> list[tuple[str, list[str]]]:
    """docker/Dockerfile as (INSTRUCTION, shell-split arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), shlex.split(rest)))
    return out


def dockerfile_values(instruction: str) -> dict[str, str]:
    """The Dockerfile's ARG defaults, ENV or LABEL values (`KEY=value` forms)."""
    return dict(
        a.split("=", 1)
        for word, args in instructions()
        if word == instruction
        for a in args
        if "=" in a
    )


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps `rel` (a repo-relative path) out of the build context."""
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


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def farm_image() -> str:
    return f"farm:{project_version()}"


def dockerfile_ray_version() -> str:
    version = dockerfile_values("ARG").get("RAY_VERSION")
    assert version, "docker/Dockerfile declares no ARG RAY_VERSION=<version>"
    return version


def farm_run_args(target: str, args: list[str]) -> Any:
    """Parse `farm run TARGET ARGS` with farm's own parser: exits (SystemExit) on a bad flag."""
    from farm.cli import _parser

    return _parser().parse_args(["run", target, *args])


def split_farm_job(words: list[str]) -> tuple[str, str, list[str]]:
    """`farm-job TARGET [--config FILE] [-- ARGS]` -> (target, config, farm run args)."""
    target, rest = words[0], words[1:]
    config = ""
    if rest[:1] == ["--config"]:
        config, rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return target, config, rest


def after(words: list[str], word: str) -> list[str]:
    return words[words.index(word) + 1 :]


@functools.cache
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in k8s/*.yaml (kustomization.yaml aside), by (kind, name)."""
    objs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{path.name}: {key} defined twice"
            objs[key] = doc
    return objs


@functools.cache
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def rendered() -> list[dict[str, Any]] | None:
    """What `kubectl apply -k k8s/` would send (namespace, labels and images set), or None
    without kubectl."""
    if shutil.which("kubectl") is None:
        return None
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod an object creates."""
    spec = obj.get("spec", {})
    kind = obj["kind"]
    if kind in ("StatefulSet", "Deployment"):
        yield kind, spec["template"]["spec"]
    elif kind == "RayCluster":
        yield "head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield group["groupName"], group["template"]["spec"]
    elif kind == "RayJob" and "submitterPodTemplate" in spec:
        yield "submitter", spec["submitterPodTemplate"]["spec"]


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in pod_specs(obj):
        for c in pod["containers"]:
            yield where, c
