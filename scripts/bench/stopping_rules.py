"""Stopping rules in an idealised model of the merge rule: today's group-sequential design
against a sequential probability ratio test (SPRT) on all of a candidate's runs.

    python3 scripts/bench/stopping_rules.py [--n 60000] [--baseline 12]

Not farm's code: a model of it, to choose the next rule before building it. A run's metric
is the candidate's true gain (in units of σ) plus N(0, 1); σ and the incumbent's level are
estimated from `--baseline` runs (so both are off, as in a campaign); five runs at most.

- gsd (farm's defaults: `farm.merge.sequential`): the screen earns confirmations beyond
  screen_z = 0.25 standard errors and is then set aside (it passed a gate, so it is biased);
  the confirmations alone are judged after each one: discarded below futility_z = 0, kept
  beyond efficacy_z = 2.5 (two or more), judged against z = 1.5 after the fourth.
- sprt: Wald's test of "no gain" against "a gain of EFFECT σ" on the mean of all runs, the
  screen included (the boundaries account for the looks): kept once the log likelihood
  ratio passes KEEP (never on the screen alone), discarded below DROP, and after the fifth
  run kept if the mean is past EFFECT/2.

scripts/bench/merge_quality.py measures farm's own rule (within 0.3 points and 0.02 trials of
this model's gsd row: 4.1% false keeps, 90.6% at 2σ, 1.91 trials).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable

BASELINE = 12  # [merge] repeats (--baseline)
STAGES = 5  # the screen and confirm = 4
EFFECT, KEEP, DROP = 2.0, 2.5, -1.2

Rule = Callable[[float, random.Random, int], tuple[bool, int]]


def estimates(rng: random.Random, base: int) -> tuple[float, float]:
    """The incumbent's error and σ's estimate (as a share of σ), from `base` baseline runs."""
    error = rng.gauss(0, math.sqrt(1 / base))
    sigma = math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(base - 1)) / (base - 1))
    return error, sigma


def gsd(gain: float, rng: random.Random, base: int) -> tuple[bool, int]:
    error, sigma = estimates(rng, base)
    screen = (rng.gauss(gain, 1) + error) / sigma
    if screen / math.sqrt(1 + 1 / base) <= 0.25:
        return False, 1
    runs: list[float] = []
    for k in range(1, STAGES):
        runs.append(rng.gauss(gain, 1))
        z = (sum(runs) / k + error) / sigma / math.sqrt(1 / k + 1 / base)
        if k == STAGES - 1:
            return z >= 1.5, 1 + k
        if k >= 2 and z >= 2.5:
            return True, 1 + k
        if z < 0:
            return False, 1 + k
    raise AssertionError("unreachable")


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
