"""The joint predictor ``KinshipStack``: every benchmark at once, features = distances to
every indexed model, then cross-benchmark stacking (see the package docstring)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from indexer.core.predict.base import (DEFAULT_COVERAGE, FittedPredictor, _check_fit_inputs, _logit, _sigmoid,
                                       _sq_dists, conformal_quantile, leave_one_group_out)
from indexer.core.predict.learners import KernelRidgeFit, Learner, _kernel_ridge, _ridge

# A member learner sees the training models' rows of distances to all n reference models
# (x: n_train x n), their positions among the references (rows) and the logit targets z;
# it returns a function of new rows of distances to the n references.
Member = Callable[[np.ndarray, np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]

_STACK_KRR_GRID = tuple((g, a) for g in (0.25, 0.8, 2.5) for a in (0.03, 0.1, 0.3)
                        if (g, a) != (0.25, 0.3))
_STACK_RIDGE_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
_STACK_LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _scored_columns(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features: distances to the training models themselves (as KinshipEnsemble)."""
    return x[:, rows]


def _all_columns(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features: distances to every reference model, scored or not. Transductive in the
    features only: an unscored model contributes its distances, never a score."""
    return x


def _all_similarities(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Features: similarities exp(-d) to every reference model (close kin weigh more)."""
    return np.exp(-x)


class _MemberFit:
    """A fitted member: its feature map (``features`` with the training rows) and learner."""

    __slots__ = ("features", "rows", "f")

    def __init__(self, features, rows: np.ndarray, f) -> None:
        self.features, self.rows, self.f = features, rows, f

    def __call__(self, xn: np.ndarray) -> np.ndarray:
        return self.f(self.features(xn, self.rows))

    def shared(self, xn: np.ndarray, memo: dict) -> np.ndarray:
        """``self(xn)``, reusing the features and kernel distances of an earlier member with
        the same feature map over the same training matrix (one set of scored models for
        several benchmarks): the same numbers, computed once."""
        key = (self.features, self.rows.tobytes())
        feat = memo.get(key)
        if feat is None:
            feat = memo[key] = self.features(xn, self.rows)
        if not isinstance(self.f, KernelRidgeFit):
            return self.f(feat)
        sq = memo.get(id(self.f.x))
        if sq is None:
            sq = memo[id(self.f.x)] = _sq_dists(feat, self.f.x, self.f.x_sq)
        return self.f.from_sq(sq)


def _member(learner: Learner, features: Callable[[np.ndarray, np.ndarray], np.ndarray],
            train: dict | None = None) -> Member:
    """``train``: a memo of training feature matrices, so that members with the same feature
    map over the same rows (several benchmarks, one scored set) hold one matrix."""
    def fit(x: np.ndarray, rows: np.ndarray, z: np.ndarray) -> _MemberFit:
        key = (features, rows.tobytes())
        xf = train.get(key) if train is not None else None
        if xf is None:
            xf = features(x, rows)
            if train is not None:
                train[key] = xf
        return _MemberFit(features, rows, learner(xf, z))

    return fit


def _grid_oof(kind: str, features: Callable[[np.ndarray, np.ndarray], np.ndarray], grid: Sequence,
              x: np.ndarray, rows: np.ndarray, z: np.ndarray,
              folds: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Out-of-group logit predictions of a learner for every grid point and training model.

    The same numbers as fitting ``_kernel_ridge(*p)`` / ``_ridge(p)`` on each fold, but the
    per-fold distances (kernel) or Gram matrix (ridge) are computed once for the whole
    grid: O(G * (n_s^2 p + |grid| n_s^3)).
    """
    out = [np.empty_like(z) for _ in grid]
    for tr, te in folds:
        ftr, fte = features(x[tr], rows[tr]), features(x[te], rows[tr])
        ztr = z[tr]
        mean = ztr.mean()
        if kind == "kernel_ridge":
            p = ftr.shape[1]
            sq_tr, sq_te = _sq_dists(ftr, ftr), _sq_dists(fte, ftr)
            for i, (gamma, alpha) in enumerate(grid):
                k = np.exp(-(gamma / p) * sq_tr)
                k[np.diag_indices_from(k)] += alpha
                out[i][te] = np.exp(-(gamma / p) * sq_te) @ np.linalg.solve(k, ztr - mean) + mean
        else:  # linear ridge, dual form
            mu = ftr.mean(0)
            xc, xt = ftr - mu, fte - mu
            gram, cross = xc @ xc.T, xt @ xc.T
            for i, alpha in enumerate(grid):
                g = gram.copy()
                g[np.diag_indices_from(g)] += alpha
                out[i][te] = cross @ np.linalg.solve(g, ztr - mean) + mean
    return out


def _shrunk_stack(f: np.ndarray, z: np.ndarray, j: int, lam: float) -> np.ndarray:
    """Cross-benchmark stacking weights shrunk toward the direct prediction.

    Minimises ||z - b - F w||^2 + lam * n * var(F_j) * ||w - e_j||^2 over w and a free
    intercept b: lam -> infinity gives the benchmark's own base prediction, lam -> 0 the
    least-squares combination of all benchmarks' predictions (Breiman & Friedman 1997,
    "curds and whey", predict each response from the others' fitted values). Returns
    (w, b) stacked; O(n m^2 + m^3).
    """
    fm = f.mean(0)
    zm = z.mean()
    fc = f - fm
    n, m = f.shape
    pen = lam * n * max(float(np.var(f[:, j])), 1e-12)
    e = np.zeros(m)
    e[j] = 1.0
    w = np.linalg.solve(fc.T @ fc + pen * np.eye(m), fc.T @ (z - zm) + pen * e)
    return np.append(w, zm - fm @ w)


@dataclass(frozen=True)
class JointFit:
    """Fitted predictors of every benchmark that had enough scores, over one reference set.

    ``anchors`` are the positions (in the fitting matrix) of the reference models whose
    distances the predictors take, in that order.
    """

    anchors: np.ndarray
    fitted: Mapping[int, FittedPredictor]
    # every benchmark's raw prediction at once: the base learners run once for all of them
    # (each ``fitted[k].predict`` reruns them); the same numbers as ``fitted[k].predict``
    _predict_all: Callable[[np.ndarray], Mapping[int, np.ndarray]] | None = None

    def predict_all(self, d_to_anchors: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(estimate, low, high) of every fitted benchmark for rows of distances to the
        anchors: O(m * n_s * |anchors|) a row, one pass of the base learners for all m."""
        x = np.atleast_2d(np.asarray(d_to_anchors, dtype=float))
        if self._predict_all is None:
            return {k: f.predict(x) for k, f in self.fitted.items()}
        if x.shape[1] != self.anchors.size:
            raise ValueError(f"expected distances to {self.anchors.size} anchors, got {x.shape[1]}")
        raw = self._predict_all(x)
        return {k: f.interval(raw[k]) for k, f in self.fitted.items()}


class KinshipStack:
    """This project's default predictor: multi-benchmark stacking on kinship features.

    For each benchmark (logit of the score), a base prediction averages three learners:
    kernel ridge on distances to the scored training models, kernel ridge on distances to
    every indexed model (scored or not: transductive features, never labels), and linear
    ridge on similarities exp(-d) to every indexed model; each learner's hyper-parameters
    are chosen by inner leave-one-group-out cross-validation on the training models. The
    benchmarks are strongly correlated (one general-capability axis), so each benchmark's
    final estimate combines the out-of-group base predictions of all benchmarks with
    weights shrunk toward its own (``_shrunk_stack``); the shrinkage is chosen by a second
    leave-one-group-out pass over those out-of-group predictions. The 90% interval is the
    conformal quantile of the stacked out-of-group residuals.

    Fit cost: O(m * G * (n_s^2 * n + |grid| * n_s^3)) for m benchmarks, G groups, n_s scored
    and n reference models; predicting one model is O(m * n_s * n).
    """

    method = "kinship-stack"
    joint = True  # fits every benchmark at once: see ``fit_joint``

    def __init__(self, coverage: float = DEFAULT_COVERAGE) -> None:
        self.coverage = coverage

    def _members(self, d: np.ndarray) -> list[tuple[str, str, Sequence, Callable]]:
        # ridge on similarities: the penalty grid is in distance units, rescaled by the
        # ratio of second moments so one grid serves both feature maps
        s_scale = float(np.mean(np.exp(-d) ** 2) / max(float(np.mean(d ** 2)), 1e-12))
        return [
            ("kernel_ridge_scored", "kernel_ridge", _STACK_KRR_GRID, _scored_columns),
            ("kernel_ridge_all", "kernel_ridge", _STACK_KRR_GRID, _all_columns),
            ("ridge_similarity_all", "ridge", tuple(a * s_scale for a in _STACK_RIDGE_GRID),
             _all_similarities),
        ]

    def fit_joint(self, d: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> JointFit:
        """Fit on D among n reference models (n x n), scores n x m (NaN = unscored), groups (n,).

        Every benchmark with at least 3 scores gets a ``FittedPredictor`` whose ``predict``
        takes distances to the n reference models (``n_train`` is then n).
        """
        d = np.asarray(d, dtype=float)
        scores = np.atleast_2d(np.asarray(scores, dtype=float))
        groups = np.asarray(groups)
        n = d.shape[0]
        if d.shape != (n, n) or scores.shape[0] != n or groups.shape != (n,):
            raise ValueError(f"need an n x n distance matrix, n score rows and n groups; got "
                             f"{d.shape}, {scores.shape}, {groups.shape}")
        if not np.all(np.isfinite(d)):
            raise ValueError("distances must be finite")
        ok = np.isfinite(scores)
        if np.any((scores[ok] < 0) | (scores[ok] > 1)):
            raise ValueError("scores must be fractions in [0, 1]")
        benches = [k for k in range(scores.shape[1]) if ok[:, k].sum() >= 3]
        if not benches:
            return JointFit(np.arange(n), {})
        members = self._members(d)
        # base level: per benchmark, tuned members; out-of-group logits for scored rows
        base_fits: dict[int, list[_MemberFit]] = {}
        train: dict = {}  # training feature matrices, shared by benchmarks with one scored set
        base_oof: dict[int, np.ndarray] = {}
        chosen: dict[int, dict[str, object]] = {}
        for k in benches:
            rows = np.flatnonzero(ok[:, k])
            x, z = d[rows], _logit(scores[rows, k])
            folds = leave_one_group_out(groups[rows])
            fits, oofs, params = [], [], {}
            for name, kind, grid, features in members:
                preds = _grid_oof(kind, features, grid, x, rows, z, folds)
                mses = [float(np.mean((_sigmoid(p) - scores[rows, k]) ** 2)) for p in preds]
                best = int(np.argmin(mses))  # first of equals: the grid's order breaks ties
                params[name] = grid[best]
                learner = _kernel_ridge(*grid[best]) if kind == "kernel_ridge" else _ridge(grid[best])
                fits.append(_member(learner, features, train)(x, rows, z))
                oofs.append(preds[best])
            base_fits[k] = fits
            base_oof[k] = np.mean(oofs, axis=0)
            chosen[k] = params

        def base_logits(xn: np.ndarray) -> np.ndarray:
            return np.column_stack([np.mean([f(xn) for f in base_fits[k]], axis=0) for k in benches])

        # stacking features of every reference row: out-of-group where the row is scored
        # for that benchmark, else the full fit's prediction (it was not trained on it)
        feats = base_logits(d)
        for c, k in enumerate(benches):
            feats[ok[:, k], c] = base_oof[k]
        fitted: dict[int, FittedPredictor] = {}
        heads: dict[int, np.ndarray] = {}
        for c, k in enumerate(benches):
            rows = np.flatnonzero(ok[:, k])
            f, y, z = feats[rows], scores[rows, k], _logit(scores[rows, k])
            folds = leave_one_group_out(groups[rows])
            best = None
            for lam in _STACK_LAMBDAS:
                pred = np.empty_like(z)
                for tr, te in folds:
                    wb = _shrunk_stack(f[tr], z[tr], c, lam)
                    pred[te] = f[te] @ wb[:-1] + wb[-1]
                mse = float(np.mean((_sigmoid(pred) - y) ** 2))
                if best is None or mse < best[0]:
                    best = (mse, lam, pred)
            assert best is not None
            half = conformal_quantile(y - _sigmoid(best[2]), self.coverage)
            wb = heads[k] = _shrunk_stack(f, z, c, best[1])
            predict = lambda xn, wb=wb: _sigmoid(base_logits(xn) @ wb[:-1] + wb[-1])  # noqa: E731
            params = dict(chosen[k])
            params["stack_shrinkage"] = best[1]
            params["stack_weights"] = {str(kk): float(w) for kk, w in zip(benches, wb[:-1])}
            fitted[k] = FittedPredictor(self.method, n, half, self.coverage, params, predict)

        def predict_all(xn: np.ndarray) -> dict[int, np.ndarray]:
            memo: dict = {}
            base = np.column_stack([np.mean([f.shared(xn, memo) for f in base_fits[k]], axis=0)
                                    for k in benches])
            return {k: _sigmoid(base @ wb[:-1] + wb[-1]) for k, wb in heads.items()}

        return JointFit(np.arange(n), fitted, predict_all)

    def fit(self, d: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FittedPredictor:
        """One benchmark alone (no other benchmark to stack with): the base ensemble."""
        d, y, groups = _check_fit_inputs(d, y, groups)
        return self.fit_joint(d, y[:, None], groups).fitted[0]
