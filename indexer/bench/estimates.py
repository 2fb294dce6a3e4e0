"""Estimate benchmark: leave-one-family-out accuracy on the PhyloLM paper's 127-model matrix
with the Open LLM Leaderboard v1 scores (the packaged reference data), the paper's baseline
against this project's predictors. Hyper-parameters are chosen inside the training families
only. Figures only: ``phylolm bench estimates`` prints them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.adapters import reference
from indexer.core.predict import BENCHMARKS, PREDICTORS, PaperICA, validate

ALL_METHODS = tuple(PREDICTORS)
BASELINE = PaperICA.method


def bench_estimates(methods: Sequence[str] = ALL_METHODS) -> dict:
    """Per method and benchmark: pooled Pearson r, RMSE, n and 90%-interval coverage (see
    ``indexer.core.predict.validate``), a description of the data, and, when the paper's
    baseline is among ``methods``, the benchmarks each other method wins against it and its
    gain in mean r. JSON-ready."""
    methods = list(methods)
    unknown = [m for m in methods if m not in PREDICTORS]
    if unknown:
        raise ValueError(f"unknown predictor {unknown[0]!r}; known: {', '.join(PREDICTORS)}")
    pm = reference.paper_matrix()
    y = reference.paper_score_matrix(BENCHMARKS)
    result = validate(pm.distance, y, pm.families, BENCHMARKS, methods)
    result["data"] = {"models": len(pm.ids), "scored_models": int((~np.isnan(y)).any(1).sum()),
                      "families": sorted(set(pm.families)), "protocol": "leave-one-family-out, pooled Pearson r",
                      "interval": "90% conformal (inner leave-one-family-out residuals)"}
    if BASELINE in methods:
        base = result["methods"][BASELINE]
        result["against_baseline"] = {
            m: {"benchmarks_won": [b for b in BENCHMARKS
                                   if result["methods"][m]["benchmarks"][b]["r"] > base["benchmarks"][b]["r"]],
                "mean_r_gain": result["methods"][m]["mean_r"] - base["mean_r"]}
            for m in methods if m != BASELINE}
    return result
