"""A mixed fleet: re-runs placed on the class their reference ran on, or anywhere.

    .venv/bin/python scripts/bench/fleet.py [--seeds 3] [--fleets 4090:12,h100:4:-1 ...]

Each fleet runs `farm simulate`'s campaign (the real controller and store on a virtual
clock) three ways on the same seeds: re-runs (confirmations, rebase runs, an incumbent's
measuring runs) placed as the dispatcher asks Ray to (a slot of their reference's class
while one is free), placed anywhere (`--anywhere`), and with the classes hidden from the
rule (`--blind`). Per way, medians over the seeds: the share of re-runs that ran on their
reference's class, the share of all runs the rule had to leave out (on a class the baseline
did not run on twice), slot time per candidate, time to the target, keeps and false keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

from farm.cli import _fleet
from farm.simulate import CAMPAIGN, SimModel, Simulation
from farm.trials import RERUNS

WAYS = ("placed", "anywhere", "blind")


def one(model: SimModel, way: str) -> dict[str, float]:
    model = dataclasses.replace(model, anywhere=way == "anywhere", blind=way == "blind")
    with tempfile.TemporaryDirectory(prefix="farm-fleet-") as tmp:
        sim = Simulation(model, Path(tmp))
        try:
            result = sim.run()
            offsets = sim.controller.evidence.offsets()
            ran = [t for t in sim.store.list_trials(CAMPAIGN) if t.result and t.result.metric]
        finally:
            sim.close()
    reruns = [t for t in ran if t.kind in RERUNS and t.prefer]
    return {
        "on ref. class": (
            sum(t.result is not None and t.result.hardware == t.prefer for t in reruns)
            / len(reruns)
            if reruns
            else float("nan")
        ),
        "left out": sum(t.result is not None and t.result.hardware not in offsets for t in ran)
        / max(len(ran), 1),
        "budgets/cand.": result.budgets_per_candidate,
        "to target (h)": (result.reached_s or float("nan")) / 3600,
        "kept": result.kept,
        "false keeps": result.false_keeps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--fleets", nargs="+", default=["4090:12,h100:4:-1", "4090:14,h100:2:-1"], type=str
    )
    ap.add_argument("--repeats", type=int, default=0, help="[merge] repeats (0: the default)")
    args = ap.parse_args()
    cols = "on ref. class | left out | budgets/cand. | to target (h) | kept | false keeps"
    print(f"| fleet | re-runs | {cols} |\n|---|---|" + "---:|" * 6)
    for text in args.fleets:
        fleet = _fleet(text)
        model = SimModel(slots=sum(n for _, n, _ in fleet), fleet=fleet, constants=64)
        if args.repeats:
            model = dataclasses.replace(
                model, merge=dataclasses.replace(model.merge, repeats=args.repeats)
            )
        for way in WAYS:
            rows = [one(dataclasses.replace(model, seed=s), way) for s in range(args.seeds)]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            share = med["on ref. class"]
            print(
                f"| {text} | {way} | {'—' if share != share else f'{share:.0%}'} | "
                f"{med['left out']:.1%} | "
                f"{med['budgets/cand.']:.2f} | {med['to target (h)']:.2f} | {med['kept']:.0f} | "
                f"{med['false keeps']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
