"""scripts/submit.sh and docker/farm-job.sh, run for real with `ray` and `farm` stubbed out.

The stubs record what they were given, so the tests see exactly the command line that
would reach a Ray job server and the `farm run` a job's driver would start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_files import ROOT, farm_run_args, split_farm_job

SUBMIT = ROOT / "scripts" / "submit.sh"
FARM_JOB = ROOT / "docker" / "farm-job.sh"
KEY = "sk-ant-test-not-a-real-key"

# Records argv one per line, and copies the --runtime-env file before submit.sh removes it.
RAY_STUB = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_DIR/argv"
prev=""
for a in "$@"; do [ "$prev" = --runtime-env ] && cp "$a" "$STUB_DIR/runtime_env"; prev=$a; done
echo "${RAY_AUTH_MODE:-}" > "$STUB_DIR/auth_mode"
"""
FARM_STUB = """#!/bin/sh
printf '%s\\n' "$@" > "$STUB_DIR/farm_argv"
"""


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("ray", RAY_STUB), ("farm", FARM_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FARM_"))}
    env.pop("ANTHROPIC_API_KEY", None)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_DIR=str(tmp_path))
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)


def test_submit_sh_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    out = run(["shellcheck", str(SUBMIT), str(FARM_JOB)], dict(os.environ))
    assert out.returncode == 0, out.stdout


def test_submit_sh_help_explains_usage_and_submits_nothing(stubs: dict[str, str]) -> None:
    out = run([str(SUBMIT), "-h"], stubs)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: scripts/submit.sh")
    assert not (Path(stubs["STUB_DIR"]) / "argv").exists()


def test_submit_sh_submits_farm_run_of_the_example_with_the_store_and_no_git(
    stubs: dict[str, str],
) -> None:
    env = {**stubs, "RAY_ADDRESS": "http://127.0.0.1:8265", "RAY_AUTH_TOKEN": "t0ken"}
    env["ANTHROPIC_API_KEY"] = KEY
    out = run(
        [str(SUBMIT), "--store", "redis://farm-redis:6379/0", "--", "--max-candidates", "5"], env
    )
    assert out.returncode == 0, out.stderr
    stub = Path(stubs["STUB_DIR"])
    argv = (stub / "argv").read_text().splitlines()
    assert argv[:6] == ["job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", "."]
    entry = argv[argv.index("--") + 1 :]
    assert entry[:2] == ["bash", "docker/farm-job.sh"]
    target, config, args = split_farm_job(entry[2:])
    assert (target, config) == ("examples/eclip", "k8s/eclip.farm.toml")
    parsed = farm_run_args(target, args)
    assert parsed.store == "redis://farm-redis:6379/0"
    assert parsed.max_candidates == 5
    runtime_env = json.loads((stub / "runtime_env").read_text())
    assert {".git", ".venv", "runs"} <= set(runtime_env["excludes"])
    assert runtime_env["env_vars"] == {"ANTHROPIC_API_KEY": KEY}
    # The key travels only in the (deleted) file: not in argv, not in anything printed.
    assert KEY not in "\n".join(argv) + out.stdout + out.stderr
    assert not Path(argv[argv.index("--runtime-env") + 1]).exists()
    assert (stub / "auth_mode").read_text().strip() == "token"


def test_submit_sh_sends_no_env_vars_without_a_key_and_no_token_mode_without_a_token(
    stubs: dict[str, str],
) -> None:
    env = {**stubs, "FARM_STORE_URL": "redis://r:6379/1"}
    out = run([str(SUBMIT), "--address", "http://h:8265", "--campaign", "c1"], env)
    assert out.returncode == 0, out.stderr
    stub = Path(stubs["STUB_DIR"])
    assert "env_vars" not in json.loads((stub / "runtime_env").read_text())
    assert (stub / "auth_mode").read_text().strip() == ""
    argv = (stub / "argv").read_text().splitlines()
    assert argv[-4:] == ["--store", "redis://r:6379/1", "--campaign", "c1"]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--address", "http://h:8265"], "no store"),
        (["--address", "http://h:8265", "--store", "sqlite:///x.db"], "sqlite"),
        (["--store", "redis://r:6379/0"], "no Ray address"),
        (["--address", "a", "--store", "redis://r/0", "--target", "farm"], "no farm.toml"),
    ],
)
def test_submit_sh_refuses_what_cannot_work_on_a_cluster(
    stubs: dict[str, str], args: list[str], why: str
) -> None:
    out = run([str(SUBMIT), *args], stubs)
    assert out.returncode == 2
    assert why in out.stderr
    assert not (Path(stubs["STUB_DIR"]) / "argv").exists()


def test_farm_job_commits_the_target_once_with_the_config_and_runs_farm_run(
    stubs: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "eclip"
    shutil.copytree(ROOT / "examples" / "eclip", source)
    (source / "__pycache__").mkdir(exist_ok=True)
    (source / "__pycache__" / "x.pyc").write_text("cache")
    config = ROOT / "k8s" / "eclip.farm.toml"
    shas = []
    for work in ("w1", "w2"):
        env = {**stubs, "FARM_WORK_DIR": str(tmp_path / work)}
        cmd = [str(FARM_JOB), str(source), "--config", str(config), "--", "--store", "redis://r/0"]
        out = run(cmd, env)
        assert out.returncode == 0, out.stderr
        repo = tmp_path / work / "eclip"
        farm_argv = (tmp_path / "farm_argv").read_text().splitlines()
        assert farm_argv == ["run", str(repo), "--store", "redis://r/0"]
        assert (repo / "farm.toml").read_text() == config.read_text()
        assert not (repo / "__pycache__").exists()
        git = ["git", "-C", str(repo)]
        assert run([*git, "status", "--porcelain"], env).stdout == ""
        shas.append(run([*git, "rev-parse", "HEAD"], env).stdout.strip())
    # Same files, same baseline commit: a fresh head pod recreates the campaign's start sha.
    assert shas[0] == shas[1]
    again = run([str(FARM_JOB), str(source)], {**stubs, "FARM_WORK_DIR": str(tmp_path / "w1")})
    assert again.returncode == 0
    assert "resuming" in again.stdout
