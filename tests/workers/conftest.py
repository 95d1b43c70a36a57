"""A small autoresearch-style target repo, its bundle, and trial specs against it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.config import DEFAULT_ENV_ALLOW
from farm.records import TrialSpec
from workers.materialize import hash_files, make_bundle

TRAIN_PY = """\
# EDITABLE: hyperparameters and training loop.
LEARNING_RATE = 3e-4

print("step 10 | loss 3.21")
print("---")
print(f"val_bpb:          {0.9979:.6f}")
print("training_seconds: 1.5")
print("num_steps:        10")
"""

PREPARE_PY = "# FROZEN: data preparation and evaluation.\nVOCAB_SIZE = 8192\n"


@dataclass
class Target:
    path: Path
    sha: str
    bundle: bytes
    protected_hashes: dict[str, str]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=farm", "-c", "user.email=farm@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def target(tmp_path: Path) -> Target:
    repo = tmp_path / "target"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "train.py").write_text(TRAIN_PY)
    (repo / "prepare.py").write_text(PREPARE_PY)
    sha = commit_all(repo, "base")
    return Target(repo, sha, make_bundle(repo, sha), hash_files(repo, ["prepare.py"]))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_spec(target: Target) -> Callable[..., TrialSpec]:
    """A spec that runs train.py on the target's base commit; keyword arguments override."""

    def make(**overrides: Any) -> TrialSpec:
        fields: dict[str, Any] = {
            "trial_id": "t1",
            "repo_key": "target",
            "base_sha": target.sha,
            "files": {},
            "command": f"{sys.executable} train.py",
            "seed": 7,
            "seed_env": "FARM_SEED",
            "metric": "val_bpb",
            "metric_regex": "",
            "budget_s": 30.0,
            "grace_s": 0.5,
            "env_allow": list(DEFAULT_ENV_ALLOW),
            "env": {},
            "output_cap_bytes": 64 * 1024,
            "network": "host",
            "memory_mb": 0,
            "protected_hashes": dict(target.protected_hashes),
        }
        fields.update(overrides)
        return TrialSpec(**fields)

    return make


@pytest.fixture
def run_git() -> Callable[..., str]:
    """`run_git(repo, *args)`: git with an identity, for tests that build extra commits."""
    return git


@pytest.fixture
def is_gone() -> Callable[[int], bool]:
    """`is_gone(pid)`: True once the process no longer runs (waits up to 3 s)."""

    def gone(pid: int) -> bool:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
                # A zombie counts as gone: it holds nothing, and this VM's init may not reap.
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
            except (ProcessLookupError, FileNotFoundError):
                return True
            time.sleep(0.05)
        return False

    return gone


@dataclass
class Marked:
    """A long-lived process the test can find from the host by a unique word in its argv."""

    word: str
    command: str  # a shell command that starts it (in the foreground)

    def pids(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if self.word.encode() in cmdline:
                    found.append(int(entry.name))
        return found

    def gone(self, within_s: float = 3.0) -> bool:
        """True once no process with the word runs (zombies count as gone)."""
        end = time.monotonic() + within_s
        while time.monotonic() < end:
            if not self.pids():
                return True
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


@pytest.fixture
def live_marked() -> Iterator[Callable[[], Marked]]:
    """`live_marked()`: a fresh marked sleeper; survivors are killed after the test."""
    made: list[Marked] = []

    def make() -> Marked:
        word = f"farm-marker-{uuid.uuid4().hex[:12]}"
        marked = Marked(word, f"python3 -c 'import time; time.sleep(1000)' {word}")
        made.append(marked)
        return marked

    yield make
    for marked in made:
        marked.kill()
