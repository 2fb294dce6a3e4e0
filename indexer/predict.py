"""Benchmark estimates from phylogenetic distances (domain core: numpy in, arrays out).

A model that nobody has evaluated still has a row of the distance matrix D: its distances
to every indexed model. PhyloLM (Yax et al. 2024, section 5) shows that benchmark scores
are predictable from that row. Two predictors share one interface:

* ``PaperICA`` -- the paper's baseline as its authors' code runs it: FastICA with 15
  components (``random_state=42``) fitted on the rows of D restricted to the training
  models (features are distances to training models), then one linear unit with a sigmoid
  output trained by full-batch Adam (lr 1e-3, weight decay 0.01, 1000 epochs, MSE,
  Xavier-uniform initialisation).
* ``KinshipEnsemble`` -- this project's predictor: on the logit of the score, the average
  of three learners on the same features, kernel ridge regression (RBF on distance rows),
  linear ridge regression, and a similarity-weighted k-nearest-relatives mean. Each
  learner's hyper-parameters are chosen by an inner leave-one-group-out cross-validation
  run on the training models only.

Every estimate carries a 90% interval: the estimate plus or minus the conformal quantile
(the ceil((1-a)(n+1))-th smallest value) of the absolute residuals of the inner
leave-one-group-out predictions, i.e. the errors the predictor made on whole held-out
groups of the training set. Under a shift to a family never seen, exchangeability does
not hold exactly; ``validate`` measures the coverage actually obtained.

``refresh_estimates`` keeps fitted predictors in a cache keyed by the scored training
set: the fitted predictor of a benchmark depends only on D restricted to the models that
have that score, so inserting an unscored model costs one O(n) prediction per benchmark
and leaves every other estimate unchanged. A refit happens only when the scored set
changes (see ``EstimateCache``).

No I/O happens here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

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
    """This project's predictor: tuned kernel ridge + ridge + nearest relatives, on logits.

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


PREDICTORS: dict[str, Callable[[], object]] = {
    PaperICA.method: PaperICA,
    KinshipEnsemble.method: KinshipEnsemble,
}


def get_predictor(method: str):
    """A predictor by its method name (``paper-ica15-linear`` or ``kinship-ensemble``)."""
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


def validate(D: np.ndarray, scores: np.ndarray, families: Sequence[str],
             benchmarks: Sequence[str] = BENCHMARKS,
             methods: Sequence[str] = (PaperICA.method, KinshipEnsemble.method)) -> dict:
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
        for j, bench in enumerate(benchmarks):
            res = leave_one_family_out(D, scores[:, j], families, predictor)
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
    """

    refit_fraction: float = 0.0
    fits: dict[tuple[str, str], tuple[tuple[str, ...], tuple[float, ...], FittedPredictor]] = field(
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
                      model: str = KinshipEnsemble.method,
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
    Cost per insert with a warm cache: O(n) per benchmark.
    """
    D = np.asarray(D, dtype=float)
    ids = list(ids)
    n = len(ids)
    if D.shape != (n, n):
        raise ValueError(f"D is {D.shape}, expected {n}x{n} for {n} ids")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    pos = {m: i for i, m in enumerate(ids)}
    benches = list(benchmarks) if benchmarks is not None else sorted({b for _, b in scores})
    predictor = get_predictor(model)
    cache = cache if cache is not None else EstimateCache()
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
