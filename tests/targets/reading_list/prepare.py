"""The towns and the cost of serving them from two depots."""

TOWNS = [1.0, 2.0, 2.5, 7.0, 8.0, 8.5, 9.0, 15.0, 16.0, 30.0]
WEIGHTS = [3, 1, 2, 5, 1, 1, 2, 4, 1, 2]


def cost(depots):
    return sum(w * min(abs(t - d) for d in depots) for t, w in zip(TOWNS, WEIGHTS))
