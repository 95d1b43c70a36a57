"""What a trial may see and do: the policy, as data, and the bubblewrap view that enforces it.

A candidate is hostile code written to make one number go down, run beside the store, the
git repo, the Ray runtime and the API key (DESIGN.md, "Threat model"). Two levels:

- strict: every command runs under bubblewrap (`bwrap`) in new user, PID, network, IPC,
  UTS and cgroup namespaces, with no capabilities, no further user namespaces, a private
  /proc and /dev, an empty tmpfs for /tmp and the home directory, the system and the
  runtime that runs the command read-only, its own checkout the only writable place and
  the protected files read-only inside it. It dies with the worker (`--die-with-parent`),
  and everything it started dies with its PID namespace.
- basic: a process group with an allow-listed environment and, where the OS allows, a
  network namespace (`unshare`). What it leaves out is said by `Policy.missing`.

`resolve` picks the level on a node (probed once a process); `[sandbox] isolation = "auto"`
is strict where bubblewrap works and basic elsewhere, "strict" refuses to run without it.
"""

from __future__ import annotations

import enum
import functools
import glob
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from farm.errors import FarmError
from workers.limits import cgroups_available

ISOLATION_SETTINGS = ("auto", "strict", "basic")
NETWORK_MODES = ("isolated", "host", "auto")
PROBE_TIMEOUT_S = 10.0
# Read-only system directories every command may need; nothing else of the host is visible
# except the runtime found from the command and its environment (`runtime_paths`).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
# Of /etc, only what interpreters and their libraries read: the loader's cache, users and
# groups (no password hashes), name resolution, time zone, certificates, locale and
# terminal data, GPU vendor files. Not the rest, where services keep their passwords
# (a database's config, pip.conf, npmrc) and root keeps what only root may read (shadow).
SYSTEM_ETC = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "protocols", "services", "networks", "ssl", "ca-certificates", "ca-certificates.conf",
    "pki", "mime.types", "fonts", "os-release", "debian_version", "lsb-release", "machine-id",
    "python3", "python3.11", "python3.12", "python3.13", "terminfo", "inputrc",
    "locale.alias", "locale.conf", "magic", "magic.mime", "mtab", "xdg", "matplotlibrc",
    "nvidia", "OpenCL", "vulkan", "glvnd", "egl",
)  # fmt: skip
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
# Environment variables whose paths belong to the runtime (interpreters, libraries).
RUNTIME_PATH_VARS = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "CUDA_HOME")
TRIAL_HOSTNAME = "farm-trial"


class SandboxError(FarmError):
    """The sandbox cannot run as configured on this node (e.g. no bubblewrap)."""


class Isolation(enum.StrEnum):
    STRICT = "strict"
    BASIC = "basic"


class Guarantee(enum.StrEnum):
    """One promise of the threat model; `Policy.guarantees` says which hold."""

    FILESYSTEM = "filesystem"
    PROCESSES = "processes"
    NETWORK = "network"
    SECRETS = "secrets"
    REAPED = "reaped"
    PROTECTED = "protected"
    PRIVILEGES = "privileges"
    MEMORY = "memory"
    LIMITS = "limits"
    GIT = "git"
    SCORE = "score"

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    Guarantee.FILESYSTEM: "sees only its own checkout (writable) and the runtime (read-only): "
    "no store, repo, cache, home directory or other trial",
    Guarantee.PROCESSES: "own PID namespace: no /proc, ptrace or signal of any process outside",
    Guarantee.NETWORK: "own network namespace: no Redis, Ray, metrics or API socket",
    Guarantee.SECRETS: "no secret in its environment, nor in any environment it can read",
    Guarantee.REAPED: "nothing it starts outlives it, whether it ends, times out, or its "
    "worker or driver dies",
    Guarantee.PROTECTED: "protected files are read-only while it runs, not only hash-checked",
    Guarantee.PRIVILEGES: "no capabilities and no new user namespaces",
    Guarantee.MEMORY: "a resident-memory limit; a trial over it is killed and recorded crashed",
    Guarantee.LIMITS: "memory (files in tmpfs and shared memory included) and processes "
    "counted by the kernel in a control group, CPU time weighed against other trials; a trial "
    "over a limit is killed and recorded crashed",
    Guarantee.GIT: "gets a plain directory (no .git); farm's git never runs hooks",
    Guarantee.SCORE: "the metric is measured by the protected `evaluate` command in a fresh, "
    "read-only sandbox, not claimed by code the candidate wrote",
}


