from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.errors import GitError
from workers.materialize import (
    MISSING,
    SpecError,
    cache_repo_path,
    checkout,
    hash_files,
    make_bundle,
    protected_digest,
)


def worktrees(cache_dir: Path) -> list[str]:
    """Worktree paths the cache repo still knows about (the bare repo itself excluded)."""
    lines = (cache_dir / "target" / "worktrees").glob("*/gitdir")
    return [p.read_text().strip() for p in lines]


def test_checkout_writes_files_over_the_base_commit(target, cache_dir: Path) -> None:
    files = {"train.py": "print('new')\n", "pkg/extra.py": "X = 1\n"}
    with checkout(target.sha, target.bundle, files, "target", cache_dir) as wt:
        assert (wt / "train.py").read_text() == "print('new')\n"
        assert (wt / "pkg" / "extra.py").read_text() == "X = 1\n"
        assert (wt / "prepare.py").read_text() == (target.path / "prepare.py").read_text()


def test_worktree_is_removed_afterwards_even_when_the_trial_raises(target, cache_dir) -> None:
    with (
        pytest.raises(RuntimeError),
        checkout(target.sha, target.bundle, {}, "target", cache_dir) as wt,
    ):
        (wt / "checkpoint.pt").write_bytes(b"untracked output")
        raise RuntimeError("trial failed")
    assert not wt.exists()
    assert worktrees(cache_dir) == []


def test_cached_base_needs_no_bundle(target, cache_dir: Path) -> None:
    with checkout(target.sha, target.bundle, {}, "target", cache_dir):
        pass
    with checkout(target.sha, b"", {}, "target", cache_dir) as wt:
        assert (wt / "train.py").exists()


def test_uncached_base_without_bundle_is_a_git_error(target, cache_dir: Path) -> None:
    with pytest.raises(GitError, match="not cached"), checkout(target.sha, b"", {}, "t", cache_dir):
        pass


def test_bundle_missing_the_base_commit_is_a_git_error(target, cache_dir, run_git) -> None:
    (target.path / "train.py").write_text("print('later')\n")
    run_git(target.path, "commit", "-qam", "later")
    later = run_git(target.path, "rev-parse", "HEAD")
    with (
        pytest.raises(GitError, match="does not contain"),
        checkout(later, target.bundle, {}, "target", cache_dir),
    ):
        pass


def test_make_bundle_leaves_no_ref_behind(target, run_git) -> None:
    make_bundle(target.path, target.sha[:10])
    assert run_git(target.path, "for-each-ref", "refs/farm-bundle") == ""


def test_a_driver_killed_while_bundling_leaves_nothing_in_the_repo(
    target, run_git, tmp_path: Path
) -> None:
    # A git on PATH that kills its caller (SIGKILL: no `finally` runs) as the bundle is made.
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    real = shutil.which("git")
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *"bundle create"*) kill -9 $PPID; exit 1;; esac\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{wrapper.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(Path(__file__).parents[2]),  # this checkout's workers/
        "TMPDIR": str(tmp_path),
    }
    code = "import sys; from pathlib import Path; from workers.materialize import make_bundle; "
    code += "make_bundle(Path(sys.argv[1]), sys.argv[2])"
    args = [sys.executable, "-c", code, str(target.path), target.sha]
    driver = subprocess.run(args, env=env, check=False)
    assert driver.returncode == -signal.SIGKILL
    assert run_git(target.path, "for-each-ref") == run_git(
        target.path, "for-each-ref", "refs/heads"
    )


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.py", "a/../../x.py", ".git/config", ""]
)
def test_paths_outside_the_worktree_are_rejected(target, cache_dir: Path, path: str) -> None:
    with (
        pytest.raises(SpecError),
        checkout(target.sha, target.bundle, {path: "x"}, "target", cache_dir),
    ):
        pass
    assert not cache_dir.exists()  # rejected before any git work


def test_write_through_a_symlink_out_of_the_worktree_is_rejected(
    target, cache_dir: Path, tmp_path: Path, run_git
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (target.path / "data").symlink_to(outside)
    run_git(target.path, "add", "data")
    run_git(target.path, "commit", "-qm", "link")
    sha = run_git(target.path, "rev-parse", "HEAD")
    bundle = make_bundle(target.path, sha)
    with (
        pytest.raises(SpecError, match="outside the worktree"),
        checkout(sha, bundle, {"data/evil.py": "x"}, "target", cache_dir),
    ):
        pass
    assert list(outside.iterdir()) == []
    assert worktrees(cache_dir) == []


def test_concurrent_checkouts_share_one_cache_repo(target, cache_dir: Path) -> None:
    seen: list[Path] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with checkout(target.sha, target.bundle, {"n.txt": str(i)}, "target", cache_dir) as wt:
                assert (wt / "n.txt").read_text() == str(i)
                seen.append(wt)
        except BaseException as e:  # surfaced below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(seen)) == 4
    assert worktrees(cache_dir) == []


def test_repo_key_must_be_one_path_component(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        cache_repo_path("../elsewhere", tmp_path)


def test_default_cache_dir_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FARM_CACHE_DIR", str(tmp_path))
    assert cache_repo_path("nanogpt") == tmp_path / "nanogpt"


def test_missing_protected_file_hashes_to_missing(target) -> None:
    hashes = hash_files(target.path, ["prepare.py", "gone.py"])
    assert hashes["gone.py"] == MISSING
    assert len(hashes["prepare.py"]) == 64


def test_protected_digest_ignores_order_but_not_content() -> None:
    a = protected_digest({"a.py": "1", "b.py": "2"})
    assert a == protected_digest({"b.py": "2", "a.py": "1"})
    assert a != protected_digest({"a.py": "1", "b.py": "3"})
