"""A vendored teaching subset of scikit-learn: a random forest in the standard library."""

from __future__ import annotations

import math
import random
from collections import Counter


class DecisionTreeClassifier:
    def __init__(self, *, max_depth=None, min_samples_leaf=1, max_features=None, rng=None):
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.rng = rng or random.Random(0)

    def fit(self, X, y):
        self.tree_ = self._grow(X, y, depth=0)
        return self

    def _grow(self, X, y, depth):
        label = Counter(y).most_common(1)[0][0]
        if len(set(y)) == 1 or (self.max_depth is not None and depth >= self.max_depth):
            return label
        features = list(range(len(X[0])))
        if self.max_features is not None:
            features = self.rng.sample(features, min(self.max_features, len(features)))
        best = None
        for f in features:
            values = sorted(row[f] for row in X)
            for q in range(1, 8):
                t = values[len(values) * q // 8]
                left = [c for row, c in zip(X, y) if row[f] < t]
                right = [c for row, c in zip(X, y) if row[f] >= t]
                if min(len(left), len(right)) < self.min_samples_leaf:
                    continue
                score = len(left) * _gini(left) + len(right) * _gini(right)
                if best is None or score < best[0]:
                    best = (score, f, t)
        if best is None:
            return label
        _, f, t = best
        lo = [(row, c) for row, c in zip(X, y) if row[f] < t]
        hi = [(row, c) for row, c in zip(X, y) if row[f] >= t]
        return (
            f,
            t,
            self._grow([r for r, _ in lo], [c for _, c in lo], depth + 1),
            self._grow([r for r, _ in hi], [c for _, c in hi], depth + 1),
        )

    def predict_one(self, row):
        node = self.tree_
        while isinstance(node, tuple):
            f, t, lo, hi = node
            node = lo if row[f] < t else hi
        return node


class RandomForestClassifier:
    def __init__(self, n_estimators=100, *, max_depth=None, min_samples_leaf=1, random_state=None):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, X, y):
        rng = random.Random(self.random_state)
        k = max(1, round(math.sqrt(len(X[0]))))
        self.trees_ = []
        for _ in range(self.n_estimators):
            idx = [rng.randrange(len(X)) for _ in X]  # bootstrap sample
            tree = DecisionTreeClassifier(
                max_depth=self.max_depth,
                min_samples_leaf=self.min_samples_leaf,
                max_features=k,
                rng=rng,
            )
            self.trees_.append(tree.fit([X[i] for i in idx], [y[i] for i in idx]))
        return self

    def predict(self, X):
        return [Counter(t.predict_one(row) for t in self.trees_).most_common(1)[0][0] for row in X]


def accuracy_score(y_true, y_pred):
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def _gini(labels):
    n = len(labels)
    return 1.0 - sum((c / n) ** 2 for c in Counter(labels).values())
