"""Per-trial overhead: what farm adds around a training process that does nothing.

    .venv/bin/python scripts/bench/overhead.py [--n 40] [--isolation strict,basic]

A real Dispatcher (one slot, so trials do not compete for the 2 CPUs) runs N trials of a
no-op target (`python3 -c "print('loss: 1.0')"`) on a local Ray cluster with a SQLite
store, once per isolation level. Each trial's path is cut at timestamps: the dispatcher's
claim, the worker's start (`started_at`), the training process's start and exit
(`process_started_at`, `process_ended_at`), the worker's end (`finished_at`) and the
dispatcher's record. The same command run N times with `subprocess.run` is the raw cost
without farm; the sandbox's own cost (bubblewrap's namespaces and mounts) is the process's
time inside farm less that.
Goal: median overhead (claim → process start, process exit → recorded, and the sandbox's
launch) ≤ 0.5 s and ≤ 1% of a 5-minute budget.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from farm.config import config_from_dict
from farm.dispatch import Dispatcher
from farm.gitops import Repo
from farm.records import Campaign, Incumbent, Trial, TrialKind, TrialResult
from farm.store.sqlite import SQLiteStore
from workers import sandbox
from workers.isolation import View, resolve

COMMAND = "python3 -c \"print('loss: 1.0')\""
BUDGET_S = 300.0
GOAL_S = 0.5


def make_target(root: Path) -> str:
    """A committed git repo holding the no-op target; returns its HEAD sha."""
    (root / "train.py").write_text("# a no-op target: the command prints the metric\n")
    (root / "prepare.py").write_text("# FIXED: evaluation\n")
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "base"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


class Stamped:
    """Wraps the store's claim and record calls to note when the dispatcher made them."""

    def __init__(self, store: SQLiteStore) -> None:
        self.claimed: dict[str, float] = {}
        self.recorded: dict[str, float] = {}
        claim, record = store.claim_trials, store.record_result

        def claim_trials(*args: Any, **kwargs: Any) -> list[Trial]:
            trials = claim(*args, **kwargs)
            now = time.time()
            self.claimed.update((t.id, now) for t in trials)
            return trials

        def record_result(campaign: str, result: TrialResult) -> bool:
            self.recorded[result.trial_id] = time.time()
            return record(campaign, result)

        store.claim_trials = claim_trials  # type: ignore[method-assign]
        store.record_result = record_result  # type: ignore[method-assign]


def run_farm(n: int, tmp: Path, isolation: str) -> list[dict[str, float]]:
    target = tmp / "target"
    target.mkdir()
    sha = make_target(target)
    cfg = config_from_dict(
        {
            "editable": ["train.py"],
            "protected": ["prepare.py"],
            "command": COMMAND,
            "metric": "loss",
            "budget_s": BUDGET_S,
            "campaign": "overhead",
            "sandbox": {"isolation": isolation},
        },
        source="overhead",
    )
    store = SQLiteStore(tmp / "farm.db")
    store.create_campaign(
        Campaign(id="overhead", target=str(target), start_sha=sha, config=cfg.to_dict()),
        Incumbent(sha=sha, files={"train.py": (target / "train.py").read_text()}),
    )
    for i in range(n):
        store.enqueue_trial(
            Trial(
                id=f"t{i:03d}",
                campaign="overhead",
                kind=TrialKind.BASELINE,
                commit_sha=sha,
                base_sha=sha,
                seed=i,
            )
        )
    stamps = Stamped(store)
    results: dict[str, TrialResult] = {}
    dispatcher = Dispatcher(
        store=store,
        repo=Repo(target),
        cfg=cfg,
        campaign="overhead",
        slots=1,
        on_result=lambda t, r: results.__setitem__(t.id, r),
    )
    while len(results) < n:
        dispatcher.step(wait_s=0.05)
    store.close()
    rows = []
    for tid, r in sorted(results.items()):
        assert r.outcome.is_ok(), f"{tid}: {r.outcome} {r.output_tail[-300:]}"
        claim, record = stamps.claimed[tid], stamps.recorded[tid]
        rows.append(
            {
                "claim → worker start": r.started_at - claim,
                "worker start → process start": r.process_started_at - r.started_at,
                "process exit → worker end": r.finished_at - r.process_ended_at,
                "worker end → recorded": record - r.finished_at,
                "before the process (claim → start)": r.process_started_at - claim,
                "after the process (exit → recorded)": record - r.process_ended_at,
                "overhead (before + after)": (r.process_started_at - claim)
                + (record - r.process_ended_at),
                "the process itself (inside farm)": r.process_ended_at - r.process_started_at,
            }
        )
    return rows


def run_raw(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(shlex.split(COMMAND), check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10)[-1]


def launch_costs(n: int, tmp: Path) -> dict[str, list[float]]:
    """Wall time of `true` bare, and through the sandbox at each level, taken in turn so
    that the machine's load falls on all alike."""
    env = {"PATH": "/usr/bin:/bin"}
    policies = {level: resolve(level, "auto") for level in ("basic", "strict")}
    times: dict[str, list[float]] = {"bare": [], **{level: [] for level in policies}}
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", "true"], check=True)
        times["bare"].append(time.perf_counter() - t0)
        for level, policy in policies.items():
            t0 = time.perf_counter()
            sandbox.run(
                "true",
                cwd=tmp,
                env=env,
                budget_s=60,
                grace_s=1,
                output_cap_bytes=1024,
                policy=policy,
                view=View(workdir=tmp, runtime=()),
            )
            times[level].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="trials per isolation level")
    ap.add_argument("--isolation", default="strict,basic", help="levels to compare")
    args = ap.parse_args()
    levels = args.isolation.split(",")

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for level in levels:
            with tempfile.TemporaryDirectory() as tmp:
                runs[level] = run_farm(args.n, Path(tmp), level)
    finally:
        ray.shutdown()
    raw = run_raw(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        launch = launch_costs(args.n, Path(tmp))

    print(f"n = {args.n} trials per level, one slot; medians (p90) in seconds")
    print()
    print("| segment | " + " | ".join(levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for key in runs[levels[0]][0]:
        cells = []
        for level in levels:
            xs = [r[key] for r in runs[level]]
            cells.append(f"{statistics.median(xs):.3f} ({p90(xs):.3f})")
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(
        f"| raw `subprocess.run` of the same command, no farm | {statistics.median(raw):.3f} "
        f"({p90(raw):.3f}) |"
    )
    print()
    print("launching `true` (taken in turn, so load falls on each alike):")
    print()
    print("| how | median | p90 | over bare |")
    print("|---|---:|---:|---:|")
    bare = statistics.median(launch["bare"])
    for how, xs in launch.items():
        med = statistics.median(xs)
        print(f"| {how} | {med:.3f} | {p90(xs):.3f} | {med - bare:+.3f} |")
    print()
    for level in levels:
        # The median hides the cold trial: it builds the git bundle and the node's cache repo.
        rows = runs[level]
        around = statistics.median(r["overhead (before + after)"] for r in rows)
        total = around + statistics.median(launch[level]) - bare
        ok = total <= GOAL_S and total / BUDGET_S <= 0.01
        print(
            f"{level}: {'PASS' if ok else 'FAIL'}: median overhead {total:.3f} s per trial "
            f"({around:.3f} s around the process + {total - around:.3f} s launching the "
            f"sandbox; goal ≤ {GOAL_S} s), {total / BUDGET_S:.2%} of a 5-minute budget "
            f"(goal ≤ 1%); first (cold) trial {rows[0]['overhead (before + after)']:.3f} s "
            "around the process"
        )


if __name__ == "__main__":
    main()
