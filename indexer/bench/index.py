"""Index benchmark on a simulated ecosystem: insert latency (distance row + placement +
local NNI), amortised rebuild cost, full NJ time at the same n, and tree quality (nRF) of
the incremental tree and of NJ against the true tree. Figures only: nothing here is
asserted anywhere (``phylolm bench index`` prints them).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from indexer.core.phylo_index import PhyloIndex
from indexer.core.simulate import SHAPES, simulate
from indexer.core.tree import RebuildPolicy, robinson_foulds

MIN_MODELS = 5


def bench_index(models: int = 1000, seed: int = 0, seeds: int = 1, genes: int = 128, samples: int = 32,
                shape: str = "yule", growth: float | None = 0.5) -> dict:
    """One run per seed (``seed``, ``seed + 1``, ...); with several seeds, the runs and the
    mean of every figure. ``growth``: rebuild by full NJ once the index grew by this fraction
    (None or 0: never). Returns the figures as a JSON-ready dict."""
    if models < MIN_MODELS:
        raise ValueError(f"models must be at least {MIN_MODELS}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    if seeds < 1 or genes < 1 or samples < 1 or (growth is not None and growth < 0):
        raise ValueError("seeds, genes and samples must be positive and growth non-negative")
    runs = [run_index_benchmark(models, s, genes, samples, shape, growth or None) for s in range(seed, seed + seeds)]
    return runs[0] if seeds == 1 else average_runs(runs)


def run_index_benchmark(n_models: int, seed: int, n_genes: int, n_samples: int, shape: str,
                        growth: float | None) -> dict:
    """One benchmark run: simulate, sample probes, insert in upload order, then compare."""
    t0 = time.perf_counter()
    eco = simulate(n_models, seed=seed, n_genes=n_genes, shape=shape)
    counts = [eco.sample_counts(i, n_samples, seed) for i in range(n_models)]
    sim_seconds = time.perf_counter() - t0
    policy = RebuildPolicy(growth=growth)
    index = PhyloIndex(genome_hash=f"simulated-{seed}", n_samples=n_samples, policy=policy)
    insert_ms, stage = [], {"distance": [], "placement": [], "nni": []}
    t1 = time.perf_counter()
    for i, model_id in enumerate(eco.ids):
        r = index.insert(model_id, counts[i])
        if r.placement is not None:
            insert_ms.append(r.insert_ms)
            for k in stage:
                stage[k].append(r.timings_ms.get(k, 0.0))
    stream_seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    nj = index.nj_tree()
    nj_seconds = time.perf_counter() - t2
    last = insert_ms[-max(1, len(insert_ms) // 10):]
    med = statistics.median(insert_ms)
    nrf_inc = robinson_foulds(index.tree, eco.truth)
    nrf_nj = robinson_foulds(nj, eco.truth)
    return {
        "models": n_models, "seed": seed, "genes": n_genes, "samples": n_samples, "shape": shape,
        "cpu_count": os.cpu_count(),
        "policy": {"growth": growth, "min_models": policy.min_models},
        "insert_ms_median": round(med, 3),
        "insert_ms_p95": round(float(np.percentile(insert_ms, 95)), 3),
        "insert_ms_median_last_10pct": round(statistics.median(last), 3),
        "insert_ms_p95_last_10pct": round(float(np.percentile(last, 95)), 3),
        "stage_ms_median": {k: round(statistics.median(v), 3) for k, v in stage.items()},
        "rebuilds": index.n_rebuilds,
        "rebuild_seconds_total": round(index.rebuild_seconds_total, 3),
        "amortised_rebuild_ms_per_insert": round(1e3 * index.rebuild_seconds_total / n_models, 3),
        "stream_seconds": round(stream_seconds, 3),
        "nj_seconds_at_n": round(nj_seconds, 3),
        "nj_over_insert_median": round(1e3 * nj_seconds / med, 1),
        "nj_over_insert_median_last_10pct": round(1e3 * nj_seconds / statistics.median(last), 1),
        "nrf_incremental_truth": round(nrf_inc, 4),
        "nrf_nj_truth": round(nrf_nj, 4),
        "nrf_ratio_incremental_over_nj": round(nrf_inc / nrf_nj, 4) if nrf_nj > 0 else None,
        "nrf_incremental_nj": round(robinson_foulds(index.tree, nj), 4),
        "simulation_seconds": round(sim_seconds, 3),
    }


def average_runs(runs: list[dict]) -> dict:
    """The runs of several seeds with ``mean_<figure>`` of every numeric figure, and the
    ratio of the mean nRFs (incremental over NJ)."""
    out: dict = {"runs": runs, "seeds": [r["seed"] for r in runs]}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("seed", "models"):
            vals = [r[key] for r in runs if r.get(key) is not None]
            out[f"mean_{key}"] = round(float(np.mean(vals)), 4)
    mi, mn = out["mean_nrf_incremental_truth"], out["mean_nrf_nj_truth"]
    out["ratio_of_mean_nrf"] = round(mi / mn, 4) if mn > 0 else None
    out["models"] = runs[0]["models"]
    return out


def bench_stream(models: int = 20000, seed: int = 0, genes: int = 128, samples: int = 32, shape: str = "yule",
                 mode: str = "sparse", k: int = 32, candidates: int = 64, backend: str = "hnsw",
                 recall_queries: int = 200, nj_max_models: int = 5000, growth: float | None = 0.5,
                 rebuild_max_models: int = 2000, checkpoints: int = 5, rebuild_lag: int = 0,
                 progress=None) -> dict:
    """The Hub-scale streaming run: a probed ecosystem with real-like allele diversity
    (``simulate_probes``: about 17 distinct alleles per gene at 32 samples), inserted in
    upload order. Figures: insert latency percentiles over all inserts and per stretch of the
    stream (``checkpoints`` equal stretches), peak RSS, the index's own memory (counted),
    recall@10 of the neighbour lists and of a fresh search against brute force on
    ``recall_queries`` sampled models, nRF of the maintained tree to the truth, and of NJ to
    the truth where n <= ``nj_max_models`` (NJ needs the n x n matrix). Sparse mode rebuilds
    by NJ up to ``rebuild_max_models`` models, off the write path with ``rebuild_lag > 0``
    (the stalls of the inserts that swap a rebuilt tree in are reported apart, ``swap_ms``).
    ``progress(line)`` is called at the end of each stretch."""
    import resource

    from indexer.core.simulate import simulate_probes

    if models < MIN_MODELS:
        raise ValueError(f"models must be at least {MIN_MODELS}")
    t0 = time.perf_counter()
    eco = simulate_probes(models, seed=seed, n_genes=genes, n_samples=samples, shape=shape)
    sim_seconds = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    options = dict(mode=mode)
    if mode == "sparse":
        options.update(k=k, candidates=candidates, backend=backend, rebuild_max_models=rebuild_max_models,
                       rebuild_lag=rebuild_lag)
    index = PhyloIndex(genome_hash=f"simulated-{seed}", n_samples=samples, policy=RebuildPolicy(growth=growth),
                       **options)
    insert_ms = np.full(models, np.nan)
    stage = {"distance": [], "placement": [], "nni": []}
    swap_ms = []
    ends = {int(part[-1]) for part in np.array_split(np.arange(models), checkpoints) if part.size}
    t1 = time.perf_counter()
    for i, model_id in enumerate(eco.ids):  # each insert runs on one BLAS thread (indexer.core.blas)
        counts = eco.counts(i)  # decoding the stored probe is not part of the insert
        r = index.insert(model_id, counts)
        if r.placement is not None:
            insert_ms[i] = r.insert_ms
            for s in stage:
                stage[s].append(r.timings_ms.get(s, 0.0))
        if "swap" in r.timings_ms:
            swap_ms.append(r.timings_ms["swap"])
        if progress is not None and i in ends:
            part = insert_ms[max(0, i + 1 - models // checkpoints): i + 1]
            part = part[np.isfinite(part)]
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            progress(f"{i + 1:,}/{models:,} models, {time.perf_counter() - t1:.0f} s: insert median "
                     f"{np.median(part) if part.size else float('nan'):.1f} ms in this stretch, peak RSS {rss:,.0f} MiB")
    if hasattr(index.incremental, "finish_rebuild"):
        index.incremental.finish_rebuild()  # a rebuild still in flight is part of the run
    stream_seconds = time.perf_counter() - t1
    done = insert_ms[np.isfinite(insert_ms)]
    stretches = []
    for part in np.array_split(np.arange(models), checkpoints):
        ms = insert_ms[part][np.isfinite(insert_ms[part])]
        if ms.size:
            stretches.append({"n_to": int(part[-1]) + 1, "median_ms": round(float(np.median(ms)), 3),
                              "p95_ms": round(float(np.percentile(ms, 95)), 3)})
    out = {
        "models": models, "seed": seed, "genes": genes, "samples": samples, "shape": shape, "mode": mode,
        "cpu_count": os.cpu_count(),
        "distinct_alleles_per_gene": round(eco.distinct_alleles_per_gene(), 2),
        "simulation": {k2: v for k2, v in eco.params.items() if k2 not in ("n_models", "seed")},
        "insert_ms_median": round(float(np.median(done)), 3),
        "insert_ms_p95": round(float(np.percentile(done, 95)), 3),
        "insert_ms_by_stretch": stretches,
        "stage_ms_median": {s: round(statistics.median(v), 3) for s, v in stage.items() if v},
        "stream_seconds": round(stream_seconds, 1),
        "simulation_seconds": round(sim_seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_mib_before_index": round(rss_before, 1),
        "rebuilds": index.n_rebuilds,
        "rebuild_seconds_total": round(index.rebuild_seconds_total, 3),
    }
    if mode == "sparse":
        out["index_bytes"] = {"alleles": index.alleles.memory_bytes(), **index.graph.memory_bytes()}
        out["rebuilds_skipped"] = index.incremental.rebuilds_skipped
        out["rebuild_max_models"], out["rebuild_lag"] = rebuild_max_models, rebuild_lag
        if swap_ms:
            out["swap_ms"] = {"count": len(swap_ms), "median": round(float(np.median(swap_ms)), 2),
                              "max": round(float(np.max(swap_ms)), 2)}
        out.update(_recall(index, recall_queries, seed))
        out["k"], out["candidates"], out["backend"] = k, candidates, backend
    out["nrf_incremental_truth"] = round(robinson_foulds(index.tree, eco.truth), 4)
    if models <= nj_max_models:
        t2 = time.perf_counter()
        nj = index.nj_tree()
        out["nj_seconds_at_n"] = round(time.perf_counter() - t2, 2)
        out["nrf_nj_truth"] = round(robinson_foulds(nj, eco.truth), 4)
        out["nrf_ratio_incremental_over_nj"] = round(out["nrf_incremental_truth"] / out["nrf_nj_truth"], 4)
    return out


def _recall(index: PhyloIndex, queries: int, seed: int) -> dict:
    """Recall@10 against brute force (the exact full row) on sampled models: of the stored
    lists, and of a fresh search (candidates + exact re-scoring) as a new query would get."""
    graph, alleles = index.graph, index.alleles
    n = len(index)
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, min(queries, n), replace=False)
    stored, fresh, exact_ms = [], [], []
    at = min(10, graph.k)  # recall@10, or @k when fewer are kept
    for r in rows.tolist():
        t = time.perf_counter()
        truth = set(graph.brute_force(r, at).tolist())
        exact_ms.append((time.perf_counter() - t) * 1e3)
        stored.append(len(truth & set(graph.neighbours(r).rows[:at].tolist())) / at)
        found = graph.search(*alleles.encoded_row(r), exclude=r)
        fresh.append(len(truth & set(found.rows[:at].tolist())) / at)
    return {"recall_at_10_lists": round(float(np.mean(stored)), 4),
            "recall_at_10_search": round(float(np.mean(fresh)), 4),
            "recall_queries": int(rows.size), "recall_at": at,
            "exact_full_row_ms_median": round(float(np.median(exact_ms)), 2)}
