"""Estimates refreshed per insert without an n x n matrix: a frozen fit over a bounded
reference set, predictions from the distances to that set only, refits off the write path.

``estimate_scores`` (the exact mode's path) takes the whole distance matrix and, for the
joint ``kinship-stack``, refits on every insert so that the new model is an anchor. At Hub
scale neither is possible on the write path. Here:

* ``fit_reference`` fits once on the distances among a **reference set** only, obtained
  through a callback ``distances(ids_a, ids_b) -> block`` (an index computes blocks on
  demand): for a per-benchmark method the reference set is the union of the scored models
  (each benchmark's fit is exactly ``estimate_scores``' fit on the same scored models); for
  a joint method it is the anchors, **every scored model plus at most ``max_anchors``
  minus that many unscored models drawn at random** (all models while the index has at most
  ``max_anchors``, which is then exactly ``estimate_scores``' joint fit). Cost: O(r^2)
  distances plus the fit, O(m * G * (n_s^2 r + |grid| n_s^3)) for the joint method.
* ``ReferenceFit.predict`` estimates new models from their distances to the reference set:
  O(|reference set|) distances and O(m * n_s * r) arithmetic per model, whatever n.
* ``RefreshingEstimates`` holds the fit, frozen between refits, and says when one is due
  (``RefitPolicy``: after ``every_inserts`` inserts, or when the scores changed by more than
  ``scored_fraction``, or a reference model left). The refit itself is an explicit call
  (``refit``, pure, safe in another thread), installed by ``swap`` under a lock: a
  prediction uses the fit that was installed when it started, never half of two.

What the cap costs in accuracy, measured on the paper's 127 models (89 scored) with the
protocol of ``phylolm bench estimates`` (each scored family's scores hidden in turn;
``validation.leave_one_family_out_frozen``): the exact path's kinship-stack, where the
estimated family is an anchor, has mean r 0.805 (90% coverage 0.919). A frozen fit in which
the estimated family is not an anchor: 0.757 (coverage 0.863) when every other model is an
anchor, 0.767 (coverage 0.857) when the anchors are the scored models only, i.e. an anchor
sample of unscored models brings no accuracy to a model outside it. So a model estimated at
its insert, or left out of the anchor sample at Hub scale, gets about 0.76-0.77 instead of
0.805 (the loss is on TruthfulQA, 0.30-0.35 against 0.52, and MMLU, 0.85 against 0.90);
while the index has at most ``max_anchors`` models a refit makes every model an anchor and
its estimates are the exact path's. ``phylolm bench estimates`` itself is unchanged (it
runs the exact path).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from indexer.core.predict.base import FittedPredictor, cluster_groups
from indexer.core.predict.estimates import ScoreEstimate
from indexer.core.predict.registry import DEFAULT_METHOD, get_predictor

Distances = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""``distances(ids_a, ids_b)``: the |a| x |b| block of PhyloLM distances between indexed models."""

DEFAULT_MAX_ANCHORS = 1024


@dataclass(frozen=True)
class ReferenceFit:
    """One frozen fit: the reference models a prediction needs distances to, and the fitted
    predictors over them. ``scores`` are the (model, benchmark) scores it was fitted on."""

    method: str
    reference: tuple[str, ...]
    # per benchmark: (positions of its training models in ``reference``, fitted predictor);
    # a joint method has one JointFit over every reference model instead
    heads: Mapping[str, tuple[np.ndarray, FittedPredictor]]
    joint: object | None  # stack.JointFit
    joint_benches: tuple[str, ...]
    scores: Mapping[tuple[str, str], float]
    n_indexed: int  # models in the index when fitted

    def predict(self, model_ids: Sequence[str], d_to_reference: np.ndarray,
                measured: Mapping[tuple[str, str], float] | None = None) -> list[ScoreEstimate]:
        """Estimates of ``model_ids`` from their distances to ``reference`` (rows in that
        order), leaving out any (model, benchmark) in ``measured`` (default: the fit's scores)."""
        measured = self.scores if measured is None else measured
        d = np.atleast_2d(np.asarray(d_to_reference, dtype=float))
        if d.shape != (len(model_ids), len(self.reference)):
            raise ValueError(f"need {len(model_ids)} x {len(self.reference)} distances, got {d.shape}")
        if not model_ids:
            return []
        out: list[ScoreEstimate] = []
        if self.joint is not None:
            for j, (est, low, high) in self.joint.predict_all(d).items():
                out += _records(model_ids, self.joint_benches[j], est, low, high,
                                self.joint.fitted[j].method, measured)
            return out
        for bench, (cols, fitted) in self.heads.items():
            est, low, high = fitted.predict(d[:, cols])
            out += _records(model_ids, bench, est, low, high, fitted.method, measured)
        return out


