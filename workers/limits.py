"""Limits the kernel counts: a control group per sandboxed command.

A trial's processes are measured by the sandbox (workers/sandbox.py), but memory held
outside any process is not theirs: a file in a tmpfs or in shared memory. A memory cgroup
charges those pages to the group that wrote them, so its limit counts them; a pids cgroup
stops a fork bomb. `Cgroup.create` makes one group per command under this process's own
(cgroup v2 where its controllers are delegated to us, else the v1 `memory` and `pids`
hierarchies), the command joins it before it starts, and the group goes with the command.
Where neither can be had (a pod without a writable cgroup mount) there is none, and the
policy says the guarantee is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PIDS_MAX = 4096  # processes and threads of one trial (data-loader workers run many)
EMPTY_WAIT_S = 2.0  # how long a group may take to empty once its command was killed
STALE_S = 60.0  # a group this old that is empty was left by a process that outlived its kill


@dataclass(frozen=True)
class Cgroup:
    """One command's group: its directory in each hierarchy (one directory under v2; under
    v1 one each for memory and pids, and for cpu where that hierarchy is ours too)."""

    memory: Path
    pids: Path
    cpu: Path | None
    version: int

    @property
    def dirs(self) -> list[Path]:
        return sorted({self.memory, self.pids, *([self.cpu] if self.cpu else [])})

    @classmethod
    def create(
        cls, *, memory_mb: int, cpus: float = 1.0, pids_max: int = PIDS_MAX
    ) -> Cgroup | None:
        """A new group with `memory_mb` (0: none), a CPU weight of `cpus` and `pids_max`, or
        None where none can be made."""
        parents = _parents()
        if not parents:
            return None
        version, memory, pids, cpu = parents
        _sweep([memory, pids, *([cpu] if cpu else [])])
        name = f"farm-{uuid.uuid4().hex[:12]}"
        group = cls(memory / name, pids / name, cpu / name if cpu else None, version)
        try:
            for d in group.dirs:
                d.mkdir()
            group._limit(memory_mb, cpus, pids_max)
        except OSError:
            group.remove()
            return None
        return group

    def _limit(self, memory_mb: int, cpus: float, pids_max: int) -> None:
        """Memory and processes are caps; CPU is a weight (a share of what is contended,
        all of what is idle), so no honest trial is throttled on a quiet node."""
        limit = str(memory_mb * 1024 * 1024) if memory_mb else None
        (self.pids / "pids.max").write_text(str(pids_max))
        if self.version == 2:
            if limit:
                (self.memory / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    (self.memory / "memory.swap.max").write_text("0")
            if self.cpu:
                weight = min(10_000, max(1, round(100 * cpus)))  # 100 per CPU
                (self.cpu / "cpu.weight").write_text(str(weight))
            return
        if limit:
            (self.memory / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):
                (self.memory / "memory.memsw.limit_in_bytes").write_text(limit)
        if self.cpu:
            (self.cpu / "cpu.shares").write_text(str(max(2, round(1024 * cpus))))  # 1024 per CPU

    def join(self) -> None:
        """Move the calling process into the group (run between fork and exec: every
        process it starts is born inside)."""
        pid = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(pid)

    def hits(self) -> list[str]:
        """The caps the kernel enforced so far, in words ([] if none)."""
        found = []
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        if _count(self.memory / events, "oom_kill"):
            found.append("memory")
        if _count(self.pids / "pids.events", "max"):
            found.append("processes")
        return found

    def remove(self) -> None:
        """Remove the group once its processes are gone (the caller killed them; a PID
        namespace takes a moment to empty). One that outlived its kill (a basic-mode escape)
        keeps the group until it ends."""
        end = time.monotonic() + EMPTY_WAIT_S
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        break
                    time.sleep(0.01)


def cgroups_available() -> bool:
    """Whether a control group per command can be made on this node (probed once)."""
    return _parents() is not None


def _sweep(bases: list[Path]) -> None:
    """Remove old groups that have emptied since (rmdir refuses one that is not empty)."""
    old = time.time() - STALE_S
    for base in bases:
        with contextlib.suppress(OSError):
            for d in base.glob("farm-*"):
                with contextlib.suppress(OSError):
                    if d.stat().st_mtime < old:
                        d.rmdir()


def _count(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


@functools.cache
def _parents() -> tuple[int, Path, Path, Path | None] | None:
    """(version, where new memory, pids and cpu groups go), probed once a process; cpu is
    None where that controller is not ours to set."""
    try:
        own = {
            controller: line.split(":", 2)[2]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            for controller in line.split(":", 2)[1].split(",")
        }
    except (OSError, IndexError):
        return None
    if (ROOT / "cgroup.controllers").is_file():
        v2 = ROOT / own.get("", "/").lstrip("/")
        if _usable(2, v2, v2, None):
            return 2, v2, v2, v2 if _usable(2, v2, v2, v2) else None
    memory, pids, cpu = (ROOT / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids", "cpu"))
    if _usable(1, memory, pids, None):
        return 1, memory, pids, cpu if _usable(1, memory, pids, cpu) else None
    return None


def _usable(version: int, memory: Path, pids: Path, cpu: Path | None) -> bool:
    """Whether a group made there takes the limits (a trial group, made and removed)."""
    name = f"farm-probe-{uuid.uuid4().hex[:12]}"
    group = Cgroup(memory / name, pids / name, cpu / name if cpu else None, version)
    try:
        for d in group.dirs:
            d.mkdir()
        group._limit(64, 1.0, 64)
        return True
    except OSError:
        return False
    finally:
        group.remove()
