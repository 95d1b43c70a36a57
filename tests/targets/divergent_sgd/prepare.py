"""Data for the benchmark: a fixed, noisy linear regression problem. Do not edit."""

import random


def load():
    """(train_x, train_y, val_x, val_y), the same every run."""
    rng = random.Random(1234)
    true_w = [0.5, -1.0, 2.0, 0.3]
    xs = [[rng.gauss(0, 1) for _ in true_w] for _ in range(256)]
    ys = [sum(a * b for a, b in zip(x, true_w)) + rng.gauss(0, 0.3) for x in xs]
    return xs[:192], ys[:192], xs[192:], ys[192:]


def val_loss(w, xs, ys):
    return sum((sum(a * b for a, b in zip(x, w)) - y) ** 2 for x, y in zip(xs, ys)) / len(ys)
