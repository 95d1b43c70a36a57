"""Run a trial's command in its worktree: own process group, hard budget, capped output.

The child gets an environment built only from an allow-list, so API keys and tokens in the
worker's environment never reach training code. The worker owns the child: `ray.cancel` does
not reliably stop a subprocess, so every exit path (budget, exception, cancellation) kills
the whole process group, and the command's output is kept only as a bounded tail.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from farm.errors import FarmError
from farm.records import TrialSpec

NETWORK_MODES = ("isolated", "host", "auto")
POLL_S = 0.1  # how often the budget is checked while the command is quiet
DRAIN_S = 2.0  # how long to read output after exit, in case an escaped process holds the pipe
READ_CHUNK = 1 << 16
PROBE_TIMEOUT_S = 10.0


class SandboxError(FarmError):
    """The sandbox cannot run as configured on this node (e.g. no network isolation)."""


@dataclass
class RunResult:
    """How the command ended. `exit_code` is negative (-signal) when it was killed."""

    exit_code: int
    timed_out: bool
    output_tail: str  # the last `output_cap_bytes` of stdout and stderr, merged
    started_at: float  # unix seconds
    ended_at: float
    duration_s: float  # monotonic, immune to clock steps


def build_env(spec: TrialSpec) -> dict[str, str]:
    """The child's whole environment: allow-listed variables, `spec.env`, GPU ids and the seed."""
    env = {name: os.environ[name] for name in spec.env_allow if name in os.environ}
    env.update(spec.env)
    # Ray sets CUDA_VISIBLE_DEVICES per task: it must win over any configured value, or two
    # trials would share one GPU.
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if spec.seed_env:
        env[spec.seed_env] = str(spec.seed)
    return env


def run(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    budget_s: float,
    grace_s: float,
    output_cap_bytes: int,
    network: str = "host",
    memory_mb: int = 0,
) -> RunResult:
    """Run `command` through /bin/sh in `cwd`; SIGTERM its group at `budget_s`, SIGKILL after
    `grace_s`. Raises SandboxError when `network="isolated"` is impossible on this node.

    `memory_mb` caps the address space (RLIMIT_AS): CUDA maps far more virtual memory than it
    uses, so leave it 0 for GPU training.
    """
    argv = [*_network_prefix(network), "/bin/sh", "-c", command]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so one killpg reaches every child
        preexec_fn=_limits(memory_mb),
    )
    started_at, start = time.time(), time.monotonic()
    assert proc.stdout is not None
    try:
        tail = _Tail(proc.stdout, output_cap_bytes)
        deadline = start + budget_s
        while proc.poll() is None and time.monotonic() < deadline:
            tail.pump(deadline)
        timed_out = proc.poll() is None
        if timed_out:
            _killpg(proc.pid, signal.SIGTERM)
            grace_end = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < grace_end:
                tail.pump(grace_end)
        # Also after a normal exit: leftover children would hold the GPU and the pipe.
        _killpg(proc.pid, signal.SIGKILL)
        ended_at, end = time.time(), time.monotonic()
        drain_end = end + DRAIN_S
        while not tail.eof and time.monotonic() < drain_end:
            tail.pump(drain_end)
    finally:
        # On any exception too (KeyboardInterrupt, Ray cancelling this thread): no process
        # of the trial may outlive it.
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return RunResult(
        exit_code=proc.returncode,
        timed_out=timed_out,
        output_tail=tail.text(),
        started_at=started_at,
        ended_at=ended_at,
        duration_s=end - start,
    )


class _Tail:
    """The last `cap` bytes of a pipe, read without blocking so the budget is always checked."""

    def __init__(self, pipe: IO[bytes], cap: int) -> None:
        self.fd = pipe.fileno()
        os.set_blocking(self.fd, False)
        self.cap = cap
        self.data = bytearray()
        self.eof = False
        # poll, not select: select fails on descriptors >= 1024, common in a long-lived worker.
        self._poller = select.poll()
        self._poller.register(self.fd, select.POLLIN)

    def pump(self, until: float) -> None:
        """Read what arrives within POLL_S (but not past `until`, monotonic), or just wait."""
        timeout = max(0.0, min(POLL_S, until - time.monotonic()))
        if self.eof:
            time.sleep(timeout)
            return
        if not self._poller.poll(timeout * 1000):
            return
        try:
            chunk = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:  # a spurious wake-up: nothing to read after all
            return
        if not chunk:
            self.eof = True
            return
        self.data.extend(chunk)
        # Trim at twice the cap: a flood of gigabytes costs O(1) per byte and bounded memory.
        if len(self.data) > 2 * self.cap:
            del self.data[: -self.cap]

    def text(self) -> str:
        return bytes(self.data[-self.cap :]).decode(errors="replace")


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _limits(memory_mb: int) -> Callable[[], None]:
    """The child's rlimits, applied between fork and exec (values computed here, not there)."""
    memory_bytes = memory_mb * 1024 * 1024

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no multi-GB core dumps of a crash
        if memory_bytes > 0:
            # Some kernels (macOS) refuse RLIMIT_AS; the limit is applied where the OS allows.
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply


def _network_prefix(network: str) -> list[str]:
    if network not in NETWORK_MODES:
        raise SandboxError(f"network = {network!r}: use one of {', '.join(NETWORK_MODES)}")
    if network == "host":
        return []
    prefix = isolation_prefix()
    if prefix is None:
        if network == "isolated":
            raise SandboxError(
                'network = "isolated" needs a new network namespace, and `unshare --net` '
                "(or `unshare -rn`) fails on this node: allow user namespaces, run the worker "
                'with CAP_SYS_ADMIN, or set [sandbox] network = "auto" or "host"'
            )
        return []
    return prefix


@functools.cache
def isolation_prefix() -> list[str] | None:
    """The argv prefix that runs a command without network on this node, or None (probed once).

    Inside the namespace the loopback interface is brought up when `ip` exists, so
    single-node tools that talk over localhost (torchrun rendezvous, NCCL/gloo) still work.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    ip = shutil.which("ip")
    # `--net` alone needs privilege; `-r` maps the user to root in a new user namespace.
    for flags in (["--net"], ["-rn"]):
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
            return prefix
    return None
