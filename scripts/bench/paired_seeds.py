"""Do common random numbers help on a real target? Paired vs unpaired differences on eCLIP.

    .venv/bin/python scripts/bench/paired_seeds.py [--seeds 8] [--parallel 2]

Runs examples/eclip's train.py unchanged and with small edits of the kind a proposer
drafts, each with the same `--seeds` farm seeds (FARM_SEED), and prints, per edit, how
the difference to the unchanged code varies when each run is paired with the unchanged
run of its seed (common random numbers) and when it is not. Pairing pays where
var(paired difference) < var(edit) + var(unchanged), i.e. where runs of one seed stay
correlated across the edit (ρ > 0): farm's `[merge] paired` gates screens on their paired
gaps only where the campaign's own screens show that (docs/performance.md#paired-seeds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from farm.trials import trial_seed
from workers.metric import parse_metric

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eclip"
EDITS = {  # name: (search, replace) in train.py; small changes first, then the planted fix
    "unchanged": ("", ""),
    "LR 3e-3→3.5e-3": ("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3.5e-3"),
    "WD 0.05→0.1": ("WEIGHT_DECAY = 0.05", "WEIGHT_DECAY = 0.1"),
    "warmup 0.2→0.15": ("WARMUP_FRAC = 0.2", "WARMUP_FRAC = 0.15"),
    "heatmap 1.0→1.5": ("HEATMAP_WEIGHT = 1.0", "HEATMAP_WEIGHT = 1.5"),
    "clamp 0.5→1.0": ("LOGIT_SCALE_MAX = 0.5", "LOGIT_SCALE_MAX = 1.0"),
}


def variant(root: Path, name: str) -> Path:
    search, replace = EDITS[name]
    where = root / str(list(EDITS).index(name))
    shutil.copytree(EXAMPLE, where, ignore=shutil.ignore_patterns("__pycache__", ".farm"))
    if search:
        train = where / "train.py"
        text = train.read_text()
        assert text.count(search) == 1, f"{search!r} is not in train.py once"
        train.write_text(text.replace(search, replace))
    return where


def run(where: Path, seed: int) -> float:
    env = {**os.environ, "FARM_SEED": str(seed), "FARM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "train.py"], cwd=where, env=env, capture_output=True, text=True
    )
    value = parse_metric(out.stdout, name="mean_rank")
    if out.returncode or value is None:
        raise RuntimeError(f"{where.name} seed {seed}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    args = ap.parse_args()
    seeds = [trial_seed(f"paired/base-{i}") for i in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: variant(Path(tmp), name) for name in EDITS}
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            jobs = {(n, s): pool.submit(run, d, s) for n, d in dirs.items() for s in seeds}
            got = {key: job.result() for key, job in jobs.items()}
    base = [got["unchanged", s] for s in seeds]
    print(f"examples/eclip, {len(seeds)} seeds, mean_rank (lower is better)\n")
    print(
        "| edit | mean | sd | ρ with unchanged | sd of paired diff. | sd of unpaired diff. "
        "| variance ratio paired/unpaired |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in EDITS:
        vals = [got[name, s] for s in seeds]
        sd = statistics.stdev(vals)
        if name == "unchanged":
            print(f"| {name} | {statistics.mean(vals):.3f} | {sd:.3f} | | | | |")
            continue
        rho = statistics.correlation(base, vals)
        paired = statistics.stdev([v - b for v, b in zip(vals, base, strict=True)])
        unpaired = math.sqrt(sd * sd + statistics.variance(base))
        print(
            f"| {name} | {statistics.mean(vals):.3f} | {sd:.3f} | {rho:+.2f} | {paired:.3f} "
            f"| {unpaired:.3f} | {paired * paired / (unpaired * unpaired):.2f} |"
        )
    print("\nraw runs (seed: " + ", ".join(str(s) for s in seeds) + ")")
    for name in EDITS:
        print(f"  {name}: " + ", ".join(f"{got[name, s]:.3f}" for s in seeds))


if __name__ == "__main__":
    main()
