"""A vendored teaching subset of scikit-learn: just enough for this repo, stdlib only."""

from __future__ import annotations

import random


def make_regression(*, n_samples, n_features, noise, random_state):
    """Linear targets with Gaussian noise, a fixed draw for a fixed random_state."""
    rng = random.Random(random_state)
    coef = [rng.uniform(-3, 3) for _ in range(n_features)]
    X = [[rng.gauss(0, 1) for _ in range(n_features)] for _ in range(n_samples)]
    y = [sum(c * x for c, x in zip(coef, row)) + rng.gauss(0, noise) for row in X]
    return X, y


def train_test_split(X, y, *, test_size, random_state):
    order = list(range(len(X)))
    random.Random(random_state).shuffle(order)
    cut = int(len(X) * (1 - test_size))
    train, test = order[:cut], order[cut:]
    return [X[i] for i in train], [X[i] for i in test], [y[i] for i in train], [y[i] for i in test]


class StandardScaler:
    def fit(self, X):
        n = len(X)
        self.mean_ = [sum(col) / n for col in zip(*X)]
        self.scale_ = [
            (sum((v - m) ** 2 for v in col) / n) ** 0.5 or 1.0
            for col, m in zip(zip(*X), self.mean_)
        ]
        return self

    def transform(self, X):
        return [[(v - m) / s for v, m, s in zip(row, self.mean_, self.scale_)] for row in X]


class Ridge:
    """Least squares with an L2 penalty, solved in closed form."""

    def __init__(self, alpha=1.0, fit_intercept=True):
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X, y):
        rows = [[*row, 1.0] if self.fit_intercept else list(row) for row in X]
        d = len(rows[0])
        a = [[sum(r[i] * r[j] for r in rows) for j in range(d)] for i in range(d)]
        for i in range(d - (1 if self.fit_intercept else 0)):
            a[i][i] += self.alpha
        b = [sum(r[i] * t for r, t in zip(rows, y)) for i in range(d)]
        self.coef_ = _solve(a, b)
        return self

    def predict(self, X):
        rows = [[*row, 1.0] if self.fit_intercept else list(row) for row in X]
        return [sum(c * v for c, v in zip(self.coef_, r)) for r in rows]


def _solve(a, b):
    """Gaussian elimination with partial pivoting."""
    n = len(b)
    m = [[*a[i], b[i]] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (m[i][n] - sum(m[i][j] * x[j] for j in range(i + 1, n))) / m[i][i]
    return x
