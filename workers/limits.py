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
    """One command's group: a directory per hierarchy (one under v2, memory and pids under v1)."""

    dirs: tuple[Path, ...]
    version: int

    @classmethod
    def create(cls, *, memory_mb: int, pids_max: int = PIDS_MAX) -> Cgroup | None:
        """A new group with `memory_mb` (0: none) and `pids_max`, or None where none can be
        made."""
        parents = _parents()
        if not parents:
            return None
        version, bases = parents
        _sweep(bases)
        name = f"farm-{uuid.uuid4().hex[:12]}"
        dirs = tuple(base / name for base in bases)
        try:
            for d in dirs:
                d.mkdir()
            group = cls(dirs, version)
            group._limit(memory_mb, pids_max)
        except OSError:
            Cgroup(dirs, version).remove()
            return None
        return group

    def _limit(self, memory_mb: int, pids_max: int) -> None:
        limit = str(memory_mb * 1024 * 1024) if memory_mb else None
        if self.version == 2:
            (d,) = self.dirs
            (d / "pids.max").write_text(str(pids_max))
            if limit:
                (d / "memory.max").write_text(limit)
                with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                    (d / "memory.swap.max").write_text("0")
            return
        memory, pids = self.dirs
        (pids / "pids.max").write_text(str(pids_max))
        if limit:
            (memory / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):
                (memory / "memory.memsw.limit_in_bytes").write_text(limit)

    def join(self) -> None:
        """Move the calling process into the group (run between fork and exec: every
        process it starts is born inside)."""
        pid = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(pid)

    def hits(self) -> list[str]:
        """The limits the kernel enforced so far, in words ([] if none)."""
        found = []
        memory, pids = (self.dirs[0], self.dirs[0]) if self.version == 2 else self.dirs
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        if _count(memory / events, "oom_kill"):
            found.append("memory")
        if _count(pids / "pids.events", "max"):
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


def _sweep(bases: tuple[Path, ...]) -> None:
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
def _parents() -> tuple[int, tuple[Path, ...]] | None:
    """(version, the directories new groups go under), probed once a process."""
    try:
        own = dict(
            (line.split(":", 2)[1], line.split(":", 2)[2])
            for line in Path("/proc/self/cgroup").read_text().splitlines()
        )
    except (OSError, IndexError):
        return None
    v2 = ROOT / own.get("", "/").lstrip("/")
    if (ROOT / "cgroup.controllers").is_file() and _usable(2, (v2,)):
        return 2, (v2,)
    v1 = tuple(ROOT / c / own.get(c, "/").lstrip("/") for c in ("memory", "pids"))
    if _usable(1, v1):
        return 1, v1
    return None


def _usable(version: int, bases: tuple[Path, ...]) -> bool:
    """Whether a group made under `bases` takes the limits (a trial group, made and removed)."""
    name = f"farm-probe-{uuid.uuid4().hex[:12]}"
    group = Cgroup(tuple(b / name for b in bases), version)
    try:
        for d in group.dirs:
            d.mkdir()
        group._limit(64, 64)
        return True
    except OSError:
        return False
    finally:
        group.remove()
