"""Estimate benchmark: leave-one-family-out accuracy on the PhyloLM paper's 127-model matrix
with the Open LLM Leaderboard v1 scores (the packaged reference data), the paper's baseline
against this project's predictors. Hyper-parameters are chosen inside the training families
only. Figures only: ``phylolm bench estimates`` prints them.
"""
from __future__ import annotations

import os
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


def bench_refresh(models: int = 10_000, scored: int = 1000, max_anchors: int | None = None,
                  queries: int = 200, seed: int = 0, index: str = "alleles",
                  method: str | None = None) -> dict:
    """Per-insert refresh of the sparse mode's estimator (``indexer.core.predict.refresh``)
    on a simulated ecosystem of ``models`` probed models (``simulate_probes``: 128 genes,
    ~17 distinct alleles per gene), ``scored`` of them with six simulated benchmark scores.

    Scores: a latent capability smooth on the phylogeny (a random mix of similarities
    exp(-d/0.5) to 16 random landmark models, standardised), then per benchmark
    ``sigmoid(a_b + c_b * latent + 0.3 * noise)`` with a_b, c_b drawn once (the real
    leaderboard's six scores share one axis, as these do); CV groups: the simulated labs.
    The first ``models - queries`` models are indexed and the fit (``fit_reference``) made
    over them; then each of the last ``queries`` models is inserted and its estimates
    refreshed: distances to the reference set (``AlleleIndex.reference``) plus one
    prediction, timed on one BLAS thread (the writer's). ``index="alleles"`` indexes the
    alleles only (what the refresh reads; minutes at 100,000), ``"sparse"`` a full
    ``PhyloIndex(mode="sparse")`` (tens of minutes at 100,000). Figures: refresh median,
    p95 and max (ms), its two parts, the reference size, the refit's time.
    """
    import time

    from indexer.core.blas import one_blas_thread
    from indexer.core.predict import DEFAULT_METHOD
    from indexer.core.predict.refresh import DEFAULT_MAX_ANCHORS, fit_reference
    from indexer.core.simulate import simulate_probes

    if not 0 < queries < models or not 3 <= scored <= models - queries:
        raise ValueError("need 0 < queries < models and 3 <= scored <= models - queries")
    method = method or DEFAULT_METHOD
    max_anchors = DEFAULT_MAX_ANCHORS if max_anchors is None else max_anchors
    t0 = time.perf_counter()
    eco = simulate_probes(models, seed=seed)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = models - queries
    if index == "sparse":
        from indexer.core.phylo_index import PhyloIndex
        phylo = PhyloIndex(genome_hash=f"simulated-{seed}", n_samples=eco.n_samples, mode="sparse")
        add = lambda i: phylo.insert(eco.ids[i], eco.counts(i))  # noqa: E731
        alleles = phylo.alleles
    elif index == "alleles":
        from indexer.core.distance import AlleleIndex
        alleles = AlleleIndex(n_samples=eco.n_samples)
        add = lambda i: alleles.add_unscored(eco.ids[i], eco.counts(i))  # noqa: E731
    else:
        raise ValueError("index: alleles or sparse")
    with one_blas_thread():
        for i in range(base):
            add(i)
    index_s = time.perf_counter() - t0

    from indexer.core.distance import distance_from_similarity

    def distances(a, b):
        ra = np.array([alleles.row_of(m) for m in a])
        rb = np.array([alleles.row_of(m) for m in b])
        return distance_from_similarity(alleles.similarity_block(ra, rb))

    rng = np.random.default_rng(seed)
    ids = eco.ids[:base]
    scored_ids = [ids[i] for i in np.sort(rng.choice(base, scored, replace=False))]
    landmarks = [ids[i] for i in rng.choice(base, 16, replace=False)]
    u = np.exp(-distances(scored_ids, landmarks) / 0.5) @ rng.normal(size=16)
    u = (u - u.mean()) / u.std()
    a_b, c_b = rng.normal(0.0, 0.8, 6), rng.uniform(0.6, 1.4, 6)
    y = 1.0 / (1.0 + np.exp(-(a_b + c_b * u[:, None] + 0.3 * rng.normal(size=(scored, 6)))))
    scores = {(m, b): float(y[i, j]) for i, m in enumerate(scored_ids) for j, b in enumerate(BENCHMARKS)}
    groups = {m: m.split("/")[0] for m in ids}
    t0 = time.perf_counter()
    fit = fit_reference(ids, scores, distances, method, groups, max_anchors, seed)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = alleles.reference(np.array([alleles.row_of(m) for m in fit.reference]))
    ref_s = time.perf_counter() - t0
    dist_ms, pred_ms, total_ms = [], [], []
    check = []
    with one_blas_thread():
        for i in range(base, models):
            add(i)
            t1 = time.perf_counter()
            d = ref.distances(np.array([alleles.row_of(eco.ids[i])]))
            t2 = time.perf_counter()
            est = fit.predict([eco.ids[i]], d)
            t3 = time.perf_counter()
            dist_ms.append((t2 - t1) * 1e3)
            pred_ms.append((t3 - t2) * 1e3)
            total_ms.append((t3 - t1) * 1e3)
            if len(check) < 3:  # the block equals the index's own on-demand distances
                check.append(float(np.abs(d - distances([eco.ids[i]], fit.reference)).max()))
            assert len(est) == len(BENCHMARKS)

    def pct(v):
        return {"median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3),
                "max": round(float(np.max(v)), 3)}

    return {"models": models, "index": index, "method": method, "scored_models": scored,
            "benchmarks": len(BENCHMARKS), "max_anchors": max_anchors, "reference_models": len(fit.reference),
            "queries": queries, "refresh_ms": pct(total_ms), "distance_ms": pct(dist_ms),
            "predict_ms": pct(pred_ms), "reference_block_s": round(ref_s, 3), "refit_s": round(fit_s, 1),
            "simulate_s": round(sim_s, 1), "index_s": round(index_s, 1),
            "max_abs_diff_vs_similarity_block": max(check), "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
