from __future__ import annotations

import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers import isolation, sandbox
from workers.isolation import Isolation, Policy, SandboxError, View, resolve
from workers.limits import cgroups_available
from workers.sandbox import build_env, run

# A shell with a grandchild: the outer sh starts an inner sh, whose `sleep` writes its pid.
GRANDCHILD = "sh -c 'sleep 1000 & echo $! > grandchild.pid; wait' & wait"
BASIC = resolve("basic", "host")
PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # python3 with this venv's packages
STRICT = resolve("strict", "auto")  # scripts/test.sh installs bubblewrap


@pytest.fixture(params=[STRICT, BASIC], ids=["strict", "basic"])
def policy(request: pytest.FixtureRequest) -> Policy:
    """Each process-handling test runs at both isolation levels."""
    return request.param


def run_in(cwd: Path, command: str, **overrides: Any) -> sandbox.RunResult:
    kwargs: dict[str, Any] = {
        "cwd": cwd,
        "env": {"PATH": PATH},
        "budget_s": 30.0,
        "grace_s": 0.5,
        "output_cap_bytes": 4096,
        "policy": BASIC,
    }
    kwargs.update(overrides)
    return run(command, **kwargs)


def wait_for_pid(path: Path) -> int:
    end = time.monotonic() + 5
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < end, f"{path} was never written"
        time.sleep(0.02)
    return int(path.read_text())


def test_exit_code_and_merged_output_are_reported(tmp_path: Path, policy: Policy) -> None:
    result = run_in(tmp_path, "echo out; echo err >&2; exit 3", policy=policy)
    assert result.exit_code == 3
    assert not result.timed_out
    assert result.output_tail == "out\nerr\n"
    assert result.started_at <= result.ended_at
    assert result.duration_s < 5


def test_budget_kills_every_process_of_the_trial(
    tmp_path: Path, is_gone, live_marked, policy: Policy
) -> None:
    marker = live_marked()
    start = time.monotonic()
    result = run_in(tmp_path, f"{GRANDCHILD} & {marker.command}", budget_s=1.0, policy=policy)
    assert result.timed_out
    assert time.monotonic() - start < 5
    assert marker.gone()
    if policy is BASIC:  # under bubblewrap the pid in the file is one of its own namespace
        assert is_gone(int((tmp_path / "grandchild.pid").read_text()))


def test_command_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, live_marked, policy: Policy
) -> None:
    marker = live_marked()
    result = run_in(
        tmp_path, f"trap '' TERM; {marker.command}; wait", budget_s=1.0, grace_s=0.5, policy=policy
    )
    assert result.timed_out
    assert 1.4 < result.duration_s < 5
    assert marker.gone()


def test_budget_sends_sigterm_first_so_the_command_can_end_cleanly(
    tmp_path: Path, policy: Policy
) -> None:
    script = "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.05; done"
    result = run_in(tmp_path, script, budget_s=1.0, grace_s=3.0, policy=policy)
    assert result.timed_out
    assert "got TERM" in result.output_tail
    assert result.duration_s < 3.5


def test_background_process_left_after_exit_is_killed(
    tmp_path: Path, live_marked, policy: Policy
) -> None:
    marker = live_marked()
    start = time.monotonic()
    result = run_in(tmp_path, f"{marker.command} & echo done", policy=policy)
    assert (result.exit_code, result.timed_out) == (0, False)
    assert result.output_tail == "done\n"
    assert time.monotonic() - start < sandbox.DRAIN_S  # no wait on the pipe it held
    assert marker.gone()


def test_setsid_escape_outlives_basic_but_not_strict(tmp_path: Path, live_marked) -> None:
    """A double fork into a new session leaves the process group: only a PID namespace
    reaches it (basic mode's known gap, said at the start of a campaign)."""
    for policy, survives in ((STRICT, False), (BASIC, True)):
        marker = live_marked()
        result = run_in(tmp_path, f'setsid sh -c "{marker.command} &" ; echo ok', policy=policy)
        assert result.exit_code == 0
        assert marker.gone() is not survives
        marker.kill()


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


