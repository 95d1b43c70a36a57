"""Bundled datasets and the scoring for the line fit."""

import random
import sys

DATASETS = {"line": (2.5, -1.0, 0.3)}  # slope, intercept, noise


def load(name="line"):
    slope, intercept, noise = DATASETS[name]
    rng = random.Random(7)
    xs = [i / 20 for i in range(60)]
    ys = [slope * x + intercept + rng.gauss(0, noise) for x in xs]
    return (xs[::2], ys[::2]), (xs[1::2], ys[1::2])


def mse(ys, preds):
    return sum((y - p) ** 2 for y, p in zip(ys, preds)) / len(ys)


if __name__ == "__main__" and "--list" in sys.argv:
    print("\n".join(DATASETS))
