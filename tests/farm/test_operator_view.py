"""What an operator sees and gets when the cluster changes under a campaign: a stop by
SIGTERM while trials run, a node lost under the trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import TOY_TOML, TOY_TRAIN, MakeTarget

from farm.records import TrialState
from farm.store import default_url, open_store

ROOT = Path(__file__).resolve().parents[2]
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
