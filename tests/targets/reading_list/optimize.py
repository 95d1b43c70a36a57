"""Random-restart local search for two depot positions."""

import os
import random

from prepare import TOWNS, cost

RESTARTS = 2  # independent starts
MOVES = 60  # moves tried per start
STEP = 3.0  # the largest move, shrunk as the search goes
SHRINK = 0.97  # step factor per move

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
best = None
for _ in range(RESTARTS):
    depots = [rng.uniform(min(TOWNS), max(TOWNS)) for _ in range(2)]
    here, step = cost(depots), STEP
    for _ in range(MOVES):
        trial = [d + rng.uniform(-step, step) for d in depots]
        if cost(trial) < here:
            depots, here = trial, cost(trial)
        step *= SHRINK
    best = here if best is None else min(best, here)
print(f"cost: {best:.4f}")
