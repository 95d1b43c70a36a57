"""The fewest trials per no-effect candidate that any stopping boundaries on the mean of a
candidate's runs can reach at given error rates, in an idealised campaign.

    .venv/bin/python scripts/bench/boundaries.py [--n 100000] [--baseline 12] [--confirm 4]

How far farm's rule (`farm.merge.sequential`: its bars drawn from a few z-values, an
`effect` and `power_z`) is from the best any rule of its kind can do. A run's metric is
the candidate's true gain (in σ) plus N(0, 1); σ and the incumbent's level are estimated
from `--baseline` runs; the screen and `--confirm` confirmations at most. After run n the
mean improvement of all the runs, in standard errors sqrt(1/n + 1/baseline) of the
estimated σ, is discarded at or below lo[n], kept beyond hi[n] (never on the screen
alone), else run again; lo = hi at the last. A random search over every lo and hi, from
farm's defaults and from a higher screen bar, finds the cheapest at 0σ for each of GOALS
(merge_quality.py's goals, and the same with a margin): at most that share of no-effect
changes kept, at least that share of 2σ gains. Needs numpy (Ray installs it).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from farm.config import MergeConfig
from farm.merge import widened

DEFAULTS = MergeConfig()
GOALS = ((0.05, 0.90), (0.043, 0.91))  # (false keeps at most, 2σ kept at least)


def draws(gain: float, n: int, base: int, stages: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's mean improvement after each run, and its standard error's scale."""
    rng = np.random.default_rng([seed, round(gain * 100), base])
    baseline = rng.standard_normal((n, base))
    runs = gain + rng.standard_normal((n, stages)) - baseline.mean(1)[:, None]
    looks = np.arange(1, stages + 1)
    means = np.cumsum(runs, axis=1) / looks
    return means / baseline.std(1, ddof=1)[:, None], np.sqrt(1 / looks + 1 / base)


def decide(d: tuple[np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """(share kept, mean runs) with bars lo, hi in standard errors after each run."""
    means, se = d
    t = means / se
    alive = np.ones(len(t), bool)
    kept = np.zeros(len(t), bool)
    runs = np.zeros(len(t))
    for n in range(t.shape[1]):
        runs[alive] = n + 1
        keep = alive & (t[:, n] > hi[n])
        kept |= keep
        alive &= ~keep & (t[:, n] > lo[n])
    return float(kept.mean()), float(runs.mean())


def farms(m: MergeConfig, base: int, stages: int) -> tuple[np.ndarray, np.ndarray]:
    """farm's bars (`sequential`'s) for `base` baseline runs, in standard errors."""
    w = lambda z: widened(z, base - 1)  # noqa: E731
    se = np.sqrt(1 / np.arange(1, stages + 1) + 1 / base)
    lo = np.maximum(w(m.futility_z), (m.effect - w(m.power_z) * se) / se)
    lo[0] = w(m.screen_z)
    hi = np.full(stages, w(m.efficacy_z))
    hi[0] = math.inf
    lo[-1] = hi[-1] = w(m.z)
    return lo, hi


def search(
    null: tuple, gain: tuple, start: tuple[np.ndarray, np.ndarray], goal: tuple[float, float]
) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """The cheapest bars found from `start`: (runs at 0σ, kept at 0σ, kept at 2σ, lo, hi)."""
    rng = np.random.default_rng(1)

    def cost(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float, float]:
        k0, c0 = decide(null, lo, hi)
        k2, _ = decide(gain, lo, hi)
        return c0 + 200 * max(0.0, k0 - goal[0]) + 200 * max(0.0, goal[1] - k2), k0, k2

    lo, hi = start[0].copy(), start[1].copy()
    stages = len(lo)
    best, step = cost(lo, hi), 0.3
    for i in range(1500):
        new_lo = lo + rng.normal(0, step, stages) * (rng.random(stages) < 0.5)
        new_hi = hi + rng.normal(0, step, stages) * (rng.random(stages) < 0.5)
        new_hi[0], new_hi[-1] = math.inf, new_lo[-1]
        found = cost(new_lo, new_hi)
        if found[0] < best[0]:
            lo, hi, best = new_lo, new_hi, found
        if i % 300 == 299:
            step *= 0.6
    return decide(null, lo, hi)[1], best[1], best[2], lo, hi


def starts(base: int, stages: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """farm's bars, and the same with the screen's bar raised by 0.2 standard errors."""
    lo, hi = farms(DEFAULTS, base, stages)
    raised = lo.copy()
    raised[0] += 0.2
    return [(lo, hi), (raised, hi)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100000, help="candidates per gain")
    ap.add_argument("--baseline", type=int, default=DEFAULTS.repeats, help="baseline runs")
    ap.add_argument("--confirm", type=int, default=DEFAULTS.confirm, help="confirmations")
    args = ap.parse_args()
    stages = 1 + args.confirm
    null, gain = (draws(g, args.n, args.baseline, stages, seed=0) for g in (0.0, 2.0))
    held = [draws(g, args.n, args.baseline, stages, seed=1) for g in (0.0, 2.0)]
    print(
        "| bars | goal | kept at 0σ | kept at 2σ | trials at 0σ "
        "| held out: 0σ, 2σ, trials | lo | hi |"
    )
    print("|---|---|---:|---:|---:|---|---|---|")

    def row(name: str, goal: str, lo: np.ndarray, hi: np.ndarray) -> None:
        (k0, c0), (k2, _) = decide(null, lo, hi), decide(gain, lo, hi)
        (h0, hc), (h2, _) = decide(held[0], lo, hi), decide(held[1], lo, hi)
        bars = (" ".join(f"{x:.2f}" for x in b) for b in (lo, hi))
        print(
            f"| {name} | {goal} | {k0:.1%} | {k2:.1%} | {c0:.2f} | {h0:.1%}, {h2:.1%}, {hc:.2f} "
            f"| {next(bars)} | {next(bars)} |",
            flush=True,
        )

    row("farm's defaults", "", *farms(DEFAULTS, args.baseline, stages))
    for fk, power in GOALS:
        goal = f"≤ {fk:.1%}, ≥ {power:.0%}"
        best = min(
            (search(null, gain, start, (fk, power)) for start in starts(args.baseline, stages)),
            key=lambda r: r[0] + 200 * max(0.0, r[1] - fk) + 200 * max(0.0, power - r[2]),
        )
        row("searched", goal, best[3], best[4])


if __name__ == "__main__":
    main()