@dataclass(frozen=True)
class Policy:
    """The isolation in force on a node; plain data (it travels back from a probe task)."""

    isolation: Isolation
    network_isolated: bool
    launcher: str  # "bubblewrap 0.8.0", "unshare" or "process group"
    fallback: str = ""  # why strict is not in force, when "auto" fell back to basic
    kernel_limits: bool = False  # a control group per command can be made on this node

    def guarantees(self, *, evaluate: bool) -> dict[Guarantee, bool]:
        strict = self.isolation is Isolation.STRICT
        return {
            Guarantee.FILESYSTEM: strict,
            Guarantee.PROCESSES: strict,
            # A namespace of its own is not enough without the others: as root, a trial can
            # setns() into a host process's network namespace through /proc.
            Guarantee.NETWORK: strict and self.network_isolated,
            # The trial's own environment is allow-listed at both levels, but without a PID
            # namespace it can read /proc/<pid>/environ of the worker and the driver.
            Guarantee.SECRETS: strict,
            Guarantee.REAPED: strict,
            Guarantee.PROTECTED: strict,
            Guarantee.PRIVILEGES: strict,
            Guarantee.MEMORY: True,
            Guarantee.LIMITS: self.kernel_limits,
            Guarantee.GIT: True,
            Guarantee.SCORE: strict and evaluate,
        }

    def missing(self, *, evaluate: bool) -> list[Guarantee]:
        return [g for g, held in self.guarantees(evaluate=evaluate).items() if not held]

    def describe(self, *, evaluate: bool) -> list[str]:
        """What a campaign says at its start: the level, and the guarantees it lacks."""
        lines = [f"sandbox: {self.isolation} ({self.launcher})"]
        if self.fallback:
            lines[0] += f"; strict is unavailable here: {self.fallback}"
        missing = self.missing(evaluate=evaluate)
        if missing:
            lines.append(
                f"missing guarantees: {', '.join(missing)} (what each means: docs/security.md)"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "isolation": self.isolation.value,
            "network_isolated": self.network_isolated,
            "launcher": self.launcher,
            "fallback": self.fallback,
            "kernel_limits": self.kernel_limits,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Policy:
        return cls(**{**d, "isolation": Isolation(d["isolation"])})


def resolve(isolation: str, network: str) -> Policy:
    """The policy for `[sandbox] isolation` and `network` on this node (probed once).

    Raises SandboxError when "strict" is asked for and bubblewrap cannot run here, or when
    `network = "isolated"` is asked for and no network namespace can be made.
    """
    if isolation not in ISOLATION_SETTINGS:
        raise SandboxError(f"isolation = {isolation!r}: use one of {', '.join(ISOLATION_SETTINGS)}")
    if network not in NETWORK_MODES:
        raise SandboxError(f"network = {network!r}: use one of {', '.join(NETWORK_MODES)}")
    if isolation != "basic":
        version, problem = bwrap_probe()
        if not problem:
            return Policy(
                Isolation.STRICT,
                network != "host",
                f"bubblewrap {version}",
                kernel_limits=cgroups_available(),
            )
        if isolation == "strict":
            raise SandboxError(
                f'[sandbox] isolation = "strict", but bubblewrap cannot run here: {problem}. '
                "Install it (apt-get install bubblewrap) and allow user namespaces "
                "(docs/security.md), or accept the missing guarantees with "
                'isolation = "basic"'
            )
        fallback = problem
    else:
        fallback = ""
    prefix = basic_network_prefix(network)
    return Policy(
        Isolation.BASIC,
        network_isolated=bool(prefix),
        launcher="unshare" if prefix else "process group",
        fallback=fallback,
        kernel_limits=cgroups_available(),
    )


@functools.cache
def bwrap_probe() -> tuple[str, str]:
    """(bubblewrap's version, "") when it can sandbox here, else ("", why it cannot)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "", "bwrap is not installed"
    try:
        version = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        ).stdout.split()[-1:]
        with tempfile.TemporaryDirectory(prefix="farm-probe-") as tmp:
            view = View(workdir=Path(tmp), runtime=())
            probe = subprocess.run(
                [*view.argv(network_isolated=True, home=tmp), "/bin/true"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                env={},
            )
    except (OSError, subprocess.TimeoutExpired, IndexError) as e:
        return "", f"bwrap does not start: {e}"
    if probe.returncode != 0:
        return "", f"bwrap failed: {probe.stderr.strip() or f'exit {probe.returncode}'}"
    return (version[0] if version else "?"), ""


@functools.cache
def _bwrap_supports(flag: str) -> bool:
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    return flag in help_text


@dataclass(frozen=True)
class View:
    """What one sandboxed command sees under bubblewrap, besides the system directories.

    `workdir` is its working directory at its own path, writable unless `writable` is
    False; `protect` lists paths inside it that stay read-only (and whose directories
    cannot be renamed away); `runtime` the read-only paths that run the command.
    """

    workdir: Path
    runtime: tuple[str, ...]
    writable: bool = True
    protect: tuple[str, ...] = ()
    tmp_size_mb: int = 0  # 0: no cap on /tmp and the home tmpfs
    gpus: bool = field(default=False)

    def argv(self, *, network_isolated: bool, home: str) -> list[str]:
        """The `bwrap ... --` prefix that runs a command in this view."""
        args = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user"]
        if not network_isolated:
            args.append("--share-net")
        args += ["--die-with-parent", "--cap-drop", "ALL", "--hostname", TRIAL_HOSTNAME]
        if _bwrap_supports("--disable-userns"):
            args.append("--disable-userns")  # no user namespace inside to regain capabilities
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += _etc_view()
        args += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
        for mount in ("/tmp", home):
            if self.tmp_size_mb and _bwrap_supports("--size"):
                args += ["--size", str(self.tmp_size_mb * 1024 * 1024)]
            args += ["--tmpfs", mount]
        for path in self.runtime:
            args += ["--ro-bind", path, path]
        if self.gpus:
            for dev in gpu_devices():
                args += ["--dev-bind", dev, dev]
        work = str(self.workdir)
        args += ["--bind" if self.writable else "--ro-bind", work, work]
        for rel in self.protect:
            target = self.workdir / rel
            if not target.is_file() or target.is_symlink():
                continue  # absent at the start: the after-run hash check catches a new one
            # A directory on the way is bound onto itself: a mount point cannot be renamed
            # away and replaced with one holding a forged copy.
            for parent in reversed(PurePosixPath(rel).parents[:-1]):
                d = str(self.workdir / parent)
                args += ["--bind", d, d]
            args += ["--ro-bind", str(target), str(target)]
        args += ["--chdir", work, "--"]
        return args


@functools.cache
def _etc_view() -> tuple[str, ...]:
    """The bwrap arguments that show SYSTEM_ETC's entries of this host, links as links."""
    args = ["--dir", "/etc"]
    for name in SYSTEM_ETC:
        path = f"/etc/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def gpu_devices() -> list[str]:
    """The GPU device nodes of this host; CUDA_VISIBLE_DEVICES picks among them."""
    found: list[str] = []
    for pattern in GPU_DEVICES:
        found += sorted(glob.glob(pattern))
    return found


def runtime_paths(
    env: Mapping[str, str], command: str, *, extra: Iterable[str] = (), deny: Iterable[str] = ()
) -> tuple[str, ...]:
    """The read-only paths that run `command` with `env`, beyond the system directories.

    For each directory of PATH, PYTHONPATH, LD_LIBRARY_PATH, VIRTUAL_ENV and CUDA_HOME, and
    for an absolute executable in `command`: a `bin` or `shims` directory stands for the
    environment it belongs to by what that holds (`_installation`), a venv for its base
    interpreter too.
    Never a path that would show a `deny` path, the home or temp directory, or the root.
    """
    candidates: list[str] = list(extra)
    for var in RUNTIME_PATH_VARS:
        candidates += [p for p in env.get(var, "").split(os.pathsep) if p]
    exe = _executable(command)
    if exe and os.path.isabs(exe):
        candidates.append(os.path.dirname(exe))
    blocked = {"/", os.path.expanduser("~"), tempfile.gettempdir(), "/tmp", "/run", "/var"}
    blocked |= {os.path.realpath(p) for p in deny if p}
    chosen: list[str] = []
    todo = list(candidates)
    seen: set[str] = set()
    while todo:
        path = os.path.realpath(os.path.expanduser(todo.pop(0)))
        if path in seen or not os.path.exists(path):
            continue
        seen.add(path)
        parts = _installation(path)
        if not all(_allowed(p, blocked) for p in parts):
            parts = [path]
        for part in parts:
            if not _allowed(part, blocked) or any(_inside(part, s) for s in SYSTEM_PATHS):
                continue
            chosen.append(part)
            cfg = os.path.join(part, "pyvenv.cfg")
            if os.path.isfile(cfg):  # a venv: its interpreter lives under `home`
                todo.append(_venv_home(cfg) or part)
    # A path inside another chosen one is bound already.
    chosen.sort(key=len)
    return tuple(p for i, p in enumerate(chosen) if not any(_inside(p, q) for q in chosen[:i]))


def _installation(path: str) -> list[str]:
    """What to bind for a directory of PATH and the like, judged by what it holds, never by
    where it is: a `bin` or `shims` directory of a venv, a conda environment or pyenv's root
    brings that whole environment; of a plain Python prefix (~/.local, a pyenv version) its
    `bin` and `lib` alone; anything else is bound alone. So ~/.cargo/bin on PATH shows no
    ~/.cargo/credentials.toml, and ~/.local/bin no ~/.local/share."""
    prefix = os.path.dirname(path)
    if os.path.basename(path) not in ("bin", "shims"):
        return [path]
    marks = ("pyvenv.cfg", "conda-meta", os.path.join("libexec", "pyenv"))
    if any(os.path.exists(os.path.join(prefix, mark)) for mark in marks):
        return [prefix]
    lib = os.path.join(prefix, "lib")
    if glob.glob(os.path.join(lib, "python3*")):
        return [path, lib]
    return [path]


def _allowed(path: str, blocked: set[str]) -> bool:
    """False when binding `path` would show a blocked path (or is one)."""
    return not any(b == path or _inside(b, path) for b in blocked)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _venv_home(cfg: str) -> str:
    for line in Path(cfg).read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return value.strip()
    return ""


def _executable(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        return ""
    return next((w for w in words if "=" not in w), "")


@functools.cache
def basic_network_prefix(network: str) -> tuple[str, ...]:
    """The argv prefix that runs a command without network in basic mode ("" if none).

    Raises SandboxError when `network = "isolated"` and no namespace can be made. Inside,
    loopback is brought up when `ip` exists, so single-node tools that talk over localhost
    (torchrun rendezvous, NCCL/gloo) still work.
    """
    if network == "host":
        return ()
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    # `--net` alone needs privilege; `-r` maps the user to root in a new user namespace.
    for flags in (["--net"], ["-rn"]):
        if unshare is None:
            break
        prefix = [unshare, *flags, "--"]
        if ip is not None:
            # $0 is a name for error messages; the real command arrives as "$@".
            prefix += ["/bin/sh", "-c", f'{ip} link set lo up 2>/dev/null; exec "$@"', "sandbox"]
        try:
            probe = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=PROBE_TIMEOUT_S, env={}
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return tuple(prefix)
    if network == "isolated":
        raise SandboxError(
            'network = "isolated" needs a new network namespace, and `unshare --net` '
            "(or `unshare -rn`) fails on this node: allow user namespaces, run the worker "
            'with CAP_SYS_ADMIN, or set [sandbox] network = "auto" or "host"'
        )
    return ()
