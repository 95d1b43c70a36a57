"""A store that can lose writes: refused before anything runs unless accepted out loud;
and when one did lose writes (rolled back to a snapshot or a backup), farm recovers forward
from git and never moves the best branch back over kept work unasked.

The Redis tests start their own redis-server (loopback, a free port, a temp dir) with the
persistence they need; the refusal is seen from the real `farm` command in a subprocess.
The rollback tests drive the real controller on a real store and git repo, finishing each
trial at once with the metric its id names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import (
    LINEAGE_DRAFTS,
    LINEAGE_TOML,
    LINEAGE_TRAIN,
    MakeTarget,
    RedisServer,
    git,
    lineage_metric,
)
from helpers import farm as farm_here

from farm.campaign import prepare, repair_refs
from farm.config import TargetConfig, load_config
from farm.controller import Controller
from farm.errors import FarmError, RefMismatch
from farm.gitops import Repo, best_branch
from farm.merge.verdicts import lost_keeps
from farm.propose import build_context, record_drafts
from farm.records import CandidateState, DecisionKind, Outcome, TrialResult
from farm.store import VOLATILE_ENV, Store, open_store

NO_AOF = ("--appendonly", "no", "--save", "")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(*flags: str, name: str = "redis") -> RedisServer:
        started.append(RedisServer(tmp_path / name, *flags).start())
        return started[-1]

    yield start
    for server in started:
        server.kill()


def farm(*args: str) -> tuple[int, str]:
    """The real `farm` command of this checkout, without the tests' acceptance of a store
    that can lose writes (tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if k != VOLATILE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.run(
        [sys.executable, "-m", "farm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_a_redis_without_aof_is_refused_before_anything_runs(
    make_target: MakeTarget, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(*NO_AOF)
    target = make_target()
    code, out = farm("run", str(target), "--store", server.url, "--max-candidates", "1")
    assert code == 2, out
    assert "keeps no append-only file" in out
    assert "loses every write" in out  # no snapshots either
    assert "--appendonly yes --appendfsync everysec" in out  # the fix, as k8s/redis.yaml's
    assert "--volatile-store" in out
    assert "starting a local Ray" not in out
    with redis.Redis.from_url(server.url) as client:
        assert not client.keys("farm:*:campaign")  # nothing of a campaign was written
    for role in ("control", "work", "propose"):
        code, out = farm(role, str(target), "--store", server.url)
        assert code == 2 and "keeps no append-only file" in out, (role, out)


def test_aof_on_is_not_refused_and_a_volatile_store_runs_when_accepted(
    make_target: MakeTarget, redis_server: Callable[..., RedisServer]
) -> None:
    target = make_target()
    durable = redis_server("--appendonly", "yes", "--appendfsync", "everysec", name="aof")
    code, out = farm("work", str(target), "--store", durable.url, "--wait", "0.5")
    # Past the check: it waits for the campaign that no `farm control` creates here.
    assert code == 2 and "no campaign 'default' appeared" in out, out
    assert "append-only" not in out
    volatile = redis_server(*NO_AOF, name="volatile")
    code, out = farm(
        "work", str(target), "--store", volatile.url, "--wait", "0.5", "--volatile-store"
    )
    assert code == 2 and "no campaign 'default' appeared" in out, out
    assert "keeps no append-only file; accepted (--volatile-store" in out
    assert "loses every write" in out


def test_persistence_is_read_from_info_where_config_is_refused(
    make_target: MakeTarget, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(*NO_AOF, "--rename-command", "CONFIG", "")
    code, out = farm("work", str(make_target()), "--store", server.url, "--wait", "0.5")
    assert code == 2, out
    assert "keeps no append-only file (read from INFO persistence (CONFIG GET was" in out


def test_reading_roles_do_not_refuse_a_volatile_store(
    make_target: MakeTarget, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server(*NO_AOF)
    target = make_target()
    store = open_store(server.url)
    prepare(target, load_config(target), store, check_command=False)
    store.close()
    code, out = farm("status", str(target), "--store", server.url)
    assert code == 0 and "default" in out, out
    assert "append-only" not in out


@pytest.mark.parametrize(
    ("ahead", "lost"),
    [
        ([(1, False), (2, False)], [1, 2]),  # farm's keeps the store does not know
        ([(1, False), (None, False)], None),  # someone else's commit on top
        ([(None, False)], None),
        ([(3, True)], None),  # the store decided it: a reverted keep, not a lost one
        ([], None),
    ],
)
def test_only_farms_own_undecided_commits_are_lost_keeps(
    ahead: list[tuple[int | None, bool]], lost: list[int] | None
) -> None:
    assert lost_keeps(ahead) == lost


def drive(
    store: Store,
    target: Path,
    cfg: TargetConfig,
    *,
    until: Callable[[], bool],
    ctl: Controller | None = None,
) -> str:
    """Start a controller as `farm run` does (or go on with `ctl`) and step it, every
    queued trial finished at once, until `until()`; returns what it said."""
    if ctl is None:
        ctl = Controller(store=store, repo=Repo(target), cfg=cfg, campaign="default")
        ctl.sync_best_branch()
    for _ in range(60):
        ctl.step(slots=8)
        for t in store.claim_trials("default", worker="w", n=100, lease_s=60):
            metric = lineage_metric(t.id)
            store.record_result("default", TrialResult(t.id, Outcome.OK, metric=metric))
        if until():
            return "\n".join(ctl.notices)
    raise AssertionError("the campaign did not get there")


def ended(store: Store) -> Callable[[], bool]:
    def check() -> bool:
        cands = store.list_candidates("default")
        busy = any(c.state in (CandidateState.QUEUED, CandidateState.RUNNING) for c in cands)
        return not busy and not store.get_incumbent("default").estimated

    return check


def to_baseline(store: Store, target: Path) -> TargetConfig:
    """Start the campaign and drive it to the end of its baseline, before any keep (where
    the callers take their snapshot); returns its config."""
    cfg = load_config(target)
    prepare(target, cfg, store, check_command=False)
    drafts = LINEAGE_DRAFTS
    record_drafts(store, cfg, "default", drafts, build_context(store, cfg, "default"))
    drive(store, target, cfg, until=lambda: store.get_campaign("default").sigma is not None)
    assert not kept_commits(store)
    return cfg


def kept_commits(store: Store) -> list[str]:
    return [d.incumbent_after for d in store.list_decisions("default", kinds={DecisionKind.KEPT})]


class Killed(Exception):
    """The process died here."""


class DiesAtFirstMove:
    """A store whose process dies right after it first moves the incumbent."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != "cas_incumbent":
            return attr

        def cas(*args: Any, **kwargs: Any) -> bool:
            attr(*args, **kwargs)
            raise Killed

        return cas


# sqlite: the file restored from a copy; sqlite-lost: the file lost; sqlite-cut: restored,
# and the first recovery killed after it moved the incumbent; redis: restarted from SAVE.
@pytest.mark.parametrize("store_kind", ["sqlite", "sqlite-lost", "sqlite-cut", "redis"])
def test_a_store_rolled_back_is_recovered_forward_from_git(
    store_kind: str,
    make_target: MakeTarget,
    redis_server: Callable[..., RedisServer],
    tmp_path: Path,
) -> None:
    target = make_target({"train.py": LINEAGE_TRAIN}, extra_toml=LINEAGE_TOML)
    db = tmp_path / "farm.db"
    server = redis_server(*NO_AOF) if store_kind == "redis" else None
    url = server.url if server else f"sqlite:///{db}"
    store = open_store(url)
    cfg = to_baseline(store, target)
    # The snapshot: after the baseline, before any keep.
    if server:
        with redis.Redis.from_url(url) as client:
            client.save()
    elif store_kind != "sqlite-lost":
        store.close()
        shutil.copy(db, tmp_path / "backup.db")
        store = open_store(url)
    drive(store, target, cfg, until=ended(store))
    kept = kept_commits(store)
    tip = git(target, "rev-parse", best_branch("default")).strip()
    assert len(kept) == 2 and kept[-1] == tip
    store.close()

    # The rollback: Redis restarted from its snapshot, the SQLite file restored (or lost).
    if server:
        server.kill()
        server.start()
    else:
        for f in tmp_path.glob("farm.db*"):
            f.unlink()
        if store_kind != "sqlite-lost":
            shutil.copy(tmp_path / "backup.db", db)
    store = open_store(url)
    prepare(target, cfg, store, check_command=False)  # as `farm run` starts
    assert not kept_commits(store)  # the keeps are gone from the store
    if store_kind == "sqlite-cut":
        dying: Any = DiesAtFirstMove(store)
        with pytest.raises(Killed):
            Controller(
                store=dying, repo=Repo(target), cfg=cfg, campaign="default"
            ).sync_best_branch()
        assert store.get_incumbent("default").sha == kept[0] and not kept_commits(store)
    said = drive(store, target, cfg, until=ended(store))

    assert "had lost the 2 keeps the best branch holds" in said
    assert git(target, "rev-parse", best_branch("default")).strip() == tip  # never moved back
    for sha in kept:
        git(target, "merge-base", "--is-ancestor", sha, tip)
    inc = store.get_incumbent("default")
    assert inc.sha == tip and not inc.estimated  # measured by its own runs
    assert kept_commits(store)[:2] == kept
    assert all(
        c.state is CandidateState.KEPT
        for c in store.list_candidates("default")
        if c.commit_sha in kept
    )
    assert store.next_candidate_id("default") > 3  # above every candidate branch git has
    store.close()


def test_a_store_rolled_back_under_a_running_controller_is_caught_up_at_its_next_step(
    make_target: MakeTarget, redis_server: Callable[..., RedisServer]
) -> None:
    target = make_target({"train.py": LINEAGE_TRAIN}, extra_toml=LINEAGE_TOML)
    server = redis_server(*NO_AOF)
    store = open_store(server.url)
    cfg = to_baseline(store, target)
    with redis.Redis.from_url(server.url) as client:
        client.save()
    ctl = Controller(store=store, repo=Repo(target), cfg=cfg, campaign="default")
    drive(store, target, cfg, until=lambda: bool(kept_commits(store)), ctl=ctl)
    before = kept_commits(store)
    server.kill()  # Redis restarts from its snapshot; this controller rides it out
    server.start()
    assert not kept_commits(store)
    said = drive(store, target, cfg, until=ended(store), ctl=ctl)
    assert "the best branch holds" in said
    kept = kept_commits(store)
    assert kept[: len(before)] == before and len(kept) == 2  # recorded again, then on
    assert git(target, "rev-parse", best_branch("default")).strip() == kept[-1]
    assert store.get_incumbent("default").sha == kept[-1]
    store.close()


def test_repair_refs_never_discards_a_kept_commit_unasked(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    target = make_target({"train.py": LINEAGE_TRAIN}, extra_toml=LINEAGE_TOML)
    db = tmp_path / "farm.db"
    store = open_store(f"sqlite:///{db}")
    cfg = to_baseline(store, target)
    store.close()
    shutil.copy(db, tmp_path / "backup.db")
    store = open_store(f"sqlite:///{db}")
    drive(store, target, cfg, until=ended(store))
    kept = kept_commits(store)
    tip = git(target, "rev-parse", best_branch("default")).strip()
    store.close()
    for f in tmp_path.glob("farm.db*"):
        f.unlink()
    shutil.copy(tmp_path / "backup.db", db)
    store = open_store(f"sqlite:///{db}")
    # Someone's commit on top: not a rollback farm can recover from alone, and the error
    # says the branch holds farm's keeps rather than recommend moving it back.
    planted = git(target, "commit-tree", "-p", tip, "-m", "planted", f"{tip}^{{tree}}").strip()
    git(target, "update-ref", f"refs/heads/{best_branch('default')}", planted)
    tip = planted
    ctl = Controller(store=store, repo=Repo(target), cfg=cfg, campaign="default")
    with pytest.raises(RefMismatch, match="holds 2 commits farm made that the store does not"):
        ctl.sync_best_branch()

    def refused(**how: object) -> str:
        with pytest.raises(FarmError, match="nothing moved") as e:
            repair_refs(store, Repo(target), "default", **how)  # type: ignore[arg-type]
        assert git(target, "rev-parse", best_branch("default")).strip() == tip
        return str(e.value)

    said = refused()
    assert all(sha[:10] in said for sha in kept)
    assert "discards 2 kept commits" in said and "--discard-kept" in said
    assert "The store knows no decision for 2 of them" in said
    refused(ask=lambda question: "n")
    moved = repair_refs(store, Repo(target), "default", ask=lambda question: "yes")
    start = store.get_campaign("default").start_sha
    assert f"farm/default/best: {tip[:12]} -> {start[:12]}" in moved
    store.close()


def test_discard_kept_is_refused_without_repair_refs(
    make_target: MakeTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = farm_here(capsys, "run", str(make_target()), "--discard-kept")
    assert code == 2 and "--discard-kept: only with --repair-refs" in out
