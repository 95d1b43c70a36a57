"""Run one command of a trial, sandboxed: hard budget, memory limit, capped output.

The policy (workers/isolation.py) says what the command may see; this module launches it
(under bubblewrap in strict mode, as a process group in basic mode) and owns it until it is
gone: `ray.cancel` does not reliably stop a subprocess, so every exit path (budget, memory,
exception, cancellation) kills it, and the output is kept only as a bounded tail. The
environment is built from an allow-list, so API keys and tokens never reach training code.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from farm.config import BUDGET_ENV  # the trial's budget in seconds: short screens are shorter
from farm.records import TrialSpec
from workers.isolation import (
    Isolation,
    Policy,
    SandboxError,
    View,
    basic_network_prefix,
    runtime_paths,
)
from workers.limits import PIDS_MAX, Cgroup

__all__ = ["RunResult", "SandboxError", "build_env", "run"]

POLL_S = 0.1  # how often the budget is checked while the command is quiet
MEMORY_EVERY_S = 0.5  # how often the trial's memory is measured
DRAIN_S = 2.0  # how long to read output after exit, in case an escaped process holds the pipe
READ_CHUNK = 1 << 16


@dataclass
class RunResult:
    """How the command ended. `exit_code` is negative (-signal) when it was killed."""

    exit_code: int
    timed_out: bool
    output_tail: str  # the last `output_cap_bytes` of stdout and stderr, merged
    started_at: float  # unix seconds
    ended_at: float
    duration_s: float  # monotonic, immune to clock steps
    peak_memory_mb: float = 0.0  # the most its processes held together (proportional set size)
    memory_exceeded: bool = False  # killed at the memory limit
    limits_hit: list[str] = field(default_factory=list)  # what the kernel enforced (cgroup)


def build_env(spec: TrialSpec) -> dict[str, str]:
    """The child's whole environment: allow-listed variables, `spec.env`, GPU ids, the seed
    and the budget."""
    env = {name: os.environ[name] for name in spec.env_allow if name in os.environ}
    env.update(spec.env)
    # Ray sets CUDA_VISIBLE_DEVICES per task: it must win over any configured value, or two
    # trials would share one GPU.
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if spec.seed_env:
        env[spec.seed_env] = str(spec.seed)
    env[BUDGET_ENV] = f"{spec.budget_s:g}"
    return env


def run(
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    budget_s: float,
    grace_s: float,
    output_cap_bytes: int,
    policy: Policy,
    view: View | None = None,
    memory_mb: int = 0,
    cpus: float = 1.0,
    pids_max: int = PIDS_MAX,
) -> RunResult:
    """Run `command` through /bin/sh in `cwd` under `policy`; SIGTERM it at `budget_s`,
    SIGKILL after `grace_s`, SIGKILL at once when its processes hold over `memory_mb`. Where
    the node gives a control group, the kernel holds it to `memory_mb` with its files in
    tmpfs and shared memory, and to `pids_max` processes and threads, and weighs its CPU
    time as `cpus` CPUs' worth against the node's other trials.

    In strict mode `view` says what it sees (default: `cwd` writable, the runtime of `env`
    read-only); basic mode ignores it.
    """
    strict = policy.isolation is Isolation.STRICT
    if strict:
        view = view or View(workdir=cwd, runtime=runtime_paths(env, command))
        env = {**env, "HOME": env.get("HOME") or os.path.expanduser("~"), "TMPDIR": "/tmp"}
        prefix = view.argv(network_isolated=policy.network_isolated, home=env["HOME"])
    else:
        prefix = list(basic_network_prefix("auto" if policy.network_isolated else "host"))
    # Memory in tmpfs and shared memory, and processes, counted by the kernel where a
    # control group can be had (Policy.kernel_limits says whether).
    group = Cgroup.create(memory_mb=memory_mb, cpus=cpus, pids_max=pids_max)

    def before_exec() -> None:
        # Between fork and exec: no multi-GB core dump of a crashed trial; every process
        # of the command is born in its group.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if group is not None:
            group.join()

    try:
        proc = subprocess.Popen(
            [*prefix, "/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and group: no terminal, one killpg
            preexec_fn=before_exec,
        )
    except BaseException:
        if group is not None:
            group.remove()
        raise
    started_at, start = time.time(), time.monotonic()
    assert proc.stdout is not None
    memory = _MemoryWatch(proc.pid, memory_mb, group)
    try:
        tail = _Tail(proc.stdout, output_cap_bytes)
        deadline = start + budget_s
        while proc.poll() is None and time.monotonic() < deadline and not memory.exceeded:
            tail.pump(deadline)
            memory.check()
        timed_out = proc.poll() is None and not memory.exceeded
        if timed_out:
            _terminate(proc.pid, strict=strict)
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
        hits = group.hits() if group is not None else []
        if group is not None:
            group.remove()
    output = tail.text()
    if memory.exceeded and "memory" not in hits:
        output += (
            f"\nfarm: killed at the memory limit: its processes held {memory.peak_mb:.0f} MB, "
            f"over [sandbox] memory_mb = {memory_mb}\n"
        )
    if "memory" in hits:
        output += (
            f"\nfarm: killed at the memory limit by the kernel: [sandbox] memory_mb = "
            f"{memory_mb}, files in tmpfs and shared memory included\n"
        )
    if "processes" in hits:
        output += f"\nfarm: the kernel refused it more than {pids_max} processes and threads\n"
    return RunResult(
        exit_code=proc.returncode,
        timed_out=timed_out,
        output_tail=output,
        started_at=started_at,
        ended_at=ended_at,
        duration_s=end - start,
        peak_memory_mb=memory.peak_mb,
        memory_exceeded=memory.exceeded or "memory" in hits,
        limits_hit=hits,
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


class _MemoryWatch:
    """The memory the command's process tree holds, measured every MEMORY_EVERY_S.

    Proportional set size, so pages that forked data-loader workers share count once;
    resident size where smaps_rollup is missing. No /proc (not Linux): not measured.
    """

    def __init__(self, root: int, limit_mb: int, group: Cgroup | None) -> None:
        self.root = root
        self.limit_mb = limit_mb
        self.group = group
        self.peak_mb = 0.0
        self.exceeded = False
        self._next = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + MEMORY_EVERY_S
        held = sum(_memory_kb(pid) for pid in descendants(self.root)) / 1024
        self.peak_mb = max(self.peak_mb, held)
        if self.limit_mb and held > self.limit_mb:
            self.exceeded = True
        # The kernel killed a process at the group's limit: the rest of the trial goes too.
        if self.group is not None and "memory" in self.group.hits():
            self.exceeded = True


def descendants(root: int) -> list[int]:
    """`root` and every process below it (empty when /proc cannot be read)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _memory_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return 0


def _terminate(root: int, *, strict: bool) -> None:
    """SIGTERM the command, so it can end cleanly within the grace period.

    Under bubblewrap, SIGTERM to bwrap itself would kill the namespace at once: the
    signal goes to the processes inside instead.
    """
    if not strict:
        _killpg(root, signal.SIGTERM)
        return
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "bwrap":
                    continue
            os.kill(pid, signal.SIGTERM)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
