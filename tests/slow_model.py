"""A classifier that is slow on purpose for one poisoned input (a feature equal to 999), to test
SERVING_REQUEST_TIMEOUT. Importable by the servers the tests start (they run from the repo)."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

POISON = 999.0


class SlowOnPoison(ClassifierMixin, BaseEstimator):
    def __init__(self, seconds: float = 30.0, waits: bool = False) -> None:
        self.seconds, self.waits = seconds, waits

    def fit(self, x, y):
        self.classes_ = np.unique(y)
        self.n_features_in_ = np.asarray(x).shape[1]
        return self

    def predict(self, x):
        values = np.asarray(x, dtype=float)
        if (values == POISON).any():
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline:  # busy in Python, like a slow pure-Python model
                if self.waits:  # or waiting, like a model that calls a service (gevent: yields)
                    time.sleep(0.01)
                else:
                    sum(range(1000))
        return np.full(len(values), self.classes_[0])


def slow_artifact(path, seconds: float = 30.0, waits: bool = False):
    import joblib

    x = np.random.default_rng(0).normal(size=(20, 4))
    joblib.dump(SlowOnPoison(seconds, waits).fit(x, [0, 1] * 10), path)
    return path
