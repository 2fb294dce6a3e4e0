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


# -- seconds per model by upload kind and backend ---------------------------------------------
KINDS = {
    "full": "full checkpoint",
    "adapter": "adapter (LoRA on its base)",
    "gguf": "GGUF file",
    "exact_copy": "exact copy (no probe: the recognition cost)",
    "deferred": "deferred pre-quantized (no probe: the screen cost)",
}
KIND_BACKENDS = ("simulated", "transformers", "vllm")
# The full checkpoint probed per kind, and the models the vLLM engine-reuse comparison probes
# in this order (the zoo's SmolLM2 family: one engine key, so reuse swaps weights each time).
FULL_MODEL = "zoo/smollm2-ft-poetry"
REUSE_SEQUENCE = ("HuggingFaceTB/SmolLM2-135M-Instruct", "zoo/smollm2-ft-poetry", "zoo/smollm2-ft-recipes",
                  "zoo/smollm2-ft-chess", "zoo/smollm2-ft-poetry-shanties", "zoo/smollm2-merge-poetry-shanties")


def bench_probe_kinds(backends: tuple[str, ...] = KIND_BACKENDS, genes: int = 16, samples: int = 32, seed: int = 0,
                      zoo: Path | None = None, work: Path | None = None, reuse_models: int = len(REUSE_SEQUENCE),
                      repeats: int = 20) -> dict:
    """Seconds per model for each upload kind (``KINDS``) on each backend, and for vLLM the
    models per hour with and without engine reuse over ``REUSE_SEQUENCE[:reuse_models]``.

    Probed kinds run one real probe each (a fresh prober per kind: load or engine start
    included); an exact copy costs its recognition (the weight-hash request and lookup the
    listing does, on the loopback Hub), a deferred checkpoint its screen (``screen_status`` on
    its metadata), each the median of ``repeats``. A backend whose environment is missing is
    reported as such. Cost: minutes (vLLM on CPU: an engine start per fresh engine).
    """
    import tempfile

    from indexer.testbed.zoo import ensure_zoo

    unknown = [b for b in backends if b not in KIND_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(KIND_BACKENDS)}")
    if not 1 <= reuse_models <= len(REUSE_SEQUENCE):
        raise ValueError(f"reuse_models must be 1..{len(REUSE_SEQUENCE)}")
    zoo = Path(zoo) if zoo is not None else ensure_zoo()
    g = builtin("math").subset(genes)
    params = ProbeParams(n_samples=samples, seed=seed)
    with tempfile.TemporaryDirectory(prefix="phylolm-bench-") as tmp:
        work = Path(work) if work is not None else Path(tmp)
        probed = [b for b in backends if b != "simulated"]
        inputs = kind_inputs(zoo, work) if probed else {}
        rows: list[dict] = []
        out: dict = {"genome": g.name, "genes": genes, "samples": samples, "max_tokens": params.max_tokens,
                     "machine": _machine(), "kinds": KINDS, "rows": rows}
        rows += _no_probe_costs(zoo, work, backends, repeats)
        for backend in backends:
            rows += _probe_costs(backend, inputs, work, g, params)
        if "vllm" in backends:
            out["vllm_engine_reuse"] = _vllm_reuse(zoo, g, params, REUSE_SEQUENCE[:reuse_models])
        out["machine_after"] = _machine()
    for r in rows:
        s = r.get("seconds_per_model")
        r["models_per_hour"] = 3600.0 / s if s else None
    return out


def kind_inputs(zoo: Path, work: Path) -> dict[str, ModelSource]:
    """The model probed for each probed upload kind, all from the zoo: ``full`` a fine-tune,
    ``adapter`` the zoo's LoRA adapter of SmolLM2 (on its base), ``gguf`` the zoo's Q8_0 GGUF
    re-upload of a fine-tune (from its one file). ``work`` is unused: nothing is made here."""
    from indexer.testbed.zoo import ADAPTER, SMOLLM2, ZOO, model_key

    gguf = next(m for m in ZOO if m.make == "to_gguf")
    return {
        "full": ModelSource(FULL_MODEL, model_key(zoo, FULL_MODEL), zoo / FULL_MODEL),
        "adapter": ModelSource(ADAPTER, model_key(zoo, ADAPTER), zoo / SMOLLM2, adapter=zoo / ADAPTER,
                               base=f"{SMOLLM2}@{model_key(zoo, SMOLLM2)}"),
        "gguf": ModelSource(gguf.id, model_key(zoo, gguf.id), zoo / gguf.id, gguf_file=gguf.weights_file),
    }


