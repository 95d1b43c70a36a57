"""
Tiny MLP on two spirals, autoresearch style. EDITABLE: the agent changes this file;
prepare.py (data and evaluation) is fixed. Trains a fixed number of steps, then prints a
summary block.
"""

import math
import os
import random
import time

from prepare import evaluate_loss, load_data

# Hyperparameters
LEARNING_RATE = 0.02  # SGD step size
HIDDEN = 6  # hidden units
NUM_STEPS = 300  # SGD steps of one example each
INIT_SCALE = 0.5  # std of the initial weights

t0 = time.time()
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
(X, y), _ = load_data()
w1 = [[rng.gauss(0, INIT_SCALE) for _ in range(3)] for _ in range(HIDDEN)]
w2 = [rng.gauss(0, INIT_SCALE) for _ in range(HIDDEN + 1)]


def forward(x):
    h = [math.tanh(w[0] * x[0] + w[1] * x[1] + w[2]) for w in w1]
    z = sum(a * b for a, b in zip(w2, [*h, 1.0]))
    return h, 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


for step in range(NUM_STEPS):
    i = rng.randrange(len(X))
    h, p = forward(X[i])
    g = p - y[i]
    for k in range(HIDDEN):
        gh = g * w2[k] * (1 - h[k] ** 2)
        w1[k][0] -= LEARNING_RATE * gh * X[i][0]
        w1[k][1] -= LEARNING_RATE * gh * X[i][1]
        w1[k][2] -= LEARNING_RATE * gh
    for k, a in enumerate([*h, 1.0]):
        w2[k] -= LEARNING_RATE * g * a

val_loss = evaluate_loss(lambda x: forward(x)[1])
print("---")
print(f"val_loss:          {val_loss:.6f}")
print(f"training_seconds:  {time.time() - t0:.1f}")
print(f"peak_vram_mb:      {0.0:.1f}")
print(f"num_steps:         {NUM_STEPS}")
print(f"num_params:        {HIDDEN * 3 + HIDDEN + 1}")
