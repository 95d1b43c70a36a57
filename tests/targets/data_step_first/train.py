"""Fit a line by gradient descent on the bundled data and print the validation error."""

import os
import random
import sys

from prepare import load, mse

LEARNING_RATE = 0.05  # gradient step
STEPS = 200  # full-batch steps

(xs, ys), (vx, vy) = load()
if "--dry-run" in sys.argv:
    print(f"{len(xs)} training and {len(vx)} validation points")
    raise SystemExit(0)
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
a, b = rng.gauss(0, 1), rng.gauss(0, 1)
for _ in range(STEPS):
    ga = sum((a * x + b - y) * x for x, y in zip(xs, ys)) * 2 / len(xs)
    gb = sum(a * x + b - y for x, y in zip(xs, ys)) * 2 / len(xs)
    a, b = a - LEARNING_RATE * ga, b - LEARNING_RATE * gb
print(f"val_mse: {mse(vy, [a * x + b for x in vx]):.6f}")
