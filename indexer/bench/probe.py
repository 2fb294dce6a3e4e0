"""Probe benchmark: seconds per model and models per hour for one backend, at the paper's
parameters by default (G=128 genes of ``math``, N=32, temperature 0.7, top_p 1, 5 tokens).

What "a model" costs is what a pipeline pays per model: loading it (engine start for vLLM)
plus sampling the genome. For the OpenAI-compatible backend the server is already running
(a vLLM server is started on loopback when no URL is given, its start-up reported apart).
With ``baseline_genes`` the transformers backend is compared, side by side on the same
machine, with the naive sampler (``generate(num_return_sequences=N)``) on the first genes;
the naive time for the whole genome is extrapolated per gene. Figures only: nothing here
is asserted anywhere.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

from indexer.adapters.genome_files import BUILTIN, builtin
from indexer.adapters.probers.base import ModelSource, get_prober
from schemas.records import ProbeParams

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def bench_probe(backend: str, model_path: Path | None = None, model_id: str | None = None, genes: int = 128,
                samples: int = 32, seed: int = 0, genome: str = "math", baseline_genes: int = 0,
                base_url: str | None = None, api: str = "completions", options: dict | None = None) -> dict:
    """Probe one model once with ``backend``; return the figures as a JSON-ready dict."""
    if model_path is None:
        from indexer.testbed.zoo import ensure_zoo

        model_id = model_id or DEFAULT_MODEL
        model_path = ensure_zoo() / model_id
    model_path = Path(model_path)
    model_id = model_id or _id_of(model_path)
    g = builtin(genome).subset(genes) if genome in BUILTIN else builtin("math").subset(genes)
    params = ProbeParams(n_samples=samples, seed=seed)
    source = ModelSource(model_id, "bench", model_path)
    result: dict = {"backend": backend, "model": model_id, "genome": g.name, "genes": genes, "samples": samples,
                    "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                    "machine": _machine()}
    options = dict(options or {})
    if backend == "transformers":
        result.update(_bench_transformers(source, g, params, baseline_genes, options))
    elif backend == "vllm":
        prober = get_prober("vllm", **options)
        t0 = time.perf_counter()
        rec = prober.probe(source, g, params)
        total = time.perf_counter() - t0
        result.update(backend_version=rec.backend_version, seconds_per_model=total,
                      engine_start_seconds=prober.last_timings.get("engine_start_seconds"),
                      generate_seconds=prober.last_timings.get("generate_seconds"),
                      distinct_alleles_per_gene=_distinct(rec.alleles.counts))
    elif backend == "openai":
        result.update(_bench_openai(source, g, params, base_url, api, options))
    elif backend == "simulated":
        raise ValueError("the simulated backend reads precomputed alleles: there is nothing to benchmark")
    else:
        raise ValueError(f"unknown backend {backend!r}")
    result["models_per_hour"] = 3600.0 / result["seconds_per_model"] if result["seconds_per_model"] else None
    return result


def _bench_transformers(source: ModelSource, genome, params: ProbeParams, baseline_genes: int,
                        options: dict) -> dict:
    from indexer.adapters.probers.transformers_backend import TransformersProber, naive_sample_alleles

    prober = TransformersProber(**options)
    t0 = time.perf_counter()
    lm, tok = prober.load(source)
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    counts = prober.generate(source, genome, params)
    sample = time.perf_counter() - t1
    import torch

    out = {"backend_version": prober.version(), "device": prober.device, "threads": torch.get_num_threads(),
           "genes_per_batch": prober.genes_per_batch, "load_seconds": load, "probe_seconds": sample,
           "seconds_per_model": load + sample, "distinct_alleles_per_gene": _distinct(counts.counts)}
    if baseline_genes:
        k = min(baseline_genes, len(genome))
        sub = genome.subset(k)
        t2 = time.perf_counter()
        naive = [naive_sample_alleles(lm, tok, gene, params, seed=params.seed + i) for i, gene in enumerate(sub.genes)]
        naive_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        fast_sub = prober.generate(source, sub, params)
        fast_s = time.perf_counter() - t3
        out["baseline"] = {
            "sampler": "generate(num_return_sequences=N, top_k=0), one gene at a time",
            "genes": k, "naive_seconds": naive_s, "fast_seconds_same_genes": fast_s,
            "speedup_same_genes": naive_s / fast_s if fast_s else None,
            "naive_seconds_per_model_extrapolated": load + naive_s * len(genome) / k,
            "distinct_alleles_per_gene_naive": _distinct(naive),
            "distinct_alleles_per_gene_fast": _distinct(fast_sub.counts),
        }
    prober.close()
    return out


def _bench_openai(source: ModelSource, genome, params: ProbeParams, base_url: str | None, api: str,
                  options: dict) -> dict:
    from indexer.adapters.probers.openai_backend import OpenAIProber

    def run(url: str) -> dict:
        prober = OpenAIProber(base_url=url, api=api, **options)
        t0 = time.perf_counter()
        rec = prober.probe(source, genome, params)
        total = time.perf_counter() - t0
        return {"backend_version": rec.backend_version, "api": api, "seconds_per_model": total,
                "requests": prober.requests_sent, "retries": prober.retries,
                "distinct_alleles_per_gene": _distinct(rec.alleles.counts)}

    if base_url:
        return run(base_url)
    from indexer.adapters.probers.vllm_backend import VLLMServer

    options.setdefault("send_seed", False)  # the CPU build of vLLM crashes on per-request seeds
    with VLLMServer(source.path, source.model_id) as server:
        out = run(server.base_url)
        out["server"] = "vllm serve on loopback (started for this benchmark)"
        out["server_startup_seconds"] = server.startup_seconds
    return out


def _distinct(counts) -> float:
    return statistics.mean(len(c) for c in counts) if counts else 0.0


def _id_of(path: Path) -> str:
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
