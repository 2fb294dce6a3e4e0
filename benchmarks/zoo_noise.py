"""The zoo's noise floor and the margins of its lineage relations, at 64 and 128 genes.

    python benchmarks/zoo_noise.py [--seeds 0 1 2] [--replicates 200] [--json]

Probes every zoo model (transformers backend, the paper's N=32, temperature 0.7, 5 tokens)
once per seed over the 128 genes of the built-in ``math`` genome (probes are cached, like
the lineage test's), then for G = 64 (the first 64 genes of those probes) and G = 128:

* the **noise floor** of each model: the distance between two probes of the same model
  with different seeds (mean over the seed pairs);
* every relation of ``indexer.testbed.zoo_relations`` on each seed's distance matrix: its margin
  (mean, min, spread across seeds) and gene-bootstrap support, and the margin in units of
  the largest noise floor of the zoo.

Figures only; nothing is asserted. Prints a Markdown table per genome size (``--json``: one
JSON object instead). About 10 models x 25 s per seed on 2 CPU cores the first time.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics

import numpy as np

from indexer.core.distance import AlleleIndex, distance_from_similarity, nei_similarity
from indexer.adapters.genome_files import builtin
from indexer.adapters.probers.base import ModelSource
from indexer.adapters.probers.cache import ProbeCache, probe_cached
from indexer.adapters.probers.transformers_backend import TransformersProber
from indexer.core.tree.nj import neighbor_joining
from indexer.testbed.zoo import default_cache, ensure_zoo, zoo_ids
from indexer.testbed.zoo_relations import bootstrap_support, relations
from schemas.records import ProbeParams


def probe_all(seeds: list[int]) -> dict[int, dict[str, tuple]]:
    zoo = ensure_zoo(log=print)
    revision = json.loads((zoo / "zoo.json").read_text())["recipe_hash"]
    genome = builtin("math")
    cache = ProbeCache(default_cache() / "probes")
    out: dict[int, dict[str, tuple]] = {}
    with TransformersProber(device="cpu", dtype="float32") as prober:
        for seed in seeds:
            out[seed] = {}
            for mid in zoo_ids():
                rec, _ = probe_cached(prober, ModelSource(mid, revision, zoo / mid), genome, ProbeParams(seed=seed),
                                      cache)
                out[seed][mid] = rec.alleles.counts
    return out


def measure(counts: dict[int, dict[str, tuple]], genes: int, replicates: int) -> dict:
    seeds = sorted(counts)
    ids = zoo_ids()
    floors = {m: statistics.mean(
        float(distance_from_similarity(nei_similarity(counts[a][m][:genes], counts[b][m][:genes], 32)))
        for a, b in itertools.combinations(seeds, 2)) for m in ids}
    per_seed: dict[str, list[float | None]] = {}
    support: dict[str, list[float]] = {}
    details: dict[str, str] = {}
    for seed in seeds:
        index = AlleleIndex(n_genes=genes, n_samples=32)
        for m in ids:
            index.add(m, counts[seed][m][:genes])
        for r in relations(index.distance_matrix(), ids, neighbor_joining):
            per_seed.setdefault(r.name, []).append(r.margin if r.margin is not None else (1.0 if r.holds else -1.0))
            details.setdefault(r.name, r.detail)
        s = bootstrap_support(lambda w: distance_from_similarity(index.similarity_with_gene_weights(w)), ids, genes,
                              replicates, seed=seed, tree_builder=neighbor_joining)
        for k, v in s.items():
            support.setdefault(k, []).append(v)
    floor = max(floors.values())
    rows = []
    for name, margins in per_seed.items():
        tree = name.startswith("clade:")
        rows.append({
            "relation": name, "holds_in_seeds": sum(m > 0 for m in margins), "seeds": len(margins),
            "margin_mean": None if tree else statistics.mean(margins),
            "margin_min": None if tree else min(margins),
            "margin_spread": None if tree or len(margins) < 2 else statistics.stdev(margins),
            "margin_in_floors": None if tree else min(margins) / floor,
            "support_min": min(support[name]), "support_mean": statistics.mean(support[name]),
        })
    return {"genes": genes, "seeds": seeds, "noise_floor": floors, "largest_floor": floor, "relations": rows}


def markdown(result: dict) -> str:
    g = result["genes"]
    lines = [f"### G = {g} genes, N = 32, seeds {', '.join(map(str, result['seeds']))}", "",
             "| model | noise floor |", "|---|---|"]
    lines += [f"| `{m}` | {f:.3f} |" for m, f in result["noise_floor"].items()]
    lines += ["", "| relation | holds (seeds) | margin mean | margin min | spread (sd) | min margin / largest floor "
              "| bootstrap support min |", "|---|---|---|---|---|---|---|"]
    fmt = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    for r in result["relations"]:
        lines.append(f"| `{r['relation']}` | {r['holds_in_seeds']}/{r['seeds']} | {fmt(r['margin_mean'])} | "
                     f"{fmt(r['margin_min'])} | {fmt(r['margin_spread'])} | {fmt(r['margin_in_floors'], 1)} | "
                     f"{fmt(r['support_min'], 2)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if len(args.seeds) < 2:
        ap.error("the noise floor needs at least two seeds")
    counts = probe_all(args.seeds)
    results = [measure(counts, g, args.replicates) for g in (64, 128)]
    if args.json:
        print(json.dumps(results, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))
    else:
        print("\n\n".join(markdown(r) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
