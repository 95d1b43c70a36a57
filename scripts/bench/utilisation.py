"""Slot utilisation on a real local Ray cluster: steady-state backlog vs synchronous rounds.

    .venv/bin/python scripts/bench/utilisation.py [--slots 4,8,16] [--trial 10] [--llm 2.5]

A whole `farm run` (farm.campaign.run: the real proposer thread, dispatcher, controller,
SQLite store and sandbox) per setting, on a target whose training sleeps `--trial`
seconds and prints a loss that depends on its constants (a known optimum plus seeded
noise), so the merge rule has real work to do. The proposer is `mutate` behind an
injected LLM-like latency of `--llm` seconds per call (default: a quarter of a trial).

Busy slot-seconds are the training processes' own run times (their start and exit
timestamps from the worker), counted inside the steady-state window: from one trial
length after the first process started (the ramp-up) to the moment the last candidate was
created (after it, the farm only drains). Utilisation = busy ÷ (slots × window).
`backlog` is farm's default (the proposer refills a backlog while trials run); `rounds`
asks for a batch of `slots` drafts only once every candidate of the last batch is decided.
Goal: ≥ 95% steady-state at 16 slots.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import subprocess
import tempfile
import time
from pathlib import Path

import ray

from farm.campaign import RunOptions, prepare, run
from farm.config import load_config
from farm.gitops import Repo
from farm.records import Draft, TrialState
from farm.store.sqlite import SQLiteStore
from proposer.base import ProposalContext, Proposer
from proposer.mutate import MutateProposer

GOAL = 0.95
KNOBS = 24


def train_py(trial_s: float, seed: int) -> str:
    """Sleeps like training, then prints a loss with a known optimum plus seeded noise."""
    rng = random.Random(seed)
    optima = {f"K{i:02d}": 2.0 ** rng.choice((-2, -1, 1, 2)) for i in range(KNOBS)}
    knobs = "\n".join(f"{name} = 1.0  # a knob" for name in optima)
    return f"""import math, os, random, time
{knobs}
SLEEP_S = {trial_s}  # farm: frozen (the training time)
_OPT = {optima!r}
time.sleep(SLEEP_S)
noise = random.Random(int(os.environ.get("FARM_SEED", "0"))).gauss(0.0, 0.3)
loss = sum((math.log2(globals()[k]) - math.log2(v)) ** 2 for k, v in _OPT.items()) + noise
print("---")
print(f"loss: {{loss:.6f}}")
"""


def make_target(root: Path, *, trial_s: float, schedule: str, batch: int, backlog: int) -> None:
    root.mkdir(parents=True)
    (root / "train.py").write_text(train_py(trial_s, seed=0))
    (root / "prepare.py").write_text("# FIXED\n")
    (root / "program.md").write_text("Lower the loss.\n")
    (root / "farm.toml").write_text(
        'editable = ["train.py"]\nprotected = ["prepare.py"]\ncommand = "python3 train.py"\n'
        f'metric = "loss"\nbudget_s = {trial_s * 4}\n\n[metrics]\nenabled = false\n\n'
        f'[proposer]\nschedule = "{schedule}"\nbatch_size = {batch}\nbacklog = {backlog}\n'
    )
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "base"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)


class SlowMutate(Proposer):
    """`mutate` that takes as long as an LLM call."""

    name = "mutate"

    def __init__(self, latency_s: float) -> None:
        self.inner = MutateProposer(seed=0)
        self.latency_s = latency_s

    def propose(self, ctx: ProposalContext, n: int) -> list[Draft]:
        time.sleep(self.latency_s)
        return self.inner.propose(ctx, n)


def measure(tmp: Path, *, slots: int, schedule: str, trial_s: float, llm_s: float) -> dict:
    batch = slots if schedule == "rounds" else max(4, slots // 2)
    backlog = 0 if schedule == "rounds" else slots
    target = tmp / f"{schedule}-{slots}"
    make_target(target, trial_s=trial_s, schedule=schedule, batch=batch, backlog=backlog)
    cfg = load_config(target)
    store = SQLiteStore(target / ".farm" / "farm.db")
    prepare(target, cfg, store, check_command=True)
    out = io.StringIO()
    started = time.time()
    code = run(
        store=store,
        repo=Repo(target),
        cfg=cfg,
        proposer=SlowMutate(llm_s),
        opts=RunOptions(slots=slots, max_candidates=4 * slots, progress_every_s=1e9),
        out=out,
    )
    wall = time.time() - started
    assert code == 0, out.getvalue()
    trials = [t for t in store.list_trials(cfg.campaign) if t.state is TrialState.DONE]
    spans = [(t.result.process_started_at, t.result.process_ended_at) for t in trials if t.result]
    first = min(s for s, _ in spans)
    last_cand = max(c.created_at for c in store.list_candidates(cfg.campaign))
    lo, hi = first + trial_s, last_cand
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in spans)
    whole = sum(e - s for s, e in spans)
    store.close()
    return {
        "slots": slots,
        "schedule": schedule,
        "batch": batch,
        "backlog": backlog,
        "trials": len(trials),
        "wall": wall,
        "window": hi - lo,
        "steady": busy / (slots * (hi - lo)) if hi > lo else math.nan,
        "overall": whole / (slots * wall),
        "per_slot_hour": len(trials) / (slots * wall / 3600),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", default="4,8,16")
    ap.add_argument("--trial", type=float, default=10.0, help="seconds each trial trains")
    ap.add_argument("--llm", type=float, default=None, help="seconds per proposer call")
    ap.add_argument("--schedules", default="backlog,rounds")
    args = ap.parse_args()
    llm = args.llm if args.llm is not None else args.trial / 4
    slot_counts = [int(s) for s in args.slots.split(",")]
    ray.init(
        address="local",
        num_cpus=max(slot_counts),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="farm-util-") as tmp:
        for slots in slot_counts:
            for schedule in args.schedules.split(","):
                rows.append(
                    measure(
                        Path(tmp), slots=slots, schedule=schedule, trial_s=args.trial, llm_s=llm
                    )
                )
                r = rows[-1]
                print(
                    f"  {schedule} {slots} slots: {r['steady']:.1%} steady over "
                    f"{r['window']:.0f} s, {r['trials']} trials",
                    flush=True,
                )
    ray.shutdown()
    print()
    print(
        f"trials sleep {args.trial:g} s; proposer calls take {llm:g} s; "
        "4 × slots candidates per run; merge defaults"
    )
    print()
    print(
        "| slots | schedule | batch | backlog | trials | wall (s) | steady window (s) "
        "| steady-state utilisation | whole-run utilisation | trials / slot-hour |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['slots']} | {r['schedule']} | {r['batch']} | {r['backlog']} | {r['trials']} "
            f"| {r['wall']:.0f} | {r['window']:.0f} | {r['steady']:.1%} | {r['overall']:.1%} "
            f"| {r['per_slot_hour']:.0f} |"
        )
    top = max(slot_counts)
    at_top = next(r for r in rows if r["slots"] == top and r["schedule"] == "backlog")
    verdict = "PASS" if at_top["steady"] >= GOAL else "FAIL"
    print()
    print(
        f"verdict: {verdict}: steady-state utilisation {at_top['steady']:.1%} at {top} slots "
        f"with the backlog (goal ≥ {GOAL:.0%})"
    )


if __name__ == "__main__":
    main()
