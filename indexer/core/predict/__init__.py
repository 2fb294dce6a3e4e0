"""Benchmark estimates from phylogenetic distances (domain core: numpy in, plain values out).

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

``estimate_scores`` keeps fitted predictors in a cache (``FittedPredictors``) keyed by the
scored training set, so inserting an unscored model costs one O(n) prediction per
benchmark and leaves every other estimate unchanged.

The package, one module per part: ``base`` (benchmarks, logit scale, folds, conformal
rule, ``FittedPredictor``), ``learners``, ``predictors`` (``PaperICA``, ``KinshipEnsemble``),
``stack`` (``KinshipStack``), ``registry`` (the predictors by method name), ``validation``
(leave-one-family-out) and ``estimates`` (``estimate_scores`` with its cache).

No I/O happens here.
"""
from __future__ import annotations

from indexer.core.predict.base import (BENCHMARKS, DEFAULT_COVERAGE, FittedPredictor, cluster_groups,
                                       conformal_quantile, leave_one_group_out)
from indexer.core.predict.estimates import FittedPredictors, ScoreEstimate, estimate_scores
from indexer.core.predict.predictors import KinshipEnsemble, PaperICA
from indexer.core.predict.registry import DEFAULT_METHOD, PREDICTORS, get_predictor
from indexer.core.predict.stack import JointFit, KinshipStack
from indexer.core.predict.validation import leave_one_family_out, leave_one_family_out_joint, validate

__all__ = [
    "BENCHMARKS", "DEFAULT_COVERAGE", "DEFAULT_METHOD", "PREDICTORS",
    "FittedPredictor", "FittedPredictors", "JointFit", "KinshipEnsemble", "KinshipStack", "PaperICA",
    "ScoreEstimate", "cluster_groups", "conformal_quantile", "estimate_scores", "get_predictor",
    "leave_one_family_out", "leave_one_family_out_joint", "leave_one_group_out", "validate",
]
