"""The fixed knapsack instances and the scoring. Do not modify."""

import random


def instances():
    rng = random.Random(99)
    out = []
    for _ in range(5):
        items = [(rng.randint(5, 60), rng.randint(1, 40)) for _ in range(60)]  # (value, weight)
        out.append((items, sum(w for _, w in items) // 3))
    return out


def score(items, capacity, chosen):
    """Packed value over the fractional (LP) bound: 1.0 is optimal, higher is better."""
    if len(set(chosen)) != len(chosen) or sum(items[i][1] for i in chosen) > capacity:
        return 0.0
    bound, room = 0.0, capacity
    for v, w in sorted(items, key=lambda it: -it[0] / it[1]):
        take = min(1.0, room / w)
        bound += v * take
        room -= w * take
        if room <= 0:
            break
    return sum(items[i][0] for i in chosen) / bound
