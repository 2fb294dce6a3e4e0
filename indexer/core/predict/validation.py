"""Validation: leave-one-family-out on a scored matrix, the protocol of the PhyloLM paper."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from indexer.core.predict.base import BENCHMARKS, cluster_groups
from indexer.core.predict.predictors import KinshipEnsemble, PaperICA
from indexer.core.predict.registry import get_predictor
from indexer.core.predict.stack import KinshipStack

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


def leave_one_family_out_frozen(D: np.ndarray, scores: np.ndarray, families: Sequence[str], predictor,
                                unscored_anchors: bool = True) -> list[dict[str, np.ndarray]]:
    """``leave_one_family_out_joint`` as a frozen fit sees a newly indexed family: the
    held-out family is not among the anchors (its distances are not features of the fit,
    as for a model inserted after the last refit; ``indexer.core.predict.refresh``). The
    anchors are the other scored models, plus every model without any score when
    ``unscored_anchors`` (else the scored models only: the capped anchor set with no
    sample). Same output as ``leave_one_family_out_joint``."""
    D = np.asarray(D, dtype=float)
    scores = np.asarray(scores, dtype=float)
    fam = np.asarray(families)
    scored_any = np.isfinite(scores).any(1)
    pred = np.full(scores.shape + (3,), np.nan)
    for family in np.unique(fam[scored_any]):
        held = fam == family
        anchors = np.flatnonzero(~held & (scored_any | unscored_anchors))
        joint = predictor.fit_joint(D[np.ix_(anchors, anchors)], scores[anchors], fam[anchors])
        rows = np.flatnonzero(held)
        for j, fitted in joint.fitted.items():
            e, lo, hi = fitted.predict(D[np.ix_(rows, anchors[joint.anchors])])
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
