"""Stopping rules in an idealised campaign: farm's group-sequential rule against a sequential
probability ratio test (SPRT) on all of a candidate's runs.

    .venv/bin/python scripts/bench/stopping_rules.py [--n 60000] [--baseline 12]

An idealised campaign, to choose the next rule before building it: a run's metric is the
candidate's true gain (in units of σ) plus N(0, 1); σ and the incumbent's level are
estimated from `--baseline` runs (so both are off, as in a campaign); the screen and
`[merge] confirm` confirmations at most.

- gsd: farm's rule itself, `farm.merge.sequential` with farm's defaults, after each run:
  the screen earns confirmations beyond screen_z standard errors; after each confirmation
  all the runs, the screen included, are judged: kept beyond efficacy_z, discarded below
  futility_z or power_z standard errors short of a gain of `effect` σ, judged against z
  after the last; every bar as a Student t's with the baseline's `repeats` − 1 degrees of
  freedom (σ is estimated).
- sprt (a model, not farm's code: the rule that might replace it): Wald's test of "no
  gain" against "a gain of EFFECT σ" on the mean of all runs, the screen included (the
  boundaries account for the looks): kept once the log likelihood ratio passes KEEP (never
  on the screen alone), discarded below DROP, and after the last run kept if the mean is
  past EFFECT/2.

scripts/bench/merge_quality.py measures the same rule on farm's seeds and trial ids, with
the baseline's σ and level taken from real runs rather than drawn as their errors here.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable

from farm.config import MergeConfig
from farm.merge import sequential
from farm.records import Direction

DEFAULTS = MergeConfig()
BASELINE = DEFAULTS.repeats  # --baseline
STAGES = 1 + DEFAULTS.confirm  # the screen and the confirmations
EFFECT, KEEP, DROP = 2.0, 2.5, -1.2

Rule = Callable[[float, random.Random, int], tuple[bool, int]]


def estimates(rng: random.Random, base: int) -> tuple[float, float]:
    """The incumbent's error and σ's estimate (as a share of σ), from `base` baseline runs."""
    error = rng.gauss(0, math.sqrt(1 / base))
    sigma = math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(base - 1)) / (base - 1))
    return error, sigma


def gsd(gain: float, rng: random.Random, base: int) -> tuple[bool, int]:
    error, sigma = estimates(rng, base)
    m = MergeConfig(repeats=base)
    runs: list[float] = []
    while True:
        runs.append(rng.gauss(gain, 1))  # an improvement: the incumbent's level is −error
        keep, _ = sequential(
            runs,
            m=m,
            stages=STAGES,
            incumbent=-error,
            incumbent_runs=base,
            sigma=sigma,
            direction=Direction.MAXIMIZE,
        )
        if keep is not None:
            return keep, len(runs)


def sprt(gain: float, rng: random.Random, base: int) -> tuple[bool, int]:
    error, sigma = estimates(rng, base)
    total = 0.0
    for n in range(1, STAGES + 1):
        total += rng.gauss(gain, 1)
        mean = (total / n + error) / sigma
        llr = (EFFECT * mean - EFFECT**2 / 2) / (1 / n + 1 / base)
        if llr >= KEEP and n >= 2:
            return True, n
        if llr <= DROP:
            return False, n
    return mean > EFFECT / 2, STAGES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60000, help="candidates per rule and gain")
    ap.add_argument("--baseline", type=int, default=BASELINE, help="baseline runs")
    args = ap.parse_args()
    rng = random.Random(5)
    gains = (0, 1, 2, 3)
    head = " | ".join(f"kept at {g}σ | trials at {g}σ" for g in gains)
    print(f"| rule | {head} |\n|---|" + "---:|" * 2 * len(gains))
    rules: dict[str, Rule] = {"gsd": gsd, "sprt": sprt}
    for name, rule in rules.items():
        cells = []
        for g in gains:
            runs = [rule(g, rng, args.baseline) for _ in range(args.n)]
            cells.append(f"{sum(k for k, _ in runs) / args.n:.1%}")
            cells.append(f"{sum(n for _, n in runs) / args.n:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