def test_exception_while_running_kills_the_trial(
    tmp_path: Path, live_marked, alarm_in, policy: Policy
) -> None:
    marker = live_marked()
    with pytest.raises(RuntimeError, match="cancelled"):
        run_in(tmp_path, f"{marker.command}; wait", budget_s=60.0, policy=policy)
    assert marker.gone()


def test_output_flood_keeps_only_the_tail(tmp_path: Path, policy: Policy) -> None:
    flood = "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo 'val_bpb: 1.5'"
    result = run_in(tmp_path, flood, output_cap_bytes=1000, policy=policy)
    assert result.exit_code == 0
    assert len(result.output_tail) == 1000
    assert result.output_tail.endswith("x\nval_bpb: 1.5\n")


def test_output_tail_decodes_invalid_utf8(tmp_path: Path) -> None:
    result = run_in(tmp_path, "printf 'ok \\377\\n'")
    assert result.output_tail == "ok \ufffd\n"


def test_env_holds_only_allowed_variables_the_seed_the_budget_and_gpu_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_spec, policy: Policy
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    monkeypatch.setenv("FARM_TEST_ALLOWED", "yes")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    spec = make_spec(
        env_allow=["PATH", "FARM_TEST_ALLOWED", "NOT_SET_ANYWHERE"],
        env={"EXTRA": "1", "CUDA_VISIBLE_DEVICES": "0"},
        seed=42,
        budget_s=7.5,
    )
    result = run_in(tmp_path, "env", env=build_env(spec), policy=policy)
    lines = set(result.output_tail.splitlines())
    assert "sk-test-secret" not in result.output_tail
    assert {"FARM_SEED=42", "FARM_BUDGET_S=7.5", "FARM_TEST_ALLOWED=yes", "EXTRA=1"} <= lines
    assert "CUDA_VISIBLE_DEVICES=3" in lines  # Ray's assignment wins over the config
    assert not any(line.startswith("NOT_SET_ANYWHERE") for line in lines)


def test_core_dumps_are_disabled(tmp_path: Path, policy: Policy) -> None:
    assert run_in(tmp_path, "ulimit -c", policy=policy).output_tail.strip() == "0"


def test_memory_over_the_limit_is_killed_and_said(tmp_path: Path, policy: Policy) -> None:
    hog = f"{sys.executable} -c 'import time; x = b\"x\" * (600 * 2**20); time.sleep(30)'"
    result = run_in(tmp_path, hog, memory_mb=200, env={}, policy=policy)
    assert result.memory_exceeded and not result.timed_out
    assert result.duration_s < 20
    # The kernel (a control group) kills it on its way up; farm's own watch, once over.
    assert result.limits_hit == ["memory"] or result.peak_memory_mb > 200
    assert "memory limit" in result.output_tail and "memory_mb = 200" in result.output_tail


def test_memory_under_the_limit_is_measured(tmp_path: Path, policy: Policy) -> None:
    script = f"{sys.executable} -c 'import time; x = b\"x\" * (100 * 2**20); time.sleep(1.5)'"
    result = run_in(tmp_path, script, memory_mb=1000, env={}, policy=policy)
    assert result.exit_code == 0 and not result.memory_exceeded
    assert 90 < result.peak_memory_mb < 400


CONNECT = f"{sys.executable} -c \"import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)\""  # noqa: E501


