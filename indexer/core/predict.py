"""Benchmark estimates from phylogenetic distances (domain core: numpy in, arrays out).

A model that nobody has evaluated still has a row of the distance matrix D: its distances
to every indexed model. PhyloLM (Yax et al. 2024, section 5) shows that benchmark scores
are predictable from that row. Three predictors share one interface:

* ``PaperICA`` -- the paper's baseline as its authors' code runs it: FastICA with 15
  components (``random_state=42``) fitted on the rows of D restricted to the training
  models (features are distances to training models), then one linear unit with a sigmoid
  output trained by full-batch Adam (lr 1e-3, weight decay 0.01, 1000 epochs, MSE,
  Xavier-uniform initialisation).
* ``KinshipEnsemble`` -- this project's first predictor: on the logit of the score, the average
  of three learners on the same features, kernel ridge regression (RBF on distance rows),
  linear ridge regression, and a similarity-weighted k-nearest-relatives mean. Each
  learner's hyper-parameters are chosen by an inner leave-one-group-out cross-validation
  run on the training models only.
* ``KinshipStack`` -- the default: per benchmark, the same kind of tuned ensemble but with
  features that also include the distances to unscored indexed models (transductive in
  the features, never in the labels), then cross-benchmark stacking: each benchmark's
  estimate combines the out-of-group predictions of every benchmark, with weights shrunk
  toward its own by an amount chosen in an inner cross-validation. The six leaderboard
  benchmarks share one capability axis, so a weakly predictable benchmark (TruthfulQA)
  borrows strength from well predicted ones (MMLU, GSM8K).

Every estimate carries a 90% interval: the estimate plus or minus the conformal quantile
(the ceil((1-a)(n+1))-th smallest value) of the absolute residuals of the inner
leave-one-group-out predictions, i.e. the errors the predictor made on whole held-out
groups of the training set. Under a shift to a family never seen, exchangeability does
not hold exactly; ``validate`` measures the coverage actually obtained.

``refresh_estimates`` keeps fitted predictors in a cache keyed by the scored training
set: the fitted predictor of a benchmark depends only on D restricted to the models that
have that score, so inserting an unscored model costs one O(n) prediction per benchmark
and leaves every other estimate unchanged. A refit happens only when the scored set
changes (see ``EstimateCache``). ``KinshipStack`` keeps one fit for all benchmarks over the
models indexed at fit time (its anchors); by default a new model refits it so that the new
model is an anchor, as in the validation, unless ``EstimateCache.anchor_refit_fraction``
says otherwise.

No I/O happens here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from indexer.core.distance import check_matrix
from schemas.records import Estimate

BENCHMARKS: tuple[str, ...] = ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k")
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


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (O(|a||b|p))."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
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


# ---------------------------------------------------------------------------------------
# learners: fit(X_train, y_train) -> predict(X_new); X rows are distances to training models
# ---------------------------------------------------------------------------------------
Learner = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _kernel_ridge(gamma: float, alpha: float) -> Learner:
    """Kernel ridge, RBF kernel on distance rows; gamma is per feature (scaled by 1/p)."""

    def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        g = gamma / x.shape[1]
        k = np.exp(-g * _sq_dists(x, x))
        k[np.diag_indices_from(k)] += alpha
        mean = y.mean()
        coef = np.linalg.solve(k, y - mean)
        return lambda xn: np.exp(-g * _sq_dists(xn, x)) @ coef + mean

    return fit


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
            order = np.argsort(xn, axis=1, kind="stable")[:, :kk]
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


# ---------------------------------------------------------------------------------------
# predictors: fit on (D among training models, scores, groups) -> FittedPredictor
# ---------------------------------------------------------------------------------------
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
        est = np.clip(self._predict(x), 0.0, 1.0)
        return est, np.clip(est - self.half_width, 0.0, 1.0), np.clip(est + self.half_width, 0.0, 1.0)


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


class PaperICA:
    """The PhyloLM paper's predictor: FastICA(15) on distance rows + linear/sigmoid layer."""

    method = "paper-ica15-linear"

    def __init__(self, n_components: int = 15, coverage: float = DEFAULT_COVERAGE,
                 random_state: int = 42, calibrate: bool = True) -> None:
        self.n_components = n_components
        self.coverage = coverage
        self.random_state = random_state
        self.calibrate = calibrate

    def _learner(self) -> Learner:
        from sklearn.decomposition import FastICA

        head = _paper_linear_sigmoid()

        def fit(x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            k = min(self.n_components, x.shape[0], x.shape[1])
            ica = FastICA(n_components=k, random_state=self.random_state)
            with warnings.catch_warnings():  # FastICA warns on slow convergence, as upstream
                warnings.simplefilter("ignore")
                z = ica.fit_transform(x)
            out = head(z, y)
            return lambda xn: out(ica.transform(xn))

        return fit

    def fit(self, d: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FittedPredictor:
        """Fit on D among n training models (n x n), scores y (n,), CV groups (n,)."""
        d, y, groups = _check_fit_inputs(d, y, groups)
        learner = self._learner()
        half = math.inf
        if self.calibrate:
            inner = _inner_predictions(learner, d, y, leave_one_group_out(groups), transform=False)
            half = conformal_quantile(y - inner, self.coverage)
        return FittedPredictor(self.method, y.size, half, self.coverage,
                               {"n_components": self.n_components}, learner(d, y))


_KRR_GRID = tuple((g, a) for g in (0.25, 0.8, 2.5) for a in (0.03, 0.1, 0.3))
_RIDGE_GRID = (0.3, 1.0, 3.0, 10.0)
_KNN_GRID = (2, 3, 5)


class KinshipEnsemble:
    """This project's first predictor: tuned kernel ridge + ridge + nearest relatives, on logits.

    Fit cost: for each candidate hyper-parameter, one leave-one-group-out pass, i.e.
    O(|grid| * G * n^3) with G groups (n^3 from the kernel solves); predicting a row is O(n).
    """

    method = "kinship-ensemble"

    def __init__(self, coverage: float = DEFAULT_COVERAGE) -> None:
        self.coverage = coverage

    def fit(self, d: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FittedPredictor:
        d, y, groups = _check_fit_inputs(d, y, groups)
        folds = leave_one_group_out(groups)
        chosen: dict[str, object] = {}
        members: list[Learner] = []
        inner_preds: list[np.ndarray] = []
        for name, grid, make in (
            ("kernel_ridge", _KRR_GRID, lambda p: _kernel_ridge(*p)),
            ("ridge", _RIDGE_GRID, _ridge),
            ("nearest_k", _KNN_GRID, _nearest_relatives),
        ):
            best = None
            for p in grid:
                pred = _inner_predictions(make(p), d, y, folds, transform=True)
                mse = float(np.mean((pred - y) ** 2))
                if best is None or mse < best[0]:
                    best = (mse, p, pred)
            assert best is not None
            chosen[name] = best[1]
            members.append(make(best[1]))
            inner_preds.append(best[2])
        # The ensemble's own out-of-group predictions: members' predictions averaged on
        # the logit scale, as the fitted ensemble averages them.
        inner = _sigmoid(np.mean([_logit(p) for p in inner_preds], axis=0))
        half = conformal_quantile(y - inner, self.coverage)
        z = _logit(y)
        fitted = [m(d, z) for m in members]
        predict = lambda xn: _sigmoid(np.mean([f(xn) for f in fitted], axis=0))  # noqa: E731
        return FittedPredictor(self.method, y.size, half, self.coverage, chosen, predict)


# ---------------------------------------------------------------------------------------
# joint predictor: all benchmarks at once, features = distances to every indexed model
# ---------------------------------------------------------------------------------------
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


def _member(learner: Learner, features: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Member:
    def fit(x: np.ndarray, rows: np.ndarray, z: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        f = learner(features(x, rows), z)
        return lambda xn: f(features(xn, rows))

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
        base_fits: dict[int, list[Callable[[np.ndarray], np.ndarray]]] = {}
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
                fits.append(_member(learner, features)(x, rows, z))
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
            wb = _shrunk_stack(f, z, c, best[1])
            predict = lambda xn, wb=wb: _sigmoid(base_logits(xn) @ wb[:-1] + wb[-1])  # noqa: E731
            params = dict(chosen[k])
            params["stack_shrinkage"] = best[1]
            params["stack_weights"] = {str(kk): float(w) for kk, w in zip(benches, wb[:-1])}
            fitted[k] = FittedPredictor(self.method, n, half, self.coverage, params, predict)
        return JointFit(np.arange(n), fitted)

    def fit(self, d: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FittedPredictor:
        """One benchmark alone (no other benchmark to stack with): the base ensemble."""
        d, y, groups = _check_fit_inputs(d, y, groups)
        return self.fit_joint(d, y[:, None], groups).fitted[0]


PREDICTORS: dict[str, Callable[[], object]] = {
    PaperICA.method: PaperICA,
    KinshipEnsemble.method: KinshipEnsemble,
    KinshipStack.method: KinshipStack,
}
DEFAULT_METHOD = KinshipStack.method


def get_predictor(method: str):
    """A predictor by its method name (``paper-ica15-linear``, ``kinship-ensemble``, ``kinship-stack``)."""
    try:
        return PREDICTORS[method]()
    except KeyError:
        raise ValueError(f"unknown estimate method {method!r}; known: {', '.join(PREDICTORS)}") from None


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


# ---------------------------------------------------------------------------------------
# validation: leave-one-family-out on a scored matrix
# ---------------------------------------------------------------------------------------
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else float("nan")


def leave_one_family_out(D: np.ndarray, y: np.ndarray, families: Sequence[str], predictor,
                         inner_groups: str = "families") -> dict[str, np.ndarray]:
    """Held-out predictions for every model with a score (NaN in ``y`` = no score).

    Each family in turn is removed; the predictor is fitted on the remaining scored models
    (features: their distances to each other; inner CV groups: their families) and predicts
    the removed family from its distances to them, as the PhyloLM paper evaluates.
    Returns index, truth, estimate, low, high arrays.
    """
    D = np.asarray(D, dtype=float)
    y = np.asarray(y, dtype=float)
    fam = np.asarray(families)
    keep = np.flatnonzero(np.isfinite(y))
    truth = y[keep]
    f = fam[keep]
    est = np.empty(keep.size)
    low = np.empty(keep.size)
    high = np.empty(keep.size)
    for family in np.unique(f):
        te = f == family
        tr = ~te
        itr, ite = keep[tr], keep[te]
        groups = f[tr] if inner_groups == "families" else cluster_groups(D[np.ix_(itr, itr)])
        fitted = predictor.fit(D[np.ix_(itr, itr)], truth[tr], groups)
        est[te], low[te], high[te] = fitted.predict(D[np.ix_(ite, itr)])
    return {"index": keep, "truth": truth, "estimate": est, "low": low, "high": high}


def leave_one_family_out_joint(D: np.ndarray, scores: np.ndarray, families: Sequence[str],
                               predictor) -> list[dict[str, np.ndarray]]:
    """``leave_one_family_out`` for a joint predictor (``fit_joint``), every benchmark at once.

    Each family in turn has ALL its scores hidden (every benchmark: its other scores would
    otherwise leak through the cross-benchmark stacking). The predictor is fitted on the
    whole matrix D (the held-out models' distances are known at prediction time, as they
    are for any newly indexed model; only their scores are hidden), with the families as
    inner CV groups, and predicts the hidden family. One result per score column, in the
    format of ``leave_one_family_out``.
    """
    D = np.asarray(D, dtype=float)
    scores = np.asarray(scores, dtype=float)
    fam = np.asarray(families)
    pred = np.full(scores.shape + (3,), np.nan)
    scored_families = np.unique(fam[np.isfinite(scores).any(1)])
    for family in scored_families:
        held = fam == family
        hidden = scores.copy()
        hidden[held] = np.nan
        joint = predictor.fit_joint(D, hidden, fam)
        for j, fitted in joint.fitted.items():
            e, lo, hi = fitted.predict(D[np.ix_(np.flatnonzero(held), joint.anchors)])
            pred[held, j] = np.column_stack([e, lo, hi])
    out = []
    for j in range(scores.shape[1]):
        keep = np.flatnonzero(np.isfinite(scores[:, j]))
        out.append({"index": keep, "truth": scores[keep, j], "estimate": pred[keep, j, 0],
                    "low": pred[keep, j, 1], "high": pred[keep, j, 2]})
    return out


def validate(D: np.ndarray, scores: np.ndarray, families: Sequence[str],
             benchmarks: Sequence[str] = BENCHMARKS,
             methods: Sequence[str] = (PaperICA.method, KinshipEnsemble.method, KinshipStack.method)
             ) -> dict:
    """Leave-one-family-out validation of each method on each benchmark.

    ``scores`` is n x len(benchmarks) with NaN where a model has no score. Returns, per
    method and benchmark, the pooled Pearson r, RMSE, the number of models and the share
    of held-out scores inside the 90% interval; and per method the mean r and overall
    coverage.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (D.shape[0], len(benchmarks)):
        raise ValueError(f"scores must be {D.shape[0]}x{len(benchmarks)}, got {scores.shape}")
    out: dict = {"methods": {}}
    for method in methods:
        predictor = get_predictor(method)
        rows = {}
        inside = total = 0
        joint = (leave_one_family_out_joint(D, scores, families, predictor)
                 if getattr(predictor, "joint", False) else None)
        for j, bench in enumerate(benchmarks):
            res = joint[j] if joint is not None else leave_one_family_out(D, scores[:, j], families, predictor)
            t, e = res["truth"], res["estimate"]
            hit = (res["low"] <= t) & (t <= res["high"])
            inside += int(hit.sum())
            total += t.size
            rows[bench] = {"r": _pearson(e, t), "rmse": float(np.sqrt(np.mean((e - t) ** 2))),
                           "n": int(t.size), "coverage": float(hit.mean()),
                           "mean_width": float(np.mean(res["high"] - res["low"]))}
        out["methods"][method] = {
            "benchmarks": rows,
            "mean_r": float(np.mean([r["r"] for r in rows.values()])),
            "coverage": inside / total if total else float("nan"),
        }
    return out


# ---------------------------------------------------------------------------------------
# refresh on insert
# ---------------------------------------------------------------------------------------
@dataclass
class EstimateCache:
    """Fitted predictors per (method, benchmark), keyed by the scored training set.

    A fit depends only on D among the scored models, their scores and the CV groups, so
    the key is the tuple of training ids with their scores. Unscored inserts never
    invalidate it. When scored models are added, the old fit stays valid for prediction
    (it simply does not use the new scores) until ``refit_fraction`` of the training set
    is new, then one refit runs: with fit cost c*n^3, refits every f*n scored inserts
    cost c*n^2/f amortised per scored insert. ``refit_fraction=0`` refits on every change.

    A joint predictor (``kinship-stack``) also uses the distances to every model indexed
    at fit time (its anchors); a model indexed later is estimated from its distances to
    those anchors without being one. The leave-one-family-out figures assume the estimated
    model is an anchor (a new family helps define the features; without that the mean r
    drops from 0.805 to 0.757 on the paper data), so by default an insert of a model that
    is not an anchor refits (``anchor_refit_fraction=0``); a positive value reuses the fit
    until that fraction of the anchors is new, trading accuracy on new families for an
    O(m * n_s * n) insert.
    """

    refit_fraction: float = 0.0
    anchor_refit_fraction: float = 0.0
    # per-benchmark methods store a FittedPredictor; joint ones (anchor ids, {bench: fit})
    fits: dict[tuple[str, str], tuple[tuple[str, ...], tuple[float, ...], object]] = field(
        default_factory=dict)
    n_fits: int = 0

    def get(self, method: str, bench: str, train_ids: tuple[str, ...], y: tuple[float, ...]
            ) -> tuple[tuple[str, ...], FittedPredictor] | None:
        hit = self.fits.get((method, bench))
        if hit is None:
            return None
        ids, scores, fitted = hit
        if ids == train_ids and scores == y:
            return ids, fitted
        now = dict(zip(train_ids, y))
        old_ok = all(now.get(i) == s for i, s in zip(ids, scores))  # no score removed/changed
        new = len(set(train_ids) - set(ids))
        if old_ok and self.refit_fraction > 0 and new < self.refit_fraction * max(1, len(ids)):
            return ids, fitted
        return None

    def put(self, method: str, bench: str, train_ids: tuple[str, ...], y: tuple[float, ...],
            fitted: FittedPredictor) -> None:
        self.fits[(method, bench)] = (train_ids, y, fitted)
        self.n_fits += 1


def refresh_estimates(D: np.ndarray, ids: Sequence[str],
                      scores: Mapping[tuple[str, str], float],
                      changed: set[str] | None = None, snapshot: int | None = None,
                      model: str = DEFAULT_METHOD,
                      groups: Mapping[str, str] | None = None,
                      benchmarks: Sequence[str] | None = None,
                      cache: EstimateCache | None = None) -> list[Estimate]:
    """Estimates for every (model, benchmark) without a measured score.

    ``D`` is the index's n x n distance matrix in the order of ``ids``; ``scores`` maps
    (model_id, benchmark) to a measured value. With ``changed=None`` every unscored model
    is estimated; with a set, only those models (a fresh insert: its own estimates are the
    only ones that change, because a fit depends on the scored models alone, unless the
    cache had to refit, in which case every unscored model of that benchmark is returned).
    CV groups: ``groups`` (model id -> family/author) when given, else clades of D.
    Cost per insert with a warm cache: O(n) per benchmark for the per-benchmark methods.
    ``kinship-stack`` refits on an insert by default (see ``EstimateCache``: its features
    include the distances to the new model); with ``anchor_refit_fraction > 0`` an insert
    costs O(m * n_s * n).
    """
    D, ids = check_matrix(D, ids)
    pos = {m: i for i, m in enumerate(ids)}
    benches = list(benchmarks) if benchmarks is not None else sorted({b for _, b in scores})
    predictor = get_predictor(model)
    cache = cache if cache is not None else EstimateCache()
    if getattr(predictor, "joint", False):
        return _refresh_joint(D, ids, pos, scores, changed, snapshot, model, predictor, groups,
                              benches, cache)
    out: list[Estimate] = []
    for bench in benches:
        scored = sorted((m for (m, b) in scores if b == bench and m in pos), key=pos.__getitem__)
        if len(scored) < 3:
            continue
        y = tuple(float(scores[(m, bench)]) for m in scored)
        train_ids = tuple(scored)
        hit = cache.get(model, bench, train_ids, y)
        refitted = hit is None
        if hit is None:
            itr = np.array([pos[m] for m in train_ids])
            block = D[np.ix_(itr, itr)]
            if groups is not None:
                g = np.array([groups.get(m, m) for m in train_ids])
            else:
                g = cluster_groups(block)
            fitted = predictor.fit(block, np.array(y), g)
            cache.put(model, bench, train_ids, y, fitted)
            fit_ids = train_ids
        else:
            fit_ids, fitted = hit
        scored_set = set(scored)
        targets = [m for m in ids if m not in scored_set
                   and (refitted or changed is None or m in changed)]
        if not targets:
            continue
        rows = np.array([pos[m] for m in targets])
        cols = np.array([pos[m] for m in fit_ids])
        est, low, high = fitted.predict(D[np.ix_(rows, cols)])
        for m, e, lo, hi in zip(targets, est, low, high):
            out.append(Estimate(model_id=m, benchmark=bench, estimate=float(e), low=float(lo),
                                high=float(hi), method=fitted.method, snapshot=snapshot))
    return out


_JOINT = "*"  # the cache slot of a joint predictor: one fit serves every benchmark


def _refresh_joint(D: np.ndarray, ids: list[str], pos: dict[str, int],
                   scores: Mapping[tuple[str, str], float], changed: set[str] | None,
                   snapshot: int | None, model: str, predictor, groups: Mapping[str, str] | None,
                   benches: list[str], cache: EstimateCache) -> list[Estimate]:
    """``refresh_estimates`` for a joint predictor: one fit over every benchmark.

    The fit's reference models (anchors) are every model indexed at fit time; the cache
    key is the set of (model, benchmark) scores plus the anchor policy of ``EstimateCache``
    (by default a model that is not an anchor triggers a refit; with a positive
    ``anchor_refit_fraction`` an unscored insert costs one prediction from the new model's
    distances to the anchors).
    """
    keys = sorted(((m, b) for (m, b) in scores if m in pos and b in benches),
                  key=lambda k: (pos[k[0]], k[1]))
    score_ids = tuple(f"{m}\t{b}" for m, b in keys)
    y = tuple(float(scores[k]) for k in keys)
    hit = cache.get(model, _JOINT, score_ids, y)
    if hit is not None:
        anchor_set = set(hit[1][0])
        if not anchor_set.issubset(pos):
            hit = None  # a reference model left the index: its distances are gone
        elif len(pos) - len(anchor_set) > cache.anchor_refit_fraction * len(anchor_set):
            hit = None  # too many models are not anchors yet (see EstimateCache)
    refitted = hit is None
    if hit is None:
        matrix = np.full((len(ids), len(benches)), np.nan)
        col = {b: j for j, b in enumerate(benches)}
        for (m, b), v in zip(keys, y):
            matrix[pos[m], col[b]] = v
        g = (np.array([groups.get(m, m) for m in ids]) if groups is not None
             else cluster_groups(D))
        joint = predictor.fit_joint(D, matrix, g)
        anchors = tuple(ids[i] for i in joint.anchors)
        fitted = {benches[j]: f for j, f in joint.fitted.items()}
        cache.put(model, _JOINT, score_ids, y, (anchors, fitted))
    else:
        anchors, fitted = hit[1]
    scored = {(m, b) for m, b in keys}
    cols = np.array([pos[a] for a in anchors])
    out: list[Estimate] = []
    for bench, fit in fitted.items():
        targets = [m for m in ids if (m, bench) not in scored
                   and (refitted or changed is None or m in changed)]
        if not targets:
            continue
        rows = np.array([pos[m] for m in targets])
        est, low, high = fit.predict(D[np.ix_(rows, cols)])
        for m, e, lo, hi in zip(targets, est, low, high):
            out.append(Estimate(model_id=m, benchmark=bench, estimate=float(e), low=float(lo),
                                high=float(hi), method=fit.method, snapshot=snapshot))
    return out
