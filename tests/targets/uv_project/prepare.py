"""Two Gaussian blobs and the log loss that scores a model on the held-out half."""

import math
import random


def load_data():
    rng = random.Random(3)
    rows = [((rng.gauss(c, 1.0), rng.gauss(c, 1.0)), c > 0) for c in (-1, 1) for _ in range(60)]
    rng.shuffle(rows)
    return rows[:60], rows[60:]


def log_loss(predict, rows):
    eps = 1e-9
    total = 0.0
    for x, label in rows:
        p = min(1 - eps, max(eps, predict(x)))
        total -= math.log(p if label else 1 - p)
    return total / len(rows)


if __name__ == "__main__":
    train, val = load_data()
    print(f"{len(train)} training rows, {len(val)} validation rows")
