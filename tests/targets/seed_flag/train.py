"""Perceptron on data.py's set; `--seed` picks the order the rows are shown in."""

import argparse
import random

from data import load

EPOCHS = 2  # passes over the training rows
LEARNING_RATE = 0.5  # perceptron step

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
rng = random.Random(args.seed)
train, val = load()
w = [0.0, 0.0, 0.0]
for _ in range(EPOCHS):
    rng.shuffle(train)
    for x, label in train:
        guess = w[0] * x[0] + w[1] * x[1] + w[2] > 0
        if guess != label:
            sign = 1 if label else -1
            w = [w[0] + LEARNING_RATE * sign * x[0], w[1] + LEARNING_RATE * sign * x[1],
                 w[2] + LEARNING_RATE * sign]  # fmt: skip
right = sum((w[0] * x[0] + w[1] * x[1] + w[2] > 0) == label for x, label in val)
print(f"val_accuracy: {right / len(val):.4f}")
