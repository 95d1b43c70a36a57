"""A store that can lose writes is refused before anything runs, unless accepted out loud.

Each test starts its own redis-server (loopback, a free port, a temp dir) with the
persistence it needs, and runs the real `farm` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from helpers import MakeTarget, free_port

from farm.campaign import prepare
from farm.config import load_config
from farm.store import VOLATILE_ENV, open_store

NO_AOF = ("--appendonly", "no", "--save", "")


class Server:
    """A private redis-server, started with the given persistence flags."""

    def __init__(self, data_dir: Path, flags: tuple[str, ...]) -> None:
        self.data_dir, self.flags = data_dir, flags
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port)),
                *("--dir", str(self.data_dir), *self.flags),
            ],
            stdout=subprocess.DEVNULL,
        )
        with redis.Redis.from_url(self.url) as client:
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*flags: str, name: str = "redis") -> Server:
        started.append(Server(tmp_path / name, flags).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


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
    make_target: MakeTarget, redis_server: Callable[..., Server]
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
    make_target: MakeTarget, redis_server: Callable[..., Server]
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
    make_target: MakeTarget, redis_server: Callable[..., Server]
) -> None:
    server = redis_server(*NO_AOF, "--rename-command", "CONFIG", "")
    code, out = farm("work", str(make_target()), "--store", server.url, "--wait", "0.5")
    assert code == 2, out
    assert "keeps no append-only file (read from INFO persistence (CONFIG GET was" in out


def test_reading_roles_do_not_refuse_a_volatile_store(
    make_target: MakeTarget, redis_server: Callable[..., Server]
) -> None:
    server = redis_server(*NO_AOF)
    target = make_target()
    store = open_store(server.url)
    prepare(target, load_config(target), store, check_command=False)
    store.close()
    code, out = farm("status", str(target), "--store", server.url)
    assert code == 0 and "default" in out, out
    assert "append-only" not in out
