"""What an operator sees and gets when the cluster changes under a campaign: a stop by
SIGTERM while trials run, a node lost under the trials."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import TOY_TOML, TOY_TRAIN, MakeTarget, free_port
from local_ray import head_address, kill_group, node_ports, ray_env, wait_for_nodes
from prometheus_client.parser import text_string_to_metric_families

from farm import dispatch
from farm.campaign import prepare
from farm.config import load_config
from farm.dispatch import Dispatcher
from farm.gitops import Repo
from farm.records import Trial, TrialKind, TrialState
from farm.store import default_url, open_store

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# A trial that runs until it is stopped (well inside its budget).
LONG = TOY_TRAIN.replace("import random\n", "import random\nimport time\n\ntime.sleep(120)\n")


def test_a_run_stopped_by_sigterm_mid_trial_ends_quietly_and_requeues_its_trials(
    make_target: MakeTarget,
) -> None:
    target = make_target(
        {"train.py": LONG}, toml=TOY_TOML.replace("budget_s = 30", "budget_s = 300")
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "FARM_CACHE_DIR": str(target.parent / "cache"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "run", str(target), "--slots", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = None
    try:
        deadline = time.monotonic() + 120
        running: list[str] = []
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if store is None and (target / ".farm" / "farm.db").exists():
                store = open_store(default_url(target))
            if store is not None and store.get_campaign("default") is not None:
                running = [t.id for t in store.list_trials("default", states={TrialState.RUNNING})]
        assert running, proc.communicate(timeout=30)
        time.sleep(3)  # the trial's process is up in its worker
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted: stopping trials" in out
    assert "Check failed" not in err and "Traceback" not in err and "*** " not in err, err
    assert store is not None
    try:
        trials = {t.id: t for t in store.list_trials("default")}
    finally:
        store.close()
    # Given back unrun: queued again, no result, no delivery counted against them.
    assert all(trials[i].state is TrialState.QUEUED and trials[i].result is None for i in running)


def test_losing_the_only_node_with_the_trials_label_is_said_and_the_slots_follow(
    make_target: MakeTarget,
) -> None:
    """A head that runs no trial and one node labelled for them; `farm run` connects, its
    trials start, and the labelled node is killed: the terminal names the lost node and
    says no node can run a trial, the status line shows 0 slots and the loss, the metrics
    say so, and a stop leaves the trials queued."""
    env = ray_env(str(VENV_BIN))
    # The GCS declares a silent node dead after 3 missed checks of 0.5 s, not 15 s.
    checks = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="farm-ray-", dir="/tmp")  # short unix socket paths
    common = ["--block", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=0",
         "--include-dashboard=false", *common, *node_ports()],
        env={**env, **checks}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    nodes = [head]
    run = None
    try:
        gcs = head_address(port)
        wait_for_nodes(sys.executable, env, gcs, 1)
        nodes.append(
            subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", f"--address={gcs}", "--num-cpus=2",
                 "--labels=gpu-model=x", *common[:2], *node_ports()],
                env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        wait_for_nodes(sys.executable, env, gcs, 2)
        target = make_target(
            {"train.py": LONG},
            toml=TOY_TOML.replace("budget_s = 30", "budget_s = 300")
            + '[resources]\ncpus_per_trial = 1\nlabels = { gpu-model = "x" }\n',
        )
        metrics = free_port()
        out = target.parent / "run.log"
        run = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "run", str(target), "--progress-every", "1",
             "--metrics-address", f"127.0.0.1:{metrics}"],
            env={**env, "RAY_ADDRESS": gcs, "PYTHONPATH": os.pathsep.join(sys.path),
                 "FARM_CACHE_DIR": str(target.parent / "cache")},
            stdout=out.open("w"), stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        store = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)
            if store is None and (target / ".farm" / "farm.db").exists():
                store = open_store(default_url(target))
            running = (
                store
                and store.get_campaign("default")
                and store.list_trials("default", states={TrialState.RUNNING})
            )
            if running and len(running) == 2:
                break
        else:
            raise AssertionError(out.read_text())
        assert store is not None
        os.killpg(nodes[1].pid, signal.SIGKILL)  # the node dies, its raylet unannounced

        def served() -> dict[tuple[str, str], float]:
            url = f"http://127.0.0.1:{metrics}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
            return {
                (s.name, s.labels.get("state", "")): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name in ("farm_slots", "farm_nodes")
            }

        deadline = time.monotonic() + 60
        while served().get(("farm_nodes", "lost")) != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served() == {
            ("farm_slots", ""): 0,
            ("farm_nodes", "alive"): 0,
            ("farm_nodes", "lost"): 1,
        }, out.read_text()
        time.sleep(2)  # a status line after the loss
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 130, out.read_text()
        said = out.read_text()
        words = " ".join(said.split())  # notes wrap at 80 columns
        lost = (
            ") lost: it held 2 trials; 0 slots left: no live node can run a trial, the trials wait"
        )
        assert words.count(lost) == 1, said
        assert re.search(r"\] baseline 0/\d+ runs · slots \d/0 \(1 node lost\)", said), said
        trials = store.list_trials("default")
        store.close()
        assert trials and all(t.state is TrialState.QUEUED for t in trials)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        for p in reversed(nodes):
            kill_group(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_trial_no_node_takes_for_over_a_budget_is_said_once_and_counted(
    make_target: MakeTarget, ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial that asks Ray for a resource no node has waits in flight: once it has been
    there longer than its run may take plus one budget, it is said once and counted."""
    target = make_target(
        toml=TOY_TOML.replace("budget_s = 30", "budget_s = 1")
        + "[sandbox]\ngrace_s = 0\n[resources]\ncpus_per_trial = 1\ncustom = { nowhere = 1 }\n"
    )
    cfg = load_config(target)
    store = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    camp = prepare(target, cfg, store, check_command=False)
    store.enqueue_trial(
        Trial(id="base-0", campaign=camp.id, kind=TrialKind.BASELINE,
              commit_sha=camp.start_sha, base_sha=camp.start_sha, seed=0)
    )  # fmt: skip
    monkeypatch.setattr(dispatch, "REAP_EVERY_S", 0.5)  # look at the nodes often
    d = Dispatcher(store=store, repo=Repo(target), cfg=cfg, campaign=camp.id, slots=1)
    try:
        deadline = time.monotonic() + 30
        while not d.view.unplaced and time.monotonic() < deadline:
            d.step(wait_s=0.2)
        assert d.view.unplaced == 1 and d.view.placement_wait_s > cfg.budget_s
        for _ in range(5):
            d.step(wait_s=0.2)
        said = [n for n in d.notices if "base-0" in n]
        assert said == [
            "trial base-0 has waited over a budget for a node that can run it "
            "(the [resources] of farm.toml, the Ray cluster's nodes)"
        ]
        assert "1 unplaced" in d.view.text()
    finally:
        d.shutdown(timeout_s=2)
        store.close()
