"""Learners: ``fit(X_train, y_train) -> predict(X_new)``, where the rows of X are distances
to the training models; and their out-of-group predictions under a set of folds."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from indexer.core.distance import nearest_k
from indexer.core.predict.base import _logit, _sigmoid, _sq_dists

Learner = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _kernel_ridge(gamma: float, alpha: float) -> Learner:
    """Kernel ridge, RBF kernel on distance rows; gamma is per feature (scaled by 1/p)."""

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        g = gamma / x.shape[1]
        k = np.exp(-g * _sq_dists(x, x))
        k[np.diag_indices_from(k)] += alpha
        mean = y.mean()
        coef = np.linalg.solve(k, y - mean)
        return KernelRidgeFit(x, (x * x).sum(1), g, coef, mean)

    return fit


class KernelRidgeFit:
    """A fitted kernel ridge: ``self(xn)`` predicts; ``from_sq`` takes the squared distances
    ``_sq_dists(xn, x, x_sq)`` when the caller shares them between fits on the same ``x``
    (the joint predictor's benchmarks with one scored set): the same numbers either way."""

    __slots__ = ("x", "x_sq", "g", "coef", "mean")

    def __init__(self, x: np.ndarray, x_sq: np.ndarray, g: float, coef: np.ndarray, mean: float):
        self.x, self.x_sq, self.g, self.coef, self.mean = x, x_sq, g, coef, mean

    def from_sq(self, sq: np.ndarray) -> np.ndarray:
        return np.exp(-self.g * sq) @ self.coef + self.mean

    def __call__(self, xn: np.ndarray) -> np.ndarray:
        return self.from_sq(_sq_dists(xn, self.x, self.x_sq))


def _ridge(alpha: float) -> Learner:
    """Linear ridge on centred distance rows (dual form: n x n solve)."""

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        mu = x.mean(0)
        xc = x - mu
        mean = y.mean()
        gram = xc @ xc.T
        gram[np.diag_indices_from(gram)] += alpha
        w = xc.T @ np.linalg.solve(gram, y - mean)
        return lambda xn: (xn - mu) @ w + mean

    return fit


def _nearest_relatives(k: int, tau: float = 0.5) -> Learner:
    """Mean over the k closest training models, weighted by exp(-(d - d_min)/tau)."""

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def predict(xn: np.ndarray) -> np.ndarray:
            kk = min(k, xn.shape[1])
            order = nearest_k(xn, kk)  # ties: the first training model
            d = np.take_along_axis(xn, order, axis=1)
            w = np.exp(-(d - d[:, :1]) / tau)
            return (w * y[order]).sum(1) / w.sum(1)

        return predict

    return fit


def _paper_linear_sigmoid(epochs: int = 1000, lr: float = 1e-3, weight_decay: float = 0.01,
                          seed: int = 0) -> Learner:
    """The authors' output layer: Linear(p, 1) + Sigmoid, full-batch Adam on MSE.

    Adam's weight decay is the L2 form (added to the gradient), as torch.optim.Adam does.
    O(epochs * n * p).
    """

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        rng = np.random.default_rng(seed)
        n, p = x.shape
        limit = math.sqrt(6.0 / (p + 1))  # Xavier uniform for a (1, p) weight
        theta = np.concatenate([rng.uniform(-limit, limit, p), [0.0]])  # weights, bias
        xb = np.hstack([x, np.ones((n, 1))])
        m = np.zeros(p + 1)
        v = np.zeros(p + 1)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for t in range(1, epochs + 1):
            s = _sigmoid(xb @ theta)
            grad = xb.T @ (2.0 * (s - y) * s * (1.0 - s) / n) + weight_decay * theta
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            theta -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        return lambda xn: _sigmoid(np.hstack([xn, np.ones((xn.shape[0], 1))]) @ theta)

    return fit


def _inner_predictions(learner: Learner, d: np.ndarray, y: np.ndarray,
                       folds: list[tuple[np.ndarray, np.ndarray]], transform: bool) -> np.ndarray:
    """Out-of-group predictions (score units) for every training model."""
    pred = np.empty_like(y)
    target = _logit(y) if transform else y
    for tr, te in folds:
        f = learner(d[np.ix_(tr, tr)], target[tr])
        out = f(d[np.ix_(te, tr)])
        pred[te] = _sigmoid(out) if transform else out
    return pred