def _records(ids, bench, est, low, high, method, measured) -> list[ScoreEstimate]:
    return [ScoreEstimate(m, bench, float(e), float(lo), float(hi), method)
            for m, e, lo, hi in zip(ids, est, low, high) if (m, bench) not in measured]


def fit_reference(ids: Sequence[str], scores: Mapping[tuple[str, str], float], distances: Distances,
                  method: str = DEFAULT_METHOD, groups: Mapping[str, str] | None = None,
                  max_anchors: int = DEFAULT_MAX_ANCHORS, seed: int = 0) -> ReferenceFit:
    """Fit ``method`` on the distances among the reference set of the indexed ``ids``.

    ``scores``: (model, benchmark) -> measured value (models not in ``ids`` are ignored);
    ``groups``: CV group per model (else clades of the reference block, as
    ``estimate_scores``). The reference set keeps the order of ``ids``. A joint method's
    anchors are every scored model plus a seeded sample of unscored ones, ``max_anchors``
    in all (the scored models are never dropped). No I/O; safe to run in another thread
    when ``distances`` is.
    """
    ids = list(ids)
    pos = {m: i for i, m in enumerate(ids)}
    if len(pos) != len(ids):
        raise ValueError("ids must be distinct")
    scores = {k: float(v) for k, v in scores.items() if k[0] in pos}
    benches = sorted({b for _, b in scores})
    predictor = get_predictor(method)
    by_bench = {b: sorted((m for (m, bb) in scores if bb == b), key=pos.__getitem__) for b in benches}
    if getattr(predictor, "joint", False):
        scored = sorted({m for m, _ in scores}, key=pos.__getitem__)
        if len(ids) <= max_anchors:
            anchors = ids
        else:
            scored_set = set(scored)
            unscored = [i for i, m in enumerate(ids) if m not in scored_set]
            take = max(0, min(len(unscored), max_anchors - len(scored)))
            pick = np.random.default_rng(seed).choice(len(unscored), take, replace=False) if take else []
            chosen = scored_set | {ids[unscored[i]] for i in pick}
            anchors = [m for m in ids if m in chosen]
        benches = [b for b in benches if len(by_bench[b]) >= 3]
        if not benches:
            return ReferenceFit(method, (), {}, None, (), scores, len(ids))
        block = np.asarray(distances(anchors, anchors), dtype=float)
        at = {m: i for i, m in enumerate(anchors)}
        matrix = np.full((len(anchors), len(benches)), np.nan)
        for j, b in enumerate(benches):
            for m in by_bench[b]:
                matrix[at[m], j] = scores[(m, b)]
        g = (np.array([groups.get(m, m) for m in anchors]) if groups is not None else cluster_groups(block))
        joint = predictor.fit_joint(block, matrix, g)
        return ReferenceFit(method, tuple(anchors), {}, joint, tuple(benches), scores, len(ids))
    benches = [b for b in benches if len(by_bench[b]) >= 3]
    union = set().union(*(by_bench[b] for b in benches)) if benches else set()
    reference = [m for m in ids if m in union]
    at = {m: i for i, m in enumerate(reference)}
    block = np.asarray(distances(reference, reference), dtype=float) if reference else np.empty((0, 0))
    heads = {}
    for b in benches:
        cols = np.array([at[m] for m in by_bench[b]])
        sub = block[np.ix_(cols, cols)]
        g = (np.array([groups.get(m, m) for m in by_bench[b]]) if groups is not None else cluster_groups(sub))
        y = np.array([scores[(m, b)] for m in by_bench[b]])
        heads[b] = (cols, predictor.fit(sub, y, g))
    return ReferenceFit(method, tuple(reference), heads, None, (), scores, len(ids))


