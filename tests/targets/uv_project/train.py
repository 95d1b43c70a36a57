"""Logistic regression by SGD; prints the validation log loss."""

import math
import os
import random

from prepare import load_data, log_loss

LEARNING_RATE = 0.1  # SGD step
EPOCHS = 5  # passes over the training rows
L2 = 0.01  # weight decay

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
train, val = load_data()
w = [rng.gauss(0, 0.1) for _ in range(3)]


def predict(x):
    z = w[0] * x[0] + w[1] * x[1] + w[2]
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


for _ in range(EPOCHS):
    rng.shuffle(train)
    for x, label in train:
        g = predict(x) - label
        for k, v in enumerate([x[0], x[1], 1.0]):
            w[k] -= LEARNING_RATE * (g * v + L2 * w[k])
print(f"val_loss: {log_loss(predict, val):.6f}")