def _probe_costs(backend: str, inputs: dict[str, ModelSource], work: Path, genome, params: ProbeParams) -> list[dict]:
    """One row per probed kind for ``backend``: seconds of one probe on a fresh prober."""
    import importlib.util

    rows = []

    def row(kind: str, **fields) -> dict:
        return {"backend": backend, "kind": kind, **fields}

    if backend == "simulated":
        from indexer.adapters.probers.simulated import write_repositories
        from indexer.core.simulate import simulate

        folder = write_repositories(simulate(2, seed=params.seed, n_genes=len(genome)), work / "bench-sim")[0]
        source = ModelSource(_id_of(folder), "bench", folder)
        rows.append(row("full", model=source.model_id, **_timed_probe(get_prober("simulated"), source, genome, params),
                        note="a simulated repository (an allele table): the job's own cost without an engine"))
        rows += [row(k, not_measured="simulated repositories are allele tables, not checkpoints")
                 for k in ("adapter", "gguf")]
        return rows
    if backend == "transformers":
        for kind, source in inputs.items():
            prober = get_prober("transformers")
            try:
                rows.append(row(kind, model=source.model_id, **_timed_probe(prober, source, genome, params)))
            finally:
                prober.close()
        return rows
    # vllm
    if importlib.util.find_spec("vllm") is None and not os.environ.get("PHYLOLM_VLLM_PYTHON"):
        return [row(k, not_measured="no vLLM environment here (PHYLOLM_VLLM_PYTHON unset)")
                for k in ("full", "adapter", "gguf")]
    for kind in ("full", "adapter"):
        prober = get_prober("vllm", reuse_engine=False)
        try:
            rows.append(row(kind, model=inputs[kind].model_id, **_timed_probe(prober, inputs[kind], genome, params),
                            engine=prober.last_engine, timings=prober.last_timings))
        finally:
            prober.close()
    rows.append(row("gguf", not_measured="the vllm backend loads safetensors only: GGUF-only repositories are "
                                         "deferred to a transformers run (see the deferred row's screen cost)"))
    return rows


def _timed_probe(prober, source: ModelSource, genome, params: ProbeParams) -> dict:
    t0 = time.perf_counter()
    rec = prober.probe(source, genome, params)
    return {"seconds_per_model": time.perf_counter() - t0, "backend_version": rec.backend_version,
            "distinct_alleles_per_gene": _distinct(rec.alleles.counts)}


def _no_probe_costs(zoo: Path, work: Path, backends: tuple[str, ...], repeats: int) -> list[dict]:
    """The exact copy's and the deferred checkpoint's cost, on the loopback Hub over a folder
    with the zoo's SmolLM2, an exact copy of it and a GPTQ-quantized re-upload (its config
    says so; the screen reads nothing else). The same for every backend on CPU (each defers
    GPTQ here), so reported once per backend with the same figures."""
    import json
    import shutil

    from indexer.adapters.hub.client import HubClient
    from indexer.adapters.hub.watcher import ScreenPolicy, screen_status, weight_hashes
    from indexer.adapters.probers.base import quant_methods
    from indexer.app.hub import open_hub
    from indexer.testbed.zoo import SMOLLM2

    hub = work / "bench-hub"
    base = zoo / SMOLLM2
    for repo, quantized in ((SMOLLM2, False), ("bench/smollm2-copy", False), ("bench/smollm2-gptq", True)):
        folder = hub / repo
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        for f in base.iterdir():
            if f.is_file():
                shutil.copyfile(f, folder / f.name) if f.suffix != ".safetensors" else _link(f, folder / f.name)
        if quantized:
            cfg = json.loads((folder / "config.json").read_text())
            cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    rows = []
    with open_hub(hub) as url:
        client = HubClient(url, timeout=60.0)
        known = {weight_hashes(client.model_info(SMOLLM2, files_metadata=True)): SMOLLM2}

        def recognise() -> str | None:
            return known.get(weight_hashes(client.model_info("bench/smollm2-copy", files_metadata=True)))

        twin = recognise()
        copy_s = _median_seconds(recognise, repeats)
        info = client.model_info("bench/smollm2-gptq", files_metadata=True)
        for backend in backends:
            policy = ScreenPolicy(max_bytes=16 << 30, quant_methods=quant_methods(backend))
            status, reason = screen_status(info, policy)
            rows.append({"backend": backend, "kind": "exact_copy", "model": "bench/smollm2-copy",
                         "seconds_per_model": copy_s, "recognised_as": twin,
                         "note": "one model_info(files_metadata) on the loopback Hub and a hash lookup; "
                                 "the writer then reuses the twin's alleles (not timed here)"})
            rows.append({"backend": backend, "kind": "deferred", "model": "bench/smollm2-gptq",
                         "seconds_per_model": _median_seconds(lambda: screen_status(info, policy), repeats),
                         "status": str(getattr(status, "value", status)), "reason": reason,
                         "note": "screen_status on the listing's metadata (the listing request itself is shared "
                                 "by its page of models)"})
    return rows


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        dst.symlink_to(src.resolve())


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _vllm_reuse(zoo: Path, genome, params: ProbeParams, models: tuple[str, ...]) -> dict:
    """The same sequence of models on one prober with engine reuse and on one without, run one
    after the other on this machine: total seconds, models per hour, engine starts, and how each
    model's engine was had; ``ratio`` is models per hour with reuse over without."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None and not os.environ.get("PHYLOLM_VLLM_PYTHON"):
        return {"not_measured": "no vLLM environment here (PHYLOLM_VLLM_PYTHON unset)"}
    out: dict = {"models": list(models)}
    for label, reuse in (("without_reuse", False), ("with_reuse", True)):
        prober = get_prober("vllm", reuse_engine=reuse)
        per_model = []
        t0 = time.perf_counter()
        try:
            for mid in models:
                t1 = time.perf_counter()
                prober.probe(ModelSource(mid, "bench", zoo / mid), genome, params)
                per_model.append({"model": mid, "engine": prober.last_engine, "seconds": time.perf_counter() - t1})
        finally:
            prober.close()
        total = time.perf_counter() - t0
        out[label] = {"seconds": total, "seconds_per_model": total / len(models),
                      "models_per_hour": 3600.0 * len(models) / total, "engine_starts": prober.engine_starts,
                      "per_model": per_model}
    out["ratio"] = out["with_reuse"]["models_per_hour"] / out["without_reuse"]["models_per_hour"]
    return out
