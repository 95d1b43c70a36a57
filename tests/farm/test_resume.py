"""Kill `farm run` with SIGKILL mid-campaign, run it again: nothing lost, nothing twice."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import MakeTarget

from farm.records import CandidateState, TrialState
from farm.store import default_url, open_store

SLOW_TRAIN = """\
import os
import random
import time

LR = 0.5  # the loss is lowest at LR = 2
WD = 0.1  # a second knob that does nothing

time.sleep(1.5)  # long enough to be killed mid-trial
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
print(f"loss: {(LR - 2.0) ** 2 + rng.gauss(0, 0.05):.6f}")
"""


def farm_run(target: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "run", str(target), "--slots", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the driver and the Ray it started die together
    )


def test_sigkill_then_rerun_loses_nothing_and_counts_nothing_twice(
    make_target: MakeTarget,
) -> None:
    # Three baseline runs, not the default twelve: the slow trials are what this test kills.
    target = make_target({"train.py": SLOW_TRAIN}, extra_toml="[merge]\nrepeats = 3\n")
    first = farm_run(target, "--max-candidates", "6")
    store = open_store(default_url(target))
    deadline = time.time() + 120
    # Kill it once some trials are done and others are running.
    while time.time() < deadline:
        if store.get_campaign("default") is not None:
            counts = store.count_trials("default")
            if counts[TrialState.DONE] >= 4 and counts[TrialState.RUNNING] >= 1:
                break
        time.sleep(0.2)
    else:
        first.kill()
        raise AssertionError(f"campaign never got going:\n{first.communicate()[0]}")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert store.count_trials("default")[TrialState.RUNNING] >= 1  # orphaned by the kill

    second = farm_run(target, "--max-candidates", "6")
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, out
    assert "resuming:" in out

    trials = store.list_trials("default")
    assert all(t.state is TrialState.DONE and t.result is not None for t in trials), out
    assert len({t.id for t in trials}) == len(trials)
    cands = store.list_candidates("default")
    assert len(cands) == 6
    decisions = store.list_decisions("default")
    assert collections.Counter(d.candidate_id for d in decisions) == {c.id: 1 for c in cands}
    assert all(c.state.is_finished() for c in cands)
    # One screening trial per candidate (plus confirmations), one baseline set.
    screens = collections.Counter(t.candidate_id for t in trials if t.id.endswith("-screen"))
    assert all(n == 1 for n in screens.values())
    assert sum(1 for t in trials if t.candidate_id is None) == 3
    assert any(c.state is CandidateState.KEPT for c in cands), out
    store.close()
