"""A trial's code on a worker: a per-node cache repo and a throwaway plain directory per trial.

The driver ships the base commit as a git bundle (`make_bundle`) and the candidate's changed
files as text. A worker keeps one bare cache repo per target (`repo_key`), fetches a bundle
only when the base commit is not cached yet, and checks each trial out into a directory of
its own through a private index: no `.git` in it, so a candidate finds no git metadata or
hooks to plant, and concurrent trials never share an index. git runs as a subprocess with a
timeout (GitPython leaks resources in long-running processes) and never runs hooks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from farm.errors import FarmError, GitError
from farm.gitops import SAFE_CONFIG

GIT_TIMEOUT_S = 300.0  # unbundling a large history is the slowest call
CACHE_ENV = "FARM_CACHE_DIR"  # root of the per-node cache repos
MISSING = "missing"  # the hash of a protected file that does not exist

_REPO_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SpecError(FarmError):
    """A trial spec cannot be run as given (a file path outside the worktree, a bad repo key)."""


def git(
    *args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run git in `cwd`; raise GitError on failure (when `check`) or after GIT_TIMEOUT_S."""
    # Inherited GIT_DIR / GIT_WORK_TREE (e.g. when run from a git hook) would redirect every
    # call to another repo; no prompt may ever block a worker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | (env or {})
    env["GIT_TERMINAL_PROMPT"] = "0"
    cmd = " ".join(("git", *args))
    try:
        proc = subprocess.run(
            ["git", *SAFE_CONFIG, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise GitError(f"`{cmd}` in {cwd} timed out after {GIT_TIMEOUT_S:.0f} s") from None
    except FileNotFoundError:
        raise GitError("git is not installed on this node (or not on PATH)") from None
    if check and proc.returncode != 0:
        raise GitError(f"`{cmd}` in {cwd} failed: {proc.stderr.strip()}")
    return proc


def make_bundle(repo: Path, sha: str) -> bytes:
    """A full git bundle of commit `sha` in `repo` (run on the driver).

    `git bundle create` takes refs, not bare commits: the ref lives in a throwaway repo that
    borrows `repo`'s objects, so nothing is ever written into `repo` (a driver killed
    halfway leaves no ref behind there) and concurrent callers never meet.
    """
    full = git("rev-parse", "--verify", f"{sha}^{{commit}}", cwd=repo).stdout.strip()
    objects = (repo / git("rev-parse", "--git-path", "objects", cwd=repo).stdout.strip()).resolve()
    with tempfile.TemporaryDirectory(prefix="farm-bundle-") as tmp:
        scratch = Path(tmp) / "repo.git"
        git("init", "-q", "--bare", "--template=", str(scratch), cwd=Path(tmp))
        (scratch / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (scratch / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        git("update-ref", "refs/heads/base", full, cwd=scratch)
        path = Path(tmp) / "base.bundle"
        git("bundle", "create", str(path), "refs/heads/base", cwd=scratch)
        return path.read_bytes()


def cache_repo_path(repo_key: str, cache_dir: Path | None = None) -> Path:
    """Where the bare cache repo of `repo_key` lives: `<cache_dir>/<repo_key>`."""
    if not _REPO_KEY.fullmatch(repo_key):
        raise SpecError(f"repo_key {repo_key!r} must be one path component like 'nanogpt-1a2b'")
    if cache_dir is None:
        env = os.environ.get(CACHE_ENV)
        cache_dir = Path(env) if env else Path.home() / ".cache" / "farm" / "repos"
    return cache_dir / repo_key


@contextlib.contextmanager
def checkout(
    base_sha: str,
    bundle: bytes,
    files: Mapping[str, str],
    repo_key: str,
    cache_dir: Path | None = None,
) -> Iterator[Path]:
    """Yield a fresh plain directory of `base_sha` with `files` written on top; remove it after.

    `bundle` is fetched into the cache repo only when `base_sha` is not there yet, so it may
    be empty for a base this node has seen. Raises SpecError for a file path that is absolute,
    contains `..` or `.git`, or resolves outside the directory; GitError when git fails.
    """
    for path in files:
        _check_relative(path)
    repo = cache_repo_path(repo_key, cache_dir)
    parent = Path(tempfile.mkdtemp(prefix=f"farm-{repo_key}-"))
    tree = parent / "worktree"
    try:
        with _locked(repo):
            _ensure_commit(repo, base_sha, bundle)
        tree.mkdir()
        # A private index: reading objects needs no lock, and nothing is left in the repo.
        index = {"GIT_INDEX_FILE": str(parent / "index")}
        for args in (("read-tree", base_sha), ("checkout-index", "--all")):
            git(f"--git-dir={repo}", f"--work-tree={tree}", *args, cwd=parent, env=index)
        (parent / "index").unlink()
        write_files(tree, files)
        yield tree
    finally:
        # Best effort and never raising: a failure here must not hide the trial's own error.
        shutil.rmtree(parent, ignore_errors=True)


def hash_files(root: Path, paths: list[str]) -> dict[str, str]:
    """sha256 hex of each file under `root`; a missing file (or a non-file) hashes to "missing"."""
    hashes = {}
    for path in paths:
        file = root / path
        hashes[path] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else MISSING
    return hashes


def protected_digest(hashes: Mapping[str, str]) -> str:
    """One sha256 over the sorted `path:hash` pairs: the protected files of a trial in one value."""
    lines = "\n".join(f"{path}:{digest}" for path, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@contextlib.contextmanager
def _locked(repo: Path) -> Iterator[None]:
    """Serialise cache-repo writes between concurrent trials (threads or processes) on a node."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    with open(repo.parent / f"{repo.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_commit(repo: Path, sha: str, bundle: bytes) -> None:
    if not (repo / "HEAD").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "--quiet", str(repo), cwd=repo)
    if git("cat-file", "-e", f"{sha}^{{commit}}", cwd=repo, check=False).returncode == 0:
        return
    if not bundle:
        raise GitError(f"commit {sha} is not cached in {repo} and no bundle was shipped with it")
    with tempfile.NamedTemporaryFile(dir=repo, suffix=".bundle") as tmp:
        tmp.write(bundle)
        tmp.flush()
        git("bundle", "unbundle", tmp.name, cwd=repo)
    full = git("rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}", cwd=repo, check=False)
    if full.returncode != 0:
        raise GitError(f"the bundle shipped for {sha} does not contain that commit")
    # A ref keeps the unbundled objects reachable, so `git gc` never prunes a cached base.
    git("update-ref", f"refs/farm/{full.stdout.strip()}", full.stdout.strip(), cwd=repo)


def _check_relative(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not path or PurePosixPath(path).is_absolute() or ".." in parts or ".git" in parts:
        raise SpecError(f"file path {path!r} must be relative, inside the repo and outside .git")


def write_files(tree: Path, files: Mapping[str, str | bytes]) -> None:
    """Write `files` under `tree`, replacing whatever stands at each path (a symlink too).

    Raises SpecError when a path leads outside `tree` through a symlinked directory.
    """
    root = tree.resolve()
    for path, content in files.items():
        target = tree / path
        # A symlink in the tree could point the write anywhere on the node.
        if not target.parent.resolve().is_relative_to(root):
            raise SpecError(f"file path {path!r} resolves outside the worktree (through a symlink)")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
