from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers import sandbox
from workers.sandbox import SandboxError, build_env, run

# A shell with a grandchild: the outer sh starts an inner sh, whose `sleep` writes its pid.
GRANDCHILD = "sh -c 'sleep 1000 & echo $! > grandchild.pid; wait' & wait"


def run_in(cwd: Path, command: str, **overrides: Any) -> sandbox.RunResult:
    kwargs: dict[str, Any] = {
        "cwd": cwd,
        "env": {"PATH": "/usr/bin:/bin"},
        "budget_s": 30.0,
        "grace_s": 0.5,
        "output_cap_bytes": 4096,
    }
    kwargs.update(overrides)
    return run(command, **kwargs)


def wait_for_pid(path: Path) -> int:
    end = time.monotonic() + 5
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < end, f"{path} was never written"
        time.sleep(0.02)
    return int(path.read_text())


def test_exit_code_and_merged_output_are_reported(tmp_path: Path) -> None:
    result = run_in(tmp_path, "echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert not result.timed_out
    assert result.output_tail == "out\nerr\n"
    assert result.started_at <= result.ended_at
    assert result.duration_s < 5


def test_budget_kills_the_whole_process_group(tmp_path: Path, is_gone) -> None:
    start = time.monotonic()
    result = run_in(tmp_path, GRANDCHILD, budget_s=1.0)
    assert result.timed_out
    assert result.exit_code < 0
    assert time.monotonic() - start < 5
    assert is_gone(int((tmp_path / "grandchild.pid").read_text()))


def test_command_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path, is_gone) -> None:
    result = run_in(tmp_path, f"trap '' TERM; {GRANDCHILD}", budget_s=1.0, grace_s=0.5)
    assert result.timed_out
    assert result.exit_code == -signal.SIGKILL
    assert 1.4 < result.duration_s < 5
    assert is_gone(int((tmp_path / "grandchild.pid").read_text()))


def test_background_process_left_after_exit_is_killed(tmp_path: Path, is_gone) -> None:
    start = time.monotonic()
    result = run_in(tmp_path, "sleep 1000 & echo $! > bg.pid; echo done")
    assert (result.exit_code, result.timed_out) == (0, False)
    assert result.output_tail == "done\n"
    assert time.monotonic() - start < sandbox.DRAIN_S  # no wait on the pipe it held
    assert is_gone(int((tmp_path / "bg.pid").read_text()))


@pytest.fixture
def alarm_in(request: pytest.FixtureRequest) -> Iterator[None]:
    """Raise RuntimeError in the main thread after 0.5 s, as a cancellation would."""

    def cancel(signum: int, frame: object) -> None:
        raise RuntimeError("cancelled")

    previous = signal.signal(signal.SIGALRM, cancel)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_exception_while_running_kills_the_group(tmp_path: Path, is_gone, alarm_in) -> None:
    with pytest.raises(RuntimeError, match="cancelled"):
        run_in(tmp_path, GRANDCHILD, budget_s=60.0)
    assert is_gone(wait_for_pid(tmp_path / "grandchild.pid"))


def test_output_flood_keeps_only_the_tail(tmp_path: Path) -> None:
    flood = "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo 'val_bpb: 1.5'"
    result = run_in(tmp_path, flood, output_cap_bytes=1000)
    assert result.exit_code == 0
    assert len(result.output_tail) == 1000
    assert result.output_tail.endswith("x\nval_bpb: 1.5\n")


def test_output_tail_decodes_invalid_utf8(tmp_path: Path) -> None:
    result = run_in(tmp_path, "printf 'ok \\377\\n'")
    assert result.output_tail == "ok \ufffd\n"


def test_env_holds_only_allowed_variables_the_seed_and_gpu_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    monkeypatch.setenv("FARM_TEST_ALLOWED", "yes")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    spec = make_spec(
        env_allow=["PATH", "FARM_TEST_ALLOWED", "NOT_SET_ANYWHERE"],
        env={"EXTRA": "1", "CUDA_VISIBLE_DEVICES": "0"},
        seed=42,
    )
    result = run_in(tmp_path, "env", env=build_env(spec))
    lines = set(result.output_tail.splitlines())
    assert "sk-test-secret" not in result.output_tail
    assert {"FARM_SEED=42", "FARM_TEST_ALLOWED=yes", "EXTRA=1"} <= lines
    assert "CUDA_VISIBLE_DEVICES=3" in lines  # Ray's assignment wins over the config
    assert not any(line.startswith("NOT_SET_ANYWHERE") for line in lines)


def test_core_dumps_are_disabled_and_memory_is_capped(tmp_path: Path) -> None:
    assert run_in(tmp_path, "ulimit -c").output_tail.strip() == "0"
    hog = f"{sys.executable} -c 'bytearray(2 * 1024**3)'"
    result = run_in(tmp_path, hog, memory_mb=512, env={})
    assert result.exit_code == 1
    assert "MemoryError" in result.output_tail


CONNECT = f"{sys.executable} -c \"import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)\""  # noqa: E501


@pytest.fixture
def host_port() -> Iterator[int]:
    """A service listening on the host's loopback, like Redis on 6379."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


needs_netns = pytest.mark.skipif(
    sandbox.isolation_prefix() is None, reason="no network namespaces on this OS"
)


def test_host_network_reaches_host_services(tmp_path: Path, host_port: int) -> None:
    assert run_in(tmp_path, f"{CONNECT} {host_port}", network="host").exit_code == 0


@needs_netns
@pytest.mark.parametrize("network", ["isolated", "auto"])
def test_isolated_network_cannot_reach_host_services(
    tmp_path: Path, host_port: int, network: str
) -> None:
    result = run_in(tmp_path, f"{CONNECT} {host_port}", network=network)
    assert result.exit_code == 1
    assert "ConnectionRefusedError" in result.output_tail


@needs_netns
def test_isolated_network_has_only_a_working_loopback(tmp_path: Path) -> None:
    script = (
        "import socket; print([n for _, n in socket.if_nameindex()]); "
        "s = socket.create_server(('127.0.0.1', 0)); "
        "socket.create_connection(s.getsockname(), 1); print('loopback ok')"
    )
    result = run_in(tmp_path, f'{sys.executable} -c "{script}"', network="isolated")
    assert result.output_tail == "['lo']\nloopback ok\n"


def test_isolated_network_where_impossible_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "isolation_prefix", lambda: None)
    with pytest.raises(SandboxError, match="unshare"):
        run_in(tmp_path, "true", network="isolated")
    assert run_in(tmp_path, "true", network="auto").exit_code == 0


def test_unknown_network_mode_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="network"):
        run_in(tmp_path, "true", network="none")
