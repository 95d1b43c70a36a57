"""Data and scoring for the ridge regression repo. Fixed: the agent does not edit this file."""

from minisk import make_regression, train_test_split


def load_data():
    X, y = make_regression(n_samples=120, n_features=40, noise=8.0, random_state=42)
    return train_test_split(X, y, test_size=0.5, random_state=0)


def rmse(y_true, y_pred):
    return (sum((t - p) ** 2 for t, p in zip(y_true, y_pred)) / len(y_true)) ** 0.5
