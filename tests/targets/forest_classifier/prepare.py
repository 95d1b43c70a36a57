"""Fixed data and split for the classifier repo (two noisy interleaved half-moons)."""

import math
import random


def load_data():
    rng = random.Random(7)
    X, y = [], []
    for i in range(240):
        label = i % 2
        a = rng.uniform(0, math.pi)
        x0 = math.cos(a) if label == 0 else 1 - math.cos(a)
        x1 = math.sin(a) if label == 0 else 0.5 - math.sin(a)
        X.append([x0 + rng.gauss(0, 0.25), x1 + rng.gauss(0, 0.25), rng.gauss(0, 1)])
        y.append(label)
    return X[:160], X[160:], y[:160], y[160:]
