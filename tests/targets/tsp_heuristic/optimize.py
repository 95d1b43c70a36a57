"""Simulated annealing with 2-opt moves for the benchmark tour: the agent edits this file."""

import math
import os
import random
import time

from evaluate import cities, tour_length

TIME_BUDGET_SECONDS = 0.3  # wall clock for the search, fixed by the benchmark
TEMPERATURE = 0.05  # starting temperature, in units of tour length
COOLING = 0.9995  # temperature factor per move
RESTART_EVERY = 3000  # moves without improvement before a random restart

rng = random.Random(int(os.environ.get("FARM_SEED", "0")))
points = cities()
n = len(points)


def delta(tour, i, j):
    """Change in length when the segment tour[i..j] is reversed."""
    a, b = points[tour[i - 1]], points[tour[i]]
    c, d = points[tour[j]], points[tour[(j + 1) % n]]
    return math.dist(a, c) + math.dist(b, d) - math.dist(a, b) - math.dist(c, d)


start = time.time()
tour = list(range(n))
rng.shuffle(tour)
length = best = tour_length(tour, points)
best_tour = tour[:]
temperature, stale = TEMPERATURE, 0
while time.time() - start < TIME_BUDGET_SECONDS:
    i, j = sorted(rng.sample(range(1, n), 2))
    d = delta(tour, i, j)
    if d < 0 or rng.random() < math.exp(-d / max(temperature, 1e-9)):
        tour[i : j + 1] = reversed(tour[i : j + 1])
        length += d
        if length < best - 1e-12:
            best, best_tour, stale = length, tour[:], 0
    stale += 1
    temperature *= COOLING
    if stale > RESTART_EVERY:
        rng.shuffle(tour)
        length, temperature, stale = tour_length(tour, points), TEMPERATURE, 0

print(f"tour_length : {tour_length(best_tour, points):.4f}")
print(f"search_seconds : {time.time() - start:.2f}")
