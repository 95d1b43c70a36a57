"""The model: logistic regression trained by SGD. run.py trains and scores it."""

import math
import random

LEARNING_RATE = 0.05  # SGD step size
EPOCHS = 4  # passes over the training set
L2 = 0.3  # weight decay per step


def fit(X, y, *, seed):
    rng = random.Random(seed)
    w = [rng.gauss(0, 0.1) for _ in range(len(X[0]) + 1)]
    order = list(range(len(X)))
    for _ in range(EPOCHS):
        rng.shuffle(order)
        for i in order:
            p = predict_proba(w, X[i])
            g = p - y[i]
            for k, v in enumerate([*X[i], 1.0]):
                w[k] -= LEARNING_RATE * (g * v + L2 * w[k])
    return w


def predict_proba(w, x):
    z = sum(wk * v for wk, v in zip(w, [*x, 1.0]))
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
