"""The export folder of a sparse index: what it costs now, against the whole-matrix path it replaced.

    python benchmarks/bench_export.py [--models 5000] [--k 32] [--genes 128] [--samples 32]
                                      [--scored 0.01] [--more 100] [--seed 0] [--out DIR]

Streams simulated models (``simulate_probes``: real-like allele diversity, about 17 distinct
alleles per gene at N = 32) through the real ``IndexWriter`` in the sparse mode, a quarter
of them declaring a base model (an earlier model close in the true tree, a fine-tune's
claim), a quarter a random earlier one (mostly false claims), and ``--scored`` of them with
a measured score.
Then, on that catalog, side by side:

* the export as it runs now (``publish.export``, through the catalog's ``distance_view``:
  the lineage check on the neighbour graph, the plots on their pairs, the held-out check on
  the scored models), each part timed, once with the writer's in-memory alleles and once
  from the catalog alone (as ``phylolm export`` runs);
* the baseline, the former path: the whole matrix computed from the alleles
  (``CatalogQueries.exact_distances``), the dense lineage check, the plots' pairs and the
  held-out check's block read from it. ``former_over_now`` compares the two on the same
  work (the lineage check and the plots' distances; the held-out fit is the same in both).

Then ``--more`` models more stream in, and the next export's lineage check runs twice on
the grown index: with the far ranks the last check left (``FarRanks``, as the writer keeps
them between publishes) and fresh, the baseline (``streaming`` in the output).

Prints one JSON object: times (ms), the peak memory each path allocated (tracemalloc: numpy
buffers are counted), the findings of both checks and how many agree (kind and rank), and
the export's files and bytes. Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t) * 1e3
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, ms, peak / 2**20


def _true_relatives(eco) -> list[int | None]:
    """For each model, an earlier model close to it in the true tree (the earliest below the
    lowest ancestor that has one), or None: what a fine-tune's declared base would be."""
    truth = eco.truth
    order = {m: i for i, m in enumerate(eco.ids)}
    first = [None] * truth.n_nodes  # the earliest model below each node
    stack, post = [truth.root], []
    while stack:
        v = stack.pop()
        post.append(v)
        stack.extend(truth.children[v])
    for v in reversed(post):
        if not truth.children[v]:
            first[v] = order[truth.label[v]]
        else:
            first[v] = min(first[c] for c in truth.children[v])
    out: list[int | None] = []
    for i, m in enumerate(eco.ids):
        u = truth.parent[truth.leaf_node[m]]
        while u >= 0 and first[u] >= i:
            u = truth.parent[u]
        out.append(first[u] if u >= 0 else None)
    return out


