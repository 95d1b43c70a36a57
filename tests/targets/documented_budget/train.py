"""A bigram model trained by SGD on logits until the time budget is spent."""

import math
import os
import random
import time

from prepare import TIME_BUDGET, corpus, evaluate_bpb

LEARNING_RATE = 0.5  # step on the logits
INIT_SCALE = 0.1  # std of the initial logits

train, _ = corpus()
chars = sorted(set(train + corpus()[1]))
rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
logits = {a: {b: rng.gauss(0, INIT_SCALE) for b in chars} for a in chars}


def probs(a):
    top = max(logits[a].values())
    exp = {b: math.exp(v - top) for b, v in logits[a].items()}
    total = sum(exp.values())
    return {b: e / total for b, e in exp.items()}


t0 = time.time()
steps = 0
while time.time() - t0 < TIME_BUDGET:
    i = rng.randrange(len(train) - 1)
    a, b = train[i], train[i + 1]
    p = probs(a)
    for c in chars:
        logits[a][c] -= LEARNING_RATE * (p[c] - (c == b))
    steps += 1
print(f"val_bpb: {evaluate_bpb(lambda a, b: probs(a)[b]):.6f}")
print(f"num_steps: {steps}")
