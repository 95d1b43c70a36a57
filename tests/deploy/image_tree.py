"""docker/Dockerfile followed on this machine, for the rehearsal: a directory tree with
what farm's layers put in the image (COPY through .dockerignore, ENV, WORKDIR, `RUN mkdir`,
the `pip install .` of farm), and a way to run a command with that tree at /home/ray.

The base image's layers (Ray, CUDA, Python) are this machine's: farm is installed into a
venv of its own that borrows the test venv's packages instead of downloading them, and
apt-get's packages must already be here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from deploy_files import ROOT, dockerignored, instructions

IMAGE_HOME = "/home/ray"  # the image's $HOME; docker/Dockerfile's WORKDIR is below it


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], text)


def _copy(src: Path, dst: Path) -> None:
    def ignored(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(ROOT)
        return {n for n in names if dockerignored((rel / n).as_posix())}

    if src.is_dir():
        shutil.copytree(src, dst, ignore=ignored, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


@dataclass
class Image:
    root: Path  # the image's filesystem, as far as farm's layers go
    env: dict[str, str]  # its ENV
    venv: Path  # where `pip install .` went


def build_image(root: Path, venv: Path) -> Image:
    """Follow docker/Dockerfile: COPY (through .dockerignore), ENV, WORKDIR, `RUN mkdir`,
    the `pip install .` of farm; apt-get's packages must be on this machine."""
    env: dict[str, str] = {}
    workdir = Path("/")
    for word, args in instructions():
        if word == "ENV":
            env.update(a.split("=", 1) for a in args)
        elif word == "WORKDIR":
            workdir = Path(args[0])
        elif word == "COPY":
            *sources, dest = [a for a in args if not a.startswith("--")]
            target = root / (workdir / dest).relative_to("/")
            for src in sources:
                if dest.endswith("/"):
                    _copy(ROOT / src, target / Path(src).name)
                else:
                    _copy(ROOT / src, target)
            if any(a.startswith("--chmod=") for a in args):
                target.chmod(int(next(a for a in args if a.startswith("--chmod="))[8:], 8))
        elif word == "RUN" and args[:2] == ["mkdir", "-p"]:
            for d in args[2:]:
                (root / _expand(d, env).lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif word == "RUN" and "apt-get" in args:
            packages = args[args.index("--no-install-recommends") + 1 : args.index("&&", 2)]
            for package in packages:
                binary = {"bubblewrap": "bwrap"}.get(package, package)
                assert shutil.which(binary), f"the image's {package} is not on this machine"
        elif word == "RUN" and args[-1] == ".":  # pip install ... . from the WORKDIR
            _install_farm(root / workdir.relative_to("/"), venv)
    return Image(root=root, env=env, venv=venv)


def _install_farm(source: Path, venv: Path) -> None:
    """A regular install of the copied sources into a venv of its own, which borrows this
    venv's packages (ray, torch, ...) through a .pth file instead of downloading them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", "."],
        cwd=source, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    # The image's `ray` CLI, on this interpreter (Ray starts workers with sys.executable).
    ray = venv / "bin" / "ray"
    ray.write_text(f"#!{python}\nfrom ray.scripts.scripts import main\nmain()\n")
    ray.chmod(0o755)


def under_image(home: Path, command: list[str]) -> list[str]:
    """`command` with `home` (a copy of the image's /home/ray) at /home/ray, in a mount
    namespace of its own: the image's absolute paths hold, nothing on this machine moves.
    /usr/local/bin (farm-job) stays where it is: base_env puts the image's on PATH."""
    return ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/home", "--bind", str(home), IMAGE_HOME,
            "--chdir", IMAGE_HOME, "--", *command]  # fmt: skip


def base_env(image: Image) -> dict[str, str]:
    """A container's environment before the pod's: the image's ENV, PATH and HOME (the
    image's /usr/local/bin and farm's venv first)."""
    path = f"{image.root}/usr/local/bin:{image.venv}/bin:/usr/local/bin:/usr/bin:/bin"
    return {
        **image.env,
        "PATH": path,
        "HOME": IMAGE_HOME,
        "LANG": "C.UTF-8",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
