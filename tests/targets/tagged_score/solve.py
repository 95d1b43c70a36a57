"""Randomised greedy with swap repair for the knapsack instances: the agent edits this file."""

import os
import random
import time

from data import instances, score

PARAMS = {
    "restarts": 3,  # independent randomised greedy passes per instance
    "jitter": 0.8,  # multiplicative noise on the value/weight ratio
    "swap_rounds": 20,  # improving swaps tried after each pass
}

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
started = time.time()
scores = []
for items, capacity in instances():
    best = []
    for _ in range(PARAMS["restarts"]):
        order = sorted(
            range(len(items)),
            key=lambda i: -items[i][0] / items[i][1] * (1 + PARAMS["jitter"] * rng.random()),
        )
        chosen, load = [], 0
        for i in order:
            if load + items[i][1] <= capacity:
                chosen.append(i)
                load += items[i][1]
        for _ in range(PARAMS["swap_rounds"]):
            out = rng.choice(chosen)
            inn = rng.randrange(len(items))
            if inn in chosen or load - items[out][1] + items[inn][1] > capacity:
                continue
            if items[inn][0] > items[out][0]:
                chosen[chosen.index(out)] = inn
                load += items[inn][1] - items[out][1]
        if score(items, capacity, chosen) > score(items, capacity, best):
            best = chosen
    scores.append(score(items, capacity, best))

print(f"[run] instances={len(scores)}")
print(f"[run] score={sum(scores) / len(scores):.5f}")
print(f"[run] seconds={time.time() - started:.3f}")
