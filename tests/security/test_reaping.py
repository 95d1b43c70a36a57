"""Nothing outlives a trial: not when its Ray worker dies, not when `farm run` dies.

A real `farm run` (its own local Ray) runs a target whose training never ends; the test
kills, from outside, first the Ray worker that runs the trial, then the driver, and
each time looks for the training process on the host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from attacks import survivors
from helpers import MakeTarget

ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, condition, within_s: float) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < end, f"{what} within {within_s:.0f} s"
        time.sleep(0.1)


def ray_worker_of(pid: int) -> int:
    """The Ray worker process above `pid` (its title starts with `ray::`)."""
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if cmdline.startswith(b"ray::"):
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError("no Ray worker above the training process")


def test_training_dies_with_its_worker_and_with_the_driver(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    word = f"farm-endless-{uuid.uuid4().hex[:10]}"
    train = (
        "import os, sys\n"
        "LR = 0.5\n"
        "os.execv(sys.executable, "
        f'[sys.executable, "-c", "import time; time.sleep(900)", "{word}"])\n'
    )
    target = make_target(
        {"train.py": train},
        toml='editable = ["train.py"]\ncommand = "python3 train.py"\nmetric = "loss"\n'
        'budget_s = 600\n[sandbox]\nisolation = "strict"\n',
    )
    env = {**os.environ, "FARM_CACHE_DIR": str(tmp_path / "cache")}
    driver = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "run", str(target), "--slots", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for("the first trial started", lambda: survivors(word), 90)
        (trial,) = survivors(word)
        os.kill(ray_worker_of(trial), signal.SIGKILL)
        wait_for("the trial died with its worker", lambda: trial not in survivors(word), 15)
        # An infrastructure failure: the dispatcher runs the trial again.
        wait_for("the trial ran again", lambda: survivors(word), 90)
        driver.kill()
        driver.wait()
        wait_for("the trial died with the driver", lambda: not survivors(word), 30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for pid in survivors(word):
            os.kill(pid, signal.SIGKILL)
