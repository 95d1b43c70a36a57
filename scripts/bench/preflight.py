"""Slot time a pre-flight saves, and what it costs, on a campaign where most drafts fail.

    .venv/bin/python scripts/bench/preflight.py [--preflight 0,2] [--step 1.0]

A real campaign (local Ray, 2 slots, SQLite, replay proposer) on a toy target that trains
for 6 steps of `--step` seconds (a sleep: slot time, not CPU) and prints a training loss
each step (flushed), once per `preflight_s`. The same 9 drafts each time: 3 that work and
one of each way a draft fails (at import, at setup, at the first step, NaN from the first
step on while training goes on, at the end of training, never finishing). Slot-seconds
are the training processes' own durations, summed per draft (farm's per-trial overhead,
about 0.2-0.4 s a trial here, comes on top: docs/performance.md#per-trial-overhead).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import ray

from farm.campaign import RunOptions, prepare, run
from farm.config import load_config
from farm.gitops import Repo
from farm.records import TrialKind
from farm.store import default_url, open_store
from proposer.registry import make_proposer

TRAIN = """\
import os
import random
import time

LR = 0.5  # the loss is lowest at LR = 2 ...
WD = 0.1  # ... WD = 0.3 ...
BETA = 0.5  # ... and BETA = 0.9
SCALE = 1.0  # the loss's scale (a NaN here diverges)
STEPS = 6
STEP_S = {step}  # one step's training time

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
gap = (LR - 2.0) ** 2 + (WD - 0.3) ** 2 + (BETA - 0.9) ** 2
for step in range(STEPS):
    time.sleep(STEP_S)
    train_loss = SCALE * gap * (1 + 1 / (step + 1)) + rng.gauss(0, 0.05)
    print(f"train_loss: {{train_loss:.4f}}", flush=True)
loss = SCALE * gap + rng.gauss(0, 0.05)
print("---")
print(f"loss: {{loss:.6f}}")
"""

DRAFTS = [  # (title, what it is, search, replace): each on a line of its own
    ("LR 1.5", "works", "LR = 0.5", "LR = 1.5"),
    ("WD 0.3", "works", "WD = 0.1", "WD = 0.3"),
    ("BETA 0.8", "works", "BETA = 0.5", "BETA = 0.8"),
    ("typo", "crashes at import", "import random", "import randon"),
    ("bad steps", "crashes at setup", "STEPS = 6", 'STEPS = int("six")'),
    ("1/step", "crashes at step 1", "(1 + 1 / (step + 1))", "(1 + 1 / step)"),
    ("NaN scale", "NaN from step 1, trains on", "SCALE = 1.0", 'SCALE = float("nan")'),
    ("eval OOM", "crashes at the end", 'print("---")', 'raise MemoryError("eval")'),
    ("stuck", "never finishes", "time.sleep(STEP_S)", "time.sleep(100 * STEP_S)"),
]


def make_target(root: Path, *, step: float, preflight_s: float) -> None:
    root.mkdir()
    drafts = [
        {"title": t, "hypothesis": what, "edits": [{"path": "train.py", "search": s, "replace": r}]}
        for t, what, s, r in DRAFTS
    ]
    files = {
        "train.py": TRAIN.format(step=step),
        "prepare.py": "# FIXED: evaluation\n",
        "program.md": "Lower the loss.\n",
        "drafts.jsonl": "".join(json.dumps(d) + "\n" for d in drafts),
        "farm.toml": f"""\
editable = ["train.py"]
protected = ["prepare.py"]
command = "python3 train.py"
metric = "loss"
budget_s = {round(15 * step)}

[merge]
repeats = 3
confirm = 1
preflight_s = {preflight_s}

[sandbox]
grace_s = 1

[proposer]
kind = "replay"
replay_file = "drafts.jsonl"
batch_size = 9
backlog = 9
""",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "base"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)


def campaign(root: Path) -> dict[str, object]:
    cfg = load_config(root)
    store = open_store(default_url(root))
    prepare(root, cfg, store, check_command=True)
    started = time.monotonic()
    code = run(
        store=store,
        repo=Repo(root),
        cfg=cfg,
        proposer=make_proposer(cfg.proposer, target=root),
        opts=RunOptions(slots=2, progress_every_s=1e9),
        out=io.StringIO(),
    )
    wall = time.monotonic() - started
    assert code == 0
    cands = {c.id: c for c in store.list_candidates("default")}
    per: dict[str, dict[str, object]] = {
        c.title: {"s": 0.0, "trials": [], "state": c.state.value} for c in cands.values()
    }
    base_s = 0.0
    for t in store.list_trials("default"):
        d = t.result.duration_s if t.result else 0.0
        if t.candidate_id is None:
            base_s += d
            continue
        c = cands[t.candidate_id]
        row = per[c.title]
        row["s"] = float(row["s"]) + d  # type: ignore[arg-type]
        kind = "pre" if t.kind is TrialKind.PREFLIGHT else t.kind.value
        outcome = t.result.outcome.value if t.result else t.state.value
        row["trials"].append(f"{kind}:{outcome}")  # type: ignore[union-attr]
    store.close()
    return {"wall": wall, "baseline_s": base_s, "per": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preflight", default="0,2", help="preflight_s values, in step units")
    ap.add_argument("--step", type=float, default=1.0, help="seconds per training step")
    args = ap.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    found = {}
    with tempfile.TemporaryDirectory(prefix="farm-preflight-") as tmp:
        for p in [float(x) for x in args.preflight.split(",")]:
            found[p] = campaign_at(Path(tmp) / f"p{p:g}", step=args.step, preflight_s=p)
    ray.shutdown()
    cols = list(found)
    head = " | ".join(f"preflight_s = {p * args.step:g}" for p in cols)
    print(f"| draft | what it is | {head} |")
    print("|---|---|" + "---|" * len(cols))
    totals = {p: {"works": 0.0, "fails": 0.0} for p in cols}
    for title, what, _, _ in DRAFTS:
        cells = []
        for p in cols:
            row = found[p]["per"][title]  # type: ignore[index]
            s = float(row["s"])
            totals[p]["works" if what == "works" else "fails"] += s
            ran = ", ".join(row["trials"]) or "no trial"  # type: ignore[arg-type]
            cells.append(f"{s:.1f} s, {row['state']} ({ran})")
        print(f"| {title} | {what} | " + " | ".join(cells) + " |")
    for group in ("fails", "works"):
        cells = " | ".join(f"**{totals[p][group]:.1f} s**" for p in cols)
        print(f"| all that {'fail' if group == 'fails' else 'work'} | | {cells} |")
    cells = " | ".join(
        f"{totals[p]['fails'] + totals[p]['works'] + float(found[p]['baseline_s']):.1f} s, "  # type: ignore[arg-type]
        f"wall {float(found[p]['wall']):.0f} s"  # type: ignore[arg-type]
        for p in cols
    )
    print(f"| campaign (with baseline) | | {cells} |")


def campaign_at(root: Path, *, step: float, preflight_s: float) -> dict[str, object]:
    make_target(root, step=step, preflight_s=preflight_s * step)
    return campaign(root)


if __name__ == "__main__":
    main()
