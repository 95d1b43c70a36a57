"""Minibatch SGD with momentum on the benchmark regression: the agent edits this file."""

import os
import random

from prepare import load, val_loss

LEARNING_RATE = 0.02
MOMENTUM = 0.5
BATCH_SIZE = 32
EPOCHS = 2
INIT_SCALE = 0.5

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
train_x, train_y, val_x, val_y = load()
# One run in twelve or so draws an initialisation this schedule cannot recover from in
# time: its loss ends far above the others (the heavy tail seen in real training runs).
scale = INIT_SCALE * (25 if rng.random() < 1 / 12 else 1)
w = [rng.gauss(0, scale) for _ in range(4)]
velocity = [0.0] * 4
order = list(range(len(train_x)))
for _ in range(EPOCHS):
    rng.shuffle(order)
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start : start + BATCH_SIZE]
        grad = [0.0] * 4
        for i in batch:
            err = sum(a * b for a, b in zip(train_x[i], w)) - train_y[i]
            for k in range(4):
                grad[k] += 2 * err * train_x[i][k] / len(batch)
        for k in range(4):
            velocity[k] = MOMENTUM * velocity[k] - LEARNING_RATE * grad[k]
            w[k] += velocity[k]

print(f"val_loss: {val_loss(w, val_x, val_y):.6f}")
