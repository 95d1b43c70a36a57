"""
Fixed data and evaluation for the tiny-MLP autoresearch repo. Read-only for the agent:
the spirals, the split and the loss that every experiment is measured by.
"""

import math
import random

NUM_TRAIN = 200
NUM_VAL = 200


def _spiral(n, rng):
    X, y = [], []
    for i in range(n):
        label = i % 2
        r = rng.uniform(0.1, 1.0)
        a = 3.0 * r + math.pi * label
        X.append([r * math.cos(a) + rng.gauss(0, 0.05), r * math.sin(a) + rng.gauss(0, 0.05)])
        y.append(label)
    return X, y


def load_data():
    rng = random.Random(31337)
    return _spiral(NUM_TRAIN, rng), _spiral(NUM_VAL, rng)


def evaluate_loss(predict):
    """Mean cross-entropy of predict(x) -> P(label 1) on the validation spirals."""
    _, (X, y) = load_data()
    total = 0.0
    for x, t in zip(X, y):
        p = min(max(predict(x), 1e-7), 1 - 1e-7)
        total -= t * math.log(p) + (1 - t) * math.log(1 - p)
    return total / len(y)
