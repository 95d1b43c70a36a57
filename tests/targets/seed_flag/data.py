"""A noisy linearly separable set and its held-out split."""

import random


def load():
    rng = random.Random(11)
    rows = []
    for _ in range(120):
        x = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        label = x[0] + 0.5 * x[1] + rng.gauss(0, 0.3) > 0
        rows.append((x, label))
    return rows[:80], rows[80:]
