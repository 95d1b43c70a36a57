"""Evaluator: train the model of train.py on fixed data, score it on held-out data."""

import math
import os
import random

import train


def make_data(n, rng):
    X, y = [], []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(5)]
        logit = 2.0 * x[0] - 1.5 * x[1] + 0.5 * x[2]
        X.append(x)
        y.append(1 if rng.random() < 1 / (1 + math.exp(-logit)) else 0)
    return X, y


data = random.Random(1234)
X_train, y_train = make_data(300, data)
X_val, y_val = make_data(300, data)
w = train.fit(X_train, y_train, seed=int(os.environ.get("FARM_SEED", "0")))
probs = [min(max(train.predict_proba(w, x), 1e-7), 1 - 1e-7) for x in X_val]
loss = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(y_val, probs))
print(f"val_loss={loss / len(y_val):.6f}")
print(f"val_accuracy={sum((p > 0.5) == t for t, p in zip(y_val, probs)) / len(y_val):.4f}")