def estimate_all(fit: ReferenceFit, ids: Sequence[str], distances: Distances,
                 measured: Mapping[tuple[str, str], float] | None = None,
                 chunk: int = 2048) -> list[ScoreEstimate]:
    """Every estimate of ``ids`` under ``fit`` (what a refit refreshes): O(n * |reference|)
    distances, computed ``chunk`` models at a time (memory O(chunk * |reference|))."""
    ids = list(ids)
    out: list[ScoreEstimate] = []
    if not fit.reference:
        return out
    for lo in range(0, len(ids), chunk):
        part = ids[lo:lo + chunk]
        out += fit.predict(part, distances(part, fit.reference), measured)
    return out


@dataclass(frozen=True)
class RefitPolicy:
    """When the frozen fit is due for a refit: ``every_inserts`` inserts since it (0: never
    for inserts alone), or more than ``scored_fraction`` of its (model, benchmark) scores
    added (any changed or removed score, or a reference model gone, always)."""

    every_inserts: int = 1000
    scored_fraction: float = 0.05


@dataclass
class RefreshingEstimates:
    """The writer's estimator in sparse mode: a frozen ``ReferenceFit``, per-insert
    predictions from it, and the refit policy. Predicting and swapping are thread-safe;
    ``refit`` computes a new fit without installing it (run it anywhere, then ``swap``)."""

    method: str = DEFAULT_METHOD
    policy: RefitPolicy = field(default_factory=RefitPolicy)
    max_anchors: int = DEFAULT_MAX_ANCHORS
    seed: int = 0
    _fit: ReferenceFit | None = None
    inserts_since_fit: int = 0
    n_swaps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def fit(self) -> ReferenceFit | None:
        return self._fit

    def predict_new(self, model_ids: Sequence[str], distances: Distances,
                    measured: Mapping[tuple[str, str], float] | None = None) -> list[ScoreEstimate]:
        """Estimates of newly indexed models from the installed fit (none before the first):
        ``distances(model_ids, reference)`` only, O(|reference|) a model."""
        with self._lock:
            fit = self._fit
            self.inserts_since_fit += len(model_ids)
        if fit is None or not fit.reference or not model_ids:
            return []
        return fit.predict(list(model_ids), distances(list(model_ids), fit.reference), measured)

    def refit_due(self, ids_present: Callable[[str], bool] | None,
                  scores: Mapping[tuple[str, str], float]) -> bool:
        """Whether the policy asks for a refit now. ``ids_present(id)``: is a model still
        indexed (None: skip that check); O(|reference| + |scores|)."""
        fit = self._fit
        if fit is None:
            return bool(scores)
        p = self.policy
        if p.every_inserts and self.inserts_since_fit >= p.every_inserts:
            return True
        if any(scores.get(k) != v for k, v in fit.scores.items()):
            return True
        added = sum(1 for k in scores if k not in fit.scores)
        if added > p.scored_fraction * max(1, len(fit.scores)):
            return True
        return ids_present is not None and not all(ids_present(m) for m in fit.reference)

    def refit(self, ids: Sequence[str], scores: Mapping[tuple[str, str], float], distances: Distances,
              groups: Mapping[str, str] | None = None) -> ReferenceFit:
        """A new fit over the current reference set (``fit_reference``); not installed."""
        return fit_reference(ids, scores, distances, self.method, groups, self.max_anchors, self.seed)

    def swap(self, fit: ReferenceFit, inserts_since: int = 0) -> None:
        """Install ``fit`` atomically; ``inserts_since``: inserts made after the refit took
        its snapshot of the index (they count toward the next refit)."""
        with self._lock:
            self._fit = fit
            self.inserts_since_fit = inserts_since
            self.n_swaps += 1