@pytest.fixture
def host_port() -> Iterator[int]:
    """A service listening on the host's loopback, like Redis on 6379."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


needs_netns = pytest.mark.skipif(
    not isolation.basic_network_prefix("auto"), reason="no network namespaces on this OS"
)


def test_host_network_reaches_host_services(tmp_path: Path, host_port: int) -> None:
    for policy in (BASIC, resolve("strict", "host")):
        assert run_in(tmp_path, f"{CONNECT} {host_port}", policy=policy).exit_code == 0


@needs_netns
@pytest.mark.parametrize(
    "isolation_level,network",
    [("basic", "isolated"), ("basic", "auto"), ("strict", "auto"), ("strict", "isolated")],
)
def test_isolated_network_cannot_reach_host_services(
    tmp_path: Path, host_port: int, isolation_level: str, network: str
) -> None:
    policy = resolve(isolation_level, network)
    assert policy.network_isolated
    result = run_in(tmp_path, f"{CONNECT} {host_port}", policy=policy)
    assert result.exit_code == 1
    assert "ConnectionRefusedError" in result.output_tail


@needs_netns
@pytest.mark.parametrize("level", ["basic", "strict"])
def test_isolated_network_has_only_a_working_loopback(tmp_path: Path, level: str) -> None:
    script = (
        "import socket; print([n for _, n in socket.if_nameindex()]); "
        "s = socket.create_server(('127.0.0.1', 0)); "
        "socket.create_connection(s.getsockname(), 1); print('loopback ok')"
    )
    result = run_in(
        tmp_path, f'{sys.executable} -c "{script}"', policy=resolve(level, "isolated"), env={}
    )
    assert result.output_tail == "['lo']\nloopback ok\n"


def test_isolated_network_where_impossible_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_netns(network: str) -> tuple[str, ...]:
        if network == "isolated":
            raise SandboxError("`unshare --net` fails on this node")
        return ()

    monkeypatch.setattr(isolation, "basic_network_prefix", no_netns)
    with pytest.raises(SandboxError, match="unshare"):
        resolve("basic", "isolated")
    assert not resolve("basic", "auto").network_isolated


def test_unknown_settings_are_errors() -> None:
    with pytest.raises(SandboxError, match="network"):
        resolve("basic", "none")
    with pytest.raises(SandboxError, match="isolation"):
        resolve("paranoid", "auto")


def test_strict_where_bubblewrap_cannot_run_refuses_and_auto_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(isolation, "bwrap_probe", lambda: ("", "bwrap is not installed"))
    with pytest.raises(SandboxError, match=r'isolation = "strict".*bwrap is not installed'):
        resolve("strict", "auto")
    policy = resolve("auto", "auto")
    assert policy.isolation is Isolation.BASIC
    assert "bwrap is not installed" in policy.describe(evaluate=False)[0]


def test_the_policy_says_what_each_level_leaves_out() -> None:
    assert STRICT.missing(evaluate=True) == []
    assert [str(g) for g in STRICT.missing(evaluate=False)] == ["score"]
    assert [str(g) for g in BASIC.missing(evaluate=True)] == [
        "filesystem",
        "processes",
        "network",
        "secrets",
        "reaped",
        "protected",
        "privileges",
        "score",
    ]
    lines = BASIC.describe(evaluate=True)
    assert lines[0] == "sandbox: basic (process group)"
    assert lines[1].startswith("missing guarantees: filesystem, processes, network, secrets,")
    assert Policy.from_dict(STRICT.to_dict()) == STRICT


# -- what a strict sandbox shows -------------------------------------------------------------


def strict_in(tmp_path: Path, script: str, **view: Any) -> sandbox.RunResult:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": PATH, "HOME": str(Path.home())}
    v = View(workdir=work, runtime=isolation.runtime_paths(env, "sh"), **view)
    return run_in(work, script, policy=STRICT, view=v, env=env)


def test_strict_shows_only_the_workdir_the_system_and_empty_temp_and_home(tmp_path: Path) -> None:
    (tmp_path / "beside.txt").write_text("not for the trial")
    script = (
        "echo @tmp; ls -A /tmp; echo @home; ls -A ~; echo @root; ls -A /; "
        "echo @beside; cat ../beside.txt 2>&1; echo @write; echo x > w && cat w"
    )
    out = strict_in(tmp_path, script).output_tail
    seen = {
        part.split("\n", 1)[0]: set(part.split("\n", 1)[1].split()) for part in out.split("@")[1:]
    }
    work = tmp_path / "work"
    runtime = [Path(p) for p in isolation.runtime_paths({"PATH": PATH}, "sh")]

    def mount_points(under: Path, paths: list[Path]) -> set[str]:
        # A path bound inside an empty tmpfs needs its parents there: their names show,
        # nothing else of the host's directory does (a checkout or venv under /tmp too).
        return {p.relative_to(under).parts[0] for p in paths if p.is_relative_to(under)}

    assert seen["tmp"] == mount_points(Path("/tmp"), [work, *runtime])
    home = Path.home()
    assert seen["home"] == mount_points(home, runtime)
    system = {p.strip("/") for p in isolation.SYSTEM_PATHS}
    shown = {"proc", "dev", "sys", "tmp", "etc", home.parts[1], *(p.parts[1] for p in runtime)}
    assert seen["root"] <= system | shown
    assert {"No", "such", "file"} <= seen["beside"]
    assert seen["write"] == {"x"}


needs_cgroups = pytest.mark.skipif(
    not cgroups_available(), reason="no control group can be made on this node"
)


@needs_cgroups
@pytest.mark.parametrize("where", ["/tmp", "/dev/shm", "$HOME"])
def test_files_in_tmpfs_and_shared_memory_count_against_the_memory_limit(
    tmp_path: Path, where: str
) -> None:
    env = {"PATH": PATH, "HOME": str(Path.home())}
    view = View(workdir=tmp_path, runtime=isolation.runtime_paths(env, "sh"))  # tmpfs uncapped
    script = f"dd if=/dev/zero of={where}/hog bs=1M count=300 2>&1 | tail -1"
    result = run_in(tmp_path, script, policy=STRICT, view=view, env=env, memory_mb=150)
    assert result.memory_exceeded and result.limits_hit == ["memory"], result.output_tail
    assert result.peak_memory_mb < 150  # no process held it: only the kernel counted it
    assert "killed at the memory limit by the kernel: [sandbox] memory_mb = 150" in (
        result.output_tail
    )


@needs_cgroups
def test_processes_beyond_the_limit_are_refused_at_both_levels(
    tmp_path: Path, policy: Policy
) -> None:
    script = "i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done; echo forked"
    result = run_in(tmp_path, script, policy=policy, pids_max=30, budget_s=10.0)
    assert result.limits_hit == ["processes"], result.output_tail
    assert "farm: the kernel refused it more than 30 processes and threads" in result.output_tail


def _cpu_weight_of(word: str) -> str:
    """The CPU weight of the group the host process carrying `word` runs in ("" if none yet)."""
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or word not in (entry / "cmdline").read_text():
                continue
            for line in (entry / "cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                if "cpu" in controllers.split(","):  # cgroup v1
                    weight = Path("/sys/fs/cgroup/cpu") / path.lstrip("/") / "cpu.shares"
                    return weight.read_text().strip()
                if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
                    return (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.weight").read_text()
        except OSError:
            continue
    return ""


@needs_cgroups
def test_a_command_weighs_its_cpus_against_other_trials(tmp_path: Path, policy: Policy) -> None:
    word = f"farm-cpu-{uuid.uuid4().hex[:8]}"
    command = f"{sys.executable} -c 'import time; time.sleep(2)' {word}"
    done: list[sandbox.RunResult] = []
    runner = threading.Thread(
        target=lambda: done.append(run_in(tmp_path, command, policy=policy, cpus=0.5))
    )
    runner.start()
    weight, end = "", time.monotonic() + 5
    while not weight and time.monotonic() < end:
        weight = _cpu_weight_of(word)
        time.sleep(0.05)
    runner.join()
    assert done and done[0].exit_code == 0
    assert weight.strip() in ("512", "50")  # half a CPU: v1 cpu.shares, v2 cpu.weight


def test_strict_shows_of_etc_only_what_interpreters_read(tmp_path: Path) -> None:
    files = ["/etc/shadow", "/etc/gshadow", "/etc/pip.conf", "/etc/redis/redis.conf"]
    script = (
        f"ls -A /etc; for f in {' '.join(files)}; do cat $f >/dev/null 2>&1 && echo READ $f; done"
    )
    out = strict_in(tmp_path, script + "; python3 -c 'import ssl, json; print(\"ok\")'")
    lines = out.output_tail.split()
    assert set(lines[:-1]) <= set(isolation.SYSTEM_ETC) and "passwd" in lines
    assert "READ" not in lines and lines[-1] == "ok"


def test_strict_cannot_write_protected_files_nor_rename_their_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "eval").mkdir(parents=True)
    (work / "eval" / "metric.py").write_text("SCORE = 1\n")
    script = (
        "echo 'SCORE = 0' > eval/metric.py; echo write $?; "
        "mv eval eval2; echo rename $?; "
        "rm -f eval/metric.py; echo remove $?; "
        "ln -sf /tmp/fake eval/metric.py; echo link $?; "
        "echo new > eval/extra.txt; echo beside $?"
    )
    result = strict_in(tmp_path, script, protect=("eval/metric.py",))
    codes = dict(
        line.split() for line in result.output_tail.splitlines() if re.fullmatch(r"\w+ \d+", line)
    )
    assert codes["write"] != "0" and codes["rename"] != "0" and codes["remove"] != "0"
    assert codes["link"] != "0"
    assert codes["beside"] == "0"  # the directory itself stays writable
    assert (work / "eval" / "metric.py").read_text() == "SCORE = 1\n"


def test_strict_read_only_view_refuses_every_write(tmp_path: Path) -> None:
    result = strict_in(tmp_path, "touch new; echo $?", writable=False)
    assert "Read-only file system" in result.output_tail


def test_strict_has_its_own_processes_no_capabilities_and_no_new_namespaces(
    tmp_path: Path,
) -> None:
    script = (
        "ls /proc | grep -c '^[0-9]'; grep CapEff /proc/self/status; hostname; "
        "unshare -U true 2>/dev/null; echo userns $?"
    )
    lines = strict_in(tmp_path, script).output_tail.splitlines()
    assert int(lines[0]) < 10  # the host runs hundreds
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2] == isolation.TRIAL_HOSTNAME
    assert lines[3] != "userns 0"


def test_runtime_paths_find_interpreters_but_never_home_temp_or_denied_paths(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    base = tmp_path / "base" / "bin"
    base.mkdir(parents=True)
    (base.parent / "lib" / "python3.11").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base}\n")
    tool = tmp_path / "tool" / "bin"  # a tool's prefix, beside its credentials
    tool.mkdir(parents=True)
    secret = tmp_path / "store"
    secret.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:{tool}:{Path.home()}/bin", "PYTHONPATH": str(tmp_path)}
    found = isolation.runtime_paths(env, f"{venv}/bin/python x.py", deny=[str(secret)])
    # A venv by what it holds; of a Python prefix its bin and lib; of anything else the
    # directory on PATH alone.
    assert {str(venv), str(base), str(base.parent / "lib"), str(tool)} <= set(found)
    assert str(base.parent) not in found and str(tool.parent) not in found
    assert "/usr/bin" not in found  # a system directory: bound already
    assert str(tmp_path) not in found  # would show the denied store
    assert not any(p in ("/", str(Path.home()), "/tmp") for p in found)


def test_docs_state_each_guarantee_as_the_policy_does() -> None:
    """docs/security.md's table is the policy in words: the two may not drift apart."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    rows = {
        m.group(1): (m.group(2), m.group(3).strip(), m.group(4).strip())
        for m in re.finditer(r"^\| \*\*(\w+)\*\* — (.+?) \| (.+?) \| (.+?) \|$", doc, re.M)
    }
    for g in isolation.Guarantee:
        meaning, strict, basic = rows[g.value]
        assert meaning == g.meaning
        if g is isolation.Guarantee.LIMITS:  # up to the node at either level
            assert "where" in strict and "where" in basic
            continue
        assert strict.startswith("✓") is STRICT.guarantees(evaluate=True)[g]
        assert (basic == "✓") is BASIC.guarantees(evaluate=True)[g]


def test_read_only_paths_are_visible_and_not_writable(tmp_path: Path) -> None:
    data = tmp_path / "datasets"
    data.mkdir()
    (data / "shard-0.bin").write_text("tokens")
    env = {"PATH": PATH, "HOME": str(Path.home())}
    work = tmp_path / "work"
    work.mkdir()
    runtime = isolation.runtime_paths(env, "sh", extra=[str(data)])
    script = f"cat {data}/shard-0.bin; echo; echo x > {data}/new 2>&1 || echo refused"
    result = run_in(work, script, policy=STRICT, env=env, view=View(workdir=work, runtime=runtime))
    assert result.output_tail.splitlines()[0] == "tokens"
    assert "refused" in result.output_tail and not (data / "new").exists()
