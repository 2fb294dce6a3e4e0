"""Estimates on insert: fitted predictors kept between updates, so that an unscored model
costs one prediction per benchmark.

``estimate_scores`` is the one path from (distance matrix, measured scores) to estimates;
it returns plain ``ScoreEstimate`` values, which the catalog side turns into its records
(labelled with the tree snapshot they were computed at). ``FittedPredictors`` holds the
fits, keyed by the scored training set: the fitted predictor of a benchmark depends only
on D restricted to the models that have that score, so inserting an unscored model leaves
every other estimate unchanged, and a refit happens only when the scored set changes.
``KinshipStack`` keeps one fit for all benchmarks over the models indexed at fit time (its
anchors); by default a new model refits it so that the new model is an anchor, as in the
validation, unless ``FittedPredictors.anchor_refit_fraction`` says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from indexer.core.distance import check_matrix
from indexer.core.predict.base import FittedPredictor, cluster_groups
from indexer.core.predict.registry import DEFAULT_METHOD, get_predictor


@dataclass(frozen=True)
class ScoreEstimate:
    """One estimated benchmark score of a model with its interval (fractions in [0, 1],
    ``low <= estimate <= high``) and the method that made it."""

    model_id: str
    benchmark: str
    estimate: float
    low: float
    high: float
    method: str


@dataclass
class FittedPredictors:
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


def estimate_scores(D: np.ndarray, ids: Sequence[str],
                    scores: Mapping[tuple[str, str], float],
                    changed: set[str] | None = None,
                    method: str = DEFAULT_METHOD,
                    groups: Mapping[str, str] | None = None,
                    cache: FittedPredictors | None = None) -> list[ScoreEstimate]:
    """Estimates for every (model, benchmark) without a measured score.

    ``D`` is the index's n x n distance matrix in the order of ``ids``; ``scores`` maps
    (model_id, benchmark) to a measured value. With ``changed=None`` every unscored model
    is estimated; with a set, only those models (a fresh insert: its own estimates are the
    only ones that change, because a fit depends on the scored models alone, unless the
    cache had to refit, in which case every unscored model of that benchmark is returned).
    CV groups: ``groups`` (model id -> family/author) when given, else clades of D.
    Cost per insert with a warm cache: O(n) per benchmark for the per-benchmark methods.
    ``kinship-stack`` refits on an insert by default (see ``FittedPredictors``: its features
    include the distances to the new model); with ``anchor_refit_fraction > 0`` an insert
    costs O(m * n_s * n).
    """
    D, ids = check_matrix(D, ids)
    pos = {m: i for i, m in enumerate(ids)}
    benches = sorted({b for _, b in scores})
    predictor = get_predictor(method)
    cache = cache if cache is not None else FittedPredictors()
    if getattr(predictor, "joint", False):
        return _estimate_joint(D, ids, pos, scores, changed, method, predictor, groups, benches, cache)
    out: list[ScoreEstimate] = []
    for bench in benches:
        scored = sorted((m for (m, b) in scores if b == bench and m in pos), key=pos.__getitem__)
        if len(scored) < 3:
            continue
        y = tuple(float(scores[(m, bench)]) for m in scored)
        train_ids = tuple(scored)
        hit = cache.get(method, bench, train_ids, y)
        refitted = hit is None
        if hit is None:
            itr = np.array([pos[m] for m in train_ids])
            block = D[np.ix_(itr, itr)]
            if groups is not None:
                g = np.array([groups.get(m, m) for m in train_ids])
            else:
                g = cluster_groups(block)
            fitted = predictor.fit(block, np.array(y), g)
            cache.put(method, bench, train_ids, y, fitted)
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
            out.append(ScoreEstimate(m, bench, float(e), float(lo), float(hi), fitted.method))
    return out


_JOINT = "*"  # the cache slot of a joint predictor: one fit serves every benchmark


def _estimate_joint(D: np.ndarray, ids: list[str], pos: dict[str, int],
                    scores: Mapping[tuple[str, str], float], changed: set[str] | None,
                    method: str, predictor, groups: Mapping[str, str] | None,
                    benches: list[str], cache: FittedPredictors) -> list[ScoreEstimate]:
    """``estimate_scores`` for a joint predictor: one fit over every benchmark.

    The fit's reference models (anchors) are every model indexed at fit time; the cache
    key is the set of (model, benchmark) scores plus the anchor policy of ``FittedPredictors``
    (by default a model that is not an anchor triggers a refit; with a positive
    ``anchor_refit_fraction`` an unscored insert costs one prediction from the new model's
    distances to the anchors).
    """
    keys = sorted(((m, b) for (m, b) in scores if m in pos and b in benches),
                  key=lambda k: (pos[k[0]], k[1]))
    score_ids = tuple(f"{m}\t{b}" for m, b in keys)
    y = tuple(float(scores[k]) for k in keys)
    hit = cache.get(method, _JOINT, score_ids, y)
    if hit is not None:
        anchor_set = set(hit[1][0])
        if not anchor_set.issubset(pos):
            hit = None  # a reference model left the index: its distances are gone
        elif len(pos) - len(anchor_set) > cache.anchor_refit_fraction * len(anchor_set):
            hit = None  # too many models are not anchors yet (see FittedPredictors)
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
        cache.put(method, _JOINT, score_ids, y, (anchors, fitted))
    else:
        anchors, fitted = hit[1]
    scored = {(m, b) for m, b in keys}
    cols = np.array([pos[a] for a in anchors])
    out: list[ScoreEstimate] = []
    for bench, fit in fitted.items():
        targets = [m for m in ids if (m, bench) not in scored
                   and (refitted or changed is None or m in changed)]
        if not targets:
            continue
        rows = np.array([pos[m] for m in targets])
        est, low, high = fit.predict(D[np.ix_(rows, cols)])
        for m, e, lo, hi in zip(targets, est, low, high):
            out.append(ScoreEstimate(m, bench, float(e), float(lo), float(hi), fit.method))
    return out
