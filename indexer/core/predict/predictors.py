"""Per-benchmark predictors: fit on (D among the training models, scores, CV groups) and
return a ``FittedPredictor``. ``PaperICA`` is the paper's baseline, ``KinshipEnsemble`` this
project's first predictor (see the package docstring)."""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np

from indexer.core.predict.base import (DEFAULT_COVERAGE, FittedPredictor, _check_fit_inputs, _logit, _sigmoid,
                                       conformal_quantile, leave_one_group_out)
from indexer.core.predict.learners import (Learner, _inner_predictions, _kernel_ridge, _nearest_relatives,
                                           _paper_linear_sigmoid, _ridge)

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
