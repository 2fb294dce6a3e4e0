"""What every predictor shares: the benchmarks, the logit scale, cross-validation folds,
the conformal interval rule and the fitted predictor they all return."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

BENCHMARKS: tuple[str, ...] = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")
"""The six Open LLM Leaderboard v1 benchmarks the PhyloLM paper predicts (the packaged
reference scores have these columns)."""
DEFAULT_COVERAGE = 0.90
_LOGIT_EPS = 0.01  # scores are clipped to [eps, 1-eps] before the logit: GSM8K has zeros


# ---------------------------------------------------------------------------------------
# small numeric helpers
# ---------------------------------------------------------------------------------------
def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return np.log(p / (1.0 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (O(|a||b|p)).
    ``b_sq``: ``(b * b).sum(1)`` when the caller kept it (a fitted learner predicting)."""
    if b_sq is None:
        b_sq = (b * b).sum(1)
    d = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * a @ b.T
    np.maximum(d, 0.0, out=d)
    return d


def conformal_quantile(abs_residuals: np.ndarray, coverage: float) -> float:
    """The ceil(coverage*(n+1))-th smallest absolute residual (split-conformal rule).

    With fewer residuals than the rule needs, the interval is unbounded in principle; we
    return the largest residual times 1.5 and the caller's clip to [0, 1] does the rest.
    """
    r = np.sort(np.abs(np.asarray(abs_residuals, dtype=float)))
    n = r.size
    if n == 0:
        return math.inf
    k = math.ceil(coverage * (n + 1))
    if k > n:
        return float(r[-1] * 1.5)
    return float(r[k - 1])


def leave_one_group_out(groups: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_mask, test_mask) per distinct group; leave-one-out when < 3 groups."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if uniq.size < 3:
        n = groups.size
        eye = np.eye(n, dtype=bool)
        return [(~eye[i], eye[i]) for i in range(n)]
    return [(groups != g, groups == g) for g in uniq]


def cluster_groups(D: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """Group models into clades by average-linkage clustering of D (UPGMA), O(n^2 log n).

    Used as the cross-validation groups when no family labels are known, so that the
    inner validation holds out whole clades, as leave-one-family-out does.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = D.shape[0]
    if n < 3:
        return np.arange(n)
    k = n_groups or max(3, min(8, n // 4))
    condensed = squareform(0.5 * (D + D.T), checks=False)
    z = linkage(condensed, method="average")
    return fcluster(z, t=min(k, n), criterion="maxclust")


@dataclass(frozen=True)
class FittedPredictor:
    """A predictor fitted for one benchmark; ``predict`` takes distances to the train set."""

    method: str
    n_train: int
    half_width: float  # conformal half-width of the interval, in score units
    coverage: float
    params: Mapping[str, object]
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def predict(self, d_to_train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) for each row of distances to the training models; O(n) a row."""
        x = np.atleast_2d(np.asarray(d_to_train, dtype=float))
        if x.shape[1] != self.n_train:
            raise ValueError(f"expected distances to {self.n_train} training models, got {x.shape[1]}")
        return self.interval(self._predict(x))

    def interval(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(estimate, low, high) from the predictor's raw output (what ``predict`` returns)."""
        est = np.clip(raw, 0.0, 1.0)
        return est, np.clip(est - self.half_width, 0.0, 1.0), np.clip(est + self.half_width, 0.0, 1.0)


def _check_fit_inputs(d: np.ndarray, y: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(d, dtype=float)
    y = np.asarray(y, dtype=float)
    groups = np.asarray(groups)
    n = y.size
    if d.shape != (n, n):
        raise ValueError(f"distance block must be {n}x{n} for {n} scores, got {d.shape}")
    if groups.shape != (n,):
        raise ValueError(f"need one group per training model ({n}), got {groups.shape}")
    if n < 3:
        raise ValueError(f"need at least 3 scored models to fit a predictor, got {n}")
    if not np.all(np.isfinite(d)) or not np.all(np.isfinite(y)):
        raise ValueError("distances and scores must be finite")
    if np.any((y < 0) | (y > 1)):
        raise ValueError("scores must be fractions in [0, 1]")
    return d, y, groups