def build(folder: Path, args):
    """The sparse catalog: every model through ``IndexWriter.apply``; returns the writer and
    a function that applies model i (the stream goes on past ``--models`` up to ``--more``
    later). A quarter of the models declare their true relative, a quarter a random earlier
    model."""
    import numpy as np

    from indexer.app.job import JobConfig, ProbeOutcome
    from indexer.app.writer import IndexWriter
    from indexer.core.simulate import simulate_probes
    from schemas.records import ProbeParams, Score
    from tests.helpers.outcomes import simulated_outcome

    eco = simulate_probes(args.models + args.more, seed=args.seed, n_genes=args.genes, n_samples=args.samples)
    relative = _true_relatives(eco)
    rng = np.random.default_rng(args.seed)
    writer = IndexWriter(JobConfig(catalog=folder / "sparse.duckdb", backend="simulated", n_genes=args.genes,
                                   params=ProbeParams(n_samples=args.samples), index_mode="sparse",
                                   index_k=args.k, tree_every=100))

    def add(i: int) -> None:
        out = simulated_outcome(writer, eco, i)
        bases: list[str] = []
        if i >= 2 and i % 4 == 0 and relative[i] is not None:
            bases = [eco.ids[relative[i]]]
        elif i >= 2 and i % 4 == 1:
            bases = [eco.ids[int(rng.integers(0, i))]]
        writer.apply(ProbeOutcome(out.model.model_copy(update={"base_models": bases}), out.probe))

    t = time.perf_counter()
    for i in range(args.models):
        add(i)
        if (i + 1) % max(1, args.models // 5) == 0:
            print(f"built {i + 1}/{args.models} ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    scored = rng.choice(args.models, size=max(3, int(args.scored * args.models)), replace=False)
    writer.catalog.import_scores([Score(model_id=eco.ids[int(i)], benchmark="arc",
                                        value=float(0.3 + 0.4 * rng.random()), source="bench") for i in scored])
    writer.publish()
    return writer, add


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=5000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--genes", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--scored", type=float, default=0.01,
                    help="share of models with a measured score (the held-out check's fit, the same in both "
                         "paths, grows as its cube)")
    ap.add_argument("--more", type=int, default=100,
                    help="models streamed in after the comparison: the next export's lineage check, "
                         "with the last check's far ranks carried and without")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the catalog and exports in this folder")
    args = ap.parse_args()

    import numpy as np

    from indexer.adapters.catalog import open_read_only
    from indexer.adapters.publish import export, lineage_from_catalog, plots_from_catalog
    from indexer.adapters.publish.plots import relation_distances
    from indexer.core.lineage import check_lineage

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        writer, add = build(folder, args)
        cat, alleles = writer.catalog, writer.index.alleles
        result: dict = {"models": args.models, "k": args.k, "genes": args.genes, "samples": args.samples,
                        "scored": args.scored}

        view, ms, mib = _timed(lambda: cat.distance_view(alleles))
        now = {"view_ms": ms}
        lineage, ms, mib_l = _timed(lambda: lineage_from_catalog(cat, view))
        now["lineage_ms"] = ms
        def plot_inputs():  # what the former path below reads for the plots: the same work
            relation_distances(view.ids, view.pairs, cat.explorer_models())
            view.among(sorted({m for m, _ in cat.mean_scores()}))

        _, ms, mib_p = _timed(plot_inputs)
        now["plots_inputs_ms"] = ms
        now["peak_mib"] = max(mib, mib_l, mib_p)
        _, ms, _ = _timed(lambda: plots_from_catalog(cat, view))
        now["plots_ms"] = ms  # with the held-out fit (the same in both paths: not compared)
        _, ms, mib_e = _timed(lambda: export(cat, folder / "export", lineage=lineage, alleles=alleles))
        now["export_ms"] = ms  # the whole folder (lineage passed in: not counted twice)
        now["export_peak_mib"] = mib_e
        files = sorted(p for p in (folder / "export").rglob("*") if p.is_file())
        now["export_bytes"] = sum(p.stat().st_size for p in files)
        result["now"] = now
        writer.close()

        with open_read_only(folder / "sparse.duckdb") as reader:
            _, ms, mib = _timed(lambda: lineage_from_catalog(reader))
            result["now_from_catalog"] = {"lineage_ms": ms, "peak_mib": mib}

            def former():
                t = time.perf_counter()
                _, _, genome_hash = reader.latest_snapshot()
                ids, _, d = reader.exact_distances(genome_hash)
                matrix_ms = (time.perf_counter() - t) * 1e3
                models = reader.model_rows()
                declared = {m["id"]: list(m["base_models"] or []) for m in models}
                created = {m["id"]: m["created_at"] for m in models if m["created_at"] is not None}
                t = time.perf_counter()
                findings = [f.as_dict() for f in check_lineage(d, ids, declared, created)]
                lineage_ms = (time.perf_counter() - t) * 1e3
                at = {m: i for i, m in enumerate(ids)}
                t = time.perf_counter()
                relation_distances(ids, lambda pairs: [d[at[a], at[b]] for a, b in pairs], reader.explorer_models())
                mean = reader.mean_scores()
                scored = sorted({m for m, _ in mean} & set(ids))
                d[np.ix_([at[m] for m in scored], [at[m] for m in scored])].copy()
                rest_ms = (time.perf_counter() - t) * 1e3
                return findings, {"matrix_ms": matrix_ms, "lineage_ms": lineage_ms, "plots_inputs_ms": rest_ms}

            (dense, times), ms, mib = _timed(former)
            result["former"] = {**times, "total_ms": ms, "peak_mib": mib}

        key = lambda f: (f["kind"], f["model_id"], f["other_id"])  # noqa: E731
        got, want = {key(f): f for f in lineage}, {key(f): f for f in dense}
        both = [(f, want[k]) for k, f in got.items() if k in want]
        sampled = [(f, w) for f, w in both if "sampled" in (f["detail"] or "")]
        exact = [(f, w) for f, w in both if "sampled" not in (f["detail"] or "")]
        kinds: dict[str, int] = {}
        for f in lineage:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        # a finding's kind is part of its key: a pair in both has the same kind in both
        result["findings"] = {
            "graph": len(got), "dense": len(want), "same_kind": len(both), "kinds": kinds,
            "exact_ranks": len(exact), "exact_ranks_equal": sum(1 for f, w in exact if f["rank"] == w["rank"]),
            "sampled_ranks": len(sampled),
            "sampled_rank_share_error_mean": (sum(abs(f["rank"] - w["rank"]) for f, w in sampled)
                                              / max(1, len(sampled)) / max(1, args.models - 1)),
            "sampled_rank_share_error_max": max((abs(f["rank"] - w["rank"]) / max(1, args.models - 1)
                                                 for f, w in sampled), default=0.0)}
        result["former_over_now"] = (result["former"]["total_ms"]
                                     / (now["view_ms"] + now["lineage_ms"] + now["plots_inputs_ms"]))
        if args.more:
            result["streaming"] = _streaming(writer, add, args)
        print(json.dumps(result), flush=True)
    return 0


def _streaming(writer, add, args) -> dict:
    """A streaming job's next export: the check at this publish (its far ranks kept, as the
    writer keeps them), ``--more`` inserts, then the next check with them carried, against a
    fresh check of the same grown index (the baseline); both timed, their findings compared."""
    from indexer.adapters.publish import lineage_from_catalog
    from indexer.core.lineage import FarRanks

    writer.reopen()
    cat = writer.catalog
    memo = FarRanks()
    lineage_from_catalog(cat, cat.distance_view(writer.index.alleles), memo)
    for i in range(args.models, args.models + args.more):
        add(i)
    view = cat.distance_view(writer.index.alleles)
    before = memo.computed
    carried, carried_ms, _ = _timed(lambda: lineage_from_catalog(cat, view, memo))
    fresh_memo = FarRanks()
    fresh, fresh_ms, _ = _timed(lambda: lineage_from_catalog(cat, view, fresh_memo))
    writer.close()
    return {"models": args.models + args.more, "more": args.more, "far_queries": len(memo.entries),
            "carried_lineage_ms": carried_ms, "fresh_lineage_ms": fresh_ms,
            "carried_distances": memo.computed - before, "fresh_distances": fresh_memo.computed,
            "fresh_over_carried": fresh_ms / carried_ms, "findings_equal": carried == fresh}


if __name__ == "__main__":
    raise SystemExit(main())
