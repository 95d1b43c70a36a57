"""Git on the driver: read the target, make candidate commits, move farm branches.

Everything goes through git plumbing with a private index file, so farm never touches
the user's checked-out branch, index or working tree, and never pushes. git runs as a
subprocess with a timeout (GitPython leaks in long-running processes).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from farm.errors import GitError, RefMismatch, TargetError
from farm.text import clean_line, clean_text

GIT_TIMEOUT_S = 60.0
# On every git call farm makes, on every repo: a candidate outside a strict sandbox can write
# a repo's hooks or config, and none of it may run code in farm's process.
SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
MISSING = "missing"  # the hash of a protected file that does not exist
FARM_EMAIL = "farm@localhost"  # the author of every commit farm makes
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    # Candidate commits are farm's, whoever runs it; no user.name needed.
    "GIT_AUTHOR_NAME": "farm",
    "GIT_AUTHOR_EMAIL": FARM_EMAIL,
    "GIT_COMMITTER_NAME": "farm",
    "GIT_COMMITTER_EMAIL": "farm@localhost",
}


class Repo:
    """The target repo on the driver. One lock serialises farm's own writes to it."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._lock = threading.Lock()
        try:
            top = self.git("rev-parse", "--show-toplevel").strip()
        except GitError:
            raise TargetError(
                f"{self.path} is not a git repository: run `git init && git add -A && "
                "git commit -m baseline` there first"
            ) from None
        if Path(top).resolve() != self.path:
            raise TargetError(f"{self.path} is inside the git repo {top}: point farm at {top}")
        try:
            self.git("rev-parse", "--verify", "HEAD^{commit}")
        except GitError:
            raise TargetError(f"{self.path} has no commits yet: commit the target first") from None

    def git(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> str:
        return self.git_bytes(*args, input=input, env=env).decode(errors="replace")

    def git_bytes(
        self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None
    ) -> bytes:
        data = input.encode() if isinstance(input, str) else input
        try:
            proc = subprocess.run(
                ["git", *SAFE_CONFIG, *args],
                cwd=self.path,
                input=data,
                capture_output=True,
                timeout=GIT_TIMEOUT_S,
                env={**os.environ, **_ENV, **(env or {})},
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {' '.join(args)} timed out after {GIT_TIMEOUT_S:.0f}s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args)} failed: {err}")
        return proc.stdout

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def dirty(self, paths: list[str]) -> list[str]:
        """Which of `paths` have uncommitted changes (staged, unstaged or untracked)."""
        out = self.git("status", "--porcelain", "--untracked-files=all", "--", *paths)
        return [line[3:] for line in out.splitlines() if line]

    def exclude(self, pattern: str) -> None:
        """Add a pattern to .git/info/exclude (local to this clone; no tracked file changes)."""
        path = Path(self.git("rev-parse", "--git-path", "info/exclude").strip())
        path = path if path.is_absolute() else self.path / path
        lines = path.read_text().splitlines() if path.exists() else []
        if pattern not in lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join([*lines, pattern]) + "\n")

    def read_files(self, sha: str, paths: list[str]) -> dict[str, str]:
        """Text of each path at `sha`; a path absent there is left out."""
        files = {}
        for p in paths:
            try:
                files[p] = self.git("show", f"{sha}:{p}")
            except GitError:
                continue
        return files

    def file_hashes(self, sha: str, paths: list[str]) -> dict[str, str]:
        """sha256 of each path's bytes at `sha` ("missing" if absent), as workers compute it."""
        hashes = {}
        for p in paths:
            try:
                blob = self.git_bytes("show", f"{sha}:{p}")
            except GitError:
                hashes[p] = MISSING
            else:
                hashes[p] = hashlib.sha256(blob).hexdigest()
        return hashes

    def is_symlink(self, sha: str, path: str) -> bool:
        out = self.git("ls-tree", sha, "--", path).split()
        return bool(out) and out[0] == "120000"

    def commit_files(
        self, base_sha: str, files: dict[str, str], *, message: str, timestamp: float
    ) -> str:
        """A commit of `files` on top of `base_sha`, made with a private index.

        The timestamp is the candidate's creation time, so redoing a step after a crash
        makes the very same commit. The message carries a candidate's words: its subject is
        made one clean line and its body cleaned (farm.text), whoever calls.
        """
        subject, _, body = message.partition("\n")
        message = clean_line(subject) + (f"\n{clean_text(body)}" if body else "")
        date = f"{int(timestamp)} +0000"
        with tempfile.TemporaryDirectory(prefix="farm-index-") as tmp, self._lock:
            env = {
                "GIT_INDEX_FILE": str(Path(tmp) / "index"),
                "GIT_AUTHOR_DATE": date,
                "GIT_COMMITTER_DATE": date,
            }
            self.git("read-tree", base_sha, env=env)
            for path, text in sorted(files.items()):
                blob = self.git("hash-object", "-w", "--stdin", input=text).strip()
                mode = self._mode(base_sha, path)
                self.git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            tree = self.git("write-tree", env=env).strip()
            return self.git("commit-tree", tree, "-p", base_sha, "-m", message, env=env).strip()

    def _mode(self, sha: str, path: str) -> str:
        out = self.git("ls-tree", sha, "--", path).split()
        return out[0] if out else "100644"

    def ref_sha(self, ref: str) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except GitError:
            return None

    def set_branch(self, branch: str, sha: str) -> None:
        """Point a farm branch at `sha` (candidate branches: created once, never moved)."""
        with self._lock:
            self.git("update-ref", f"refs/heads/{branch}", sha)

    def fast_forward(self, branch: str, *, old: str, new: str) -> None:
        """Move `branch` from `old` to `new`, only as a fast-forward and only if still at `old`.

        update-ref's compare-and-set does not check ancestry, so check that first. Raises
        RefMismatch when the branch is not at `old`: something outside farm moved it.
        """
        with self._lock:
            tip = self.ref_sha(f"refs/heads/{branch}")
            if tip != old:
                raise RefMismatch(branch, expected=old, found=tip)
            try:
                self.git("merge-base", "--is-ancestor", old, new)
            except GitError:
                raise GitError(f"{branch}: {new[:10]} does not descend from {old[:10]}") from None
            self.git("update-ref", f"refs/heads/{branch}", new, old)

    def log(self, old: str, new: str) -> list[Commit]:
        """The commits `new` has and `old` has not, oldest first (first parents only: farm's
        branches are linear)."""
        out = self.git(
            "log", "--first-parent", "--reverse", "--format=%H%x00%ae%x00%B%x1e", f"{old}..{new}"
        )
        found = []
        for entry in out.split("\x1e"):
            if entry.strip():
                sha, email, message = entry.lstrip("\n").split("\x00", 2)
                found.append(Commit(sha, email, message.strip()))
        return found

    def is_ancestor(self, old: str, new: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", old, new)
        except GitError:
            return False
        return True


@dataclass(frozen=True)
class Commit:
    sha: str
    author_email: str
    message: str


def best_branch(campaign: str) -> str:
    return f"farm/{campaign}/best"


def candidate_branch(campaign: str, candidate_id: int) -> str:
    return f"farm/{campaign}/c{candidate_id}"
