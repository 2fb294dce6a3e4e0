"""Inserts through the catalog: the real writer on a DuckDB file, sparse index against exact.

    python benchmarks/bench_catalog.py [--models 5000] [--modes sparse,exact] [--exact-max 2000]
                                       [--publish-every 100] [--k 32] [--tree-every 100]
                                       [--genes 128] [--samples 32] [--copy-every 1]
                                       [--memory-limit SIZE] [--seed 0] [--out DIR]

Streams simulated models (``simulate_probes``: real-like allele diversity, about 17 distinct
alleles per gene at N = 32) one at a time through ``IndexWriter.apply``, each one catalog
transaction (model row, probe and alleles, distances, tree snapshot, watermark), and calls
``IndexWriter.publish`` every ``--publish-every`` inserts (``<catalog>.published/``: the rows
changed since, appended as Parquet parts). Beside each publish it times the baseline, a full
copy of the database file (``COPY FROM DATABASE``, what publishing was before), on the same
catalog at the same moment (every ``--copy-every``-th publish: at tens of thousands of models
the copy itself takes seconds). Prints one JSON object per mode: apply latency percentiles
(overall and per fifth of the run), publish time (and the baseline's, with the ratio), rows
each publish wrote, apply + amortised publish per model, catalog and published bytes per
model, the rows each table holds, the peak RSS of the process (also before the first
baseline copy, and the RSS before the writer opened: the simulated probes are the bench's,
not the writer's), at the end of each fifth
the RSS then and what DuckDB's buffer manager holds (``duckdb_memory()``, by tag). The
exact mode runs only up to ``--exact-max`` models (its full rows grow with n), on the same
models, as the baseline to read the sparse figures against. No scores are imported, so no
estimates are fitted. Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _outcome(writer, eco, i: int):
    from indexer.app.job import ProbeOutcome, probe_id_for
    from schemas.records import AlleleCounts, ModelRecord, ModelStatus, ProbeRecord

    cfg, g = writer.config, writer.genome
    model = ModelRecord(id=eco.ids[i], revision="r1", status=ModelStatus.discovered,
                        created_at=T0 + timedelta(seconds=i))
    probe = ProbeRecord(probe_id=probe_id_for(model, cfg, g.hash), model_id=model.id, revision="r1",
                        genome_hash=g.hash, backend="simulated", backend_version="simulate_probes",
                        params=cfg.params,
                        alleles=AlleleCounts(genome_hash=g.hash, n_samples=eco.n_samples, counts=eco.counts(i)),
                        seconds=0.0, started_at=T0)
    return ProbeOutcome(model, probe)


def _full_copy_ms(con, target: Path) -> float:
    """The baseline: the whole database copied to ``target`` (then deleted), in ms."""
    target.unlink(missing_ok=True)
    db = con.execute("select current_database()").fetchone()[0]
    t = time.perf_counter()
    con.execute(f"attach '{target}' as _copy")  # a path of our own making
    try:
        con.execute(f'copy from database "{db}" to _copy')
    finally:
        con.execute("detach _copy")
    ms = (time.perf_counter() - t) * 1e3
    target.unlink(missing_ok=True)
    return ms


def _rss_mib() -> float:
    """The process's resident memory now (not the peak), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _duckdb_mib(con) -> dict:
    """What DuckDB's buffer manager holds, by tag (base tables, indexes, ...), in MiB."""
    rows = con.execute("select tag, memory_usage_bytes from duckdb_memory() where memory_usage_bytes > 0").fetchall()
    return {tag.lower(): round(b / 2**20, 1) for tag, b in rows}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_mode(mode: str, eco, n: int, args, folder: Path) -> dict:
    from indexer.adapters.catalog import snapshot_path
    from indexer.app.job import JobConfig
    from indexer.app.writer import IndexWriter
    from schemas.records import ProbeParams

    path = folder / f"{mode}.duckdb"
    cfg = JobConfig(catalog=path, backend="simulated", n_genes=args.genes,
                    params=ProbeParams(n_samples=args.samples), index_mode=mode, index_k=args.k,
                    tree_every=args.tree_every)
    rss_before = _rss_mib()  # the simulated probes, the bench's own: not the writer's memory
    if args.memory_limit:
        cfg = dataclasses.replace(cfg, catalog_memory_limit=args.memory_limit)
    writer = IndexWriter(cfg)
    memory_limit = writer.catalog.con.execute("select current_setting('memory_limit')").fetchone()[0]
    apply_ms, publish_ms, copy_ms, publish_rows, copied_at = [], [], [], [], []
    memory_by_fifth = []  # RSS now and DuckDB's share of it, at the end of each fifth
    peak_before_copies = None  # the baseline's copies raise the peak RSS: the peak before the first
    stretch = max(1, n // 5)
    for i in range(n):
        outcome = _outcome(writer, eco, i)  # building the records is not the writer's time
        t = time.perf_counter()
        writer.apply(outcome)
        apply_ms.append((time.perf_counter() - t) * 1e3)
        if (i + 1) % args.publish_every == 0 or i + 1 == n:
            t = time.perf_counter()
            writer.publish()
            publish_ms.append((time.perf_counter() - t) * 1e3)
            publish_rows.append(writer.catalog.last_publish_rows)
            if len(publish_ms) % args.copy_every == 0 or i + 1 == n:
                peak_before_copies = peak_before_copies or _peak_rss_mib()  # the writer's, and the bench's data
                copy_ms.append(_full_copy_ms(writer.catalog.con, folder / f"{mode}.copy.duckdb"))
                copied_at.append(len(publish_ms) - 1)
        if (i + 1) % stretch == 0:
            memory_by_fifth.append({"models": i + 1, "rss_mib": round(_rss_mib()), "peak_rss_mib": round(_peak_rss_mib()),
                                    "duckdb_mib": _duckdb_mib(writer.catalog.con)})
            print(f"{mode}: {i + 1}/{n} applied, median {statistics.median(apply_ms[-stretch:]):.1f} ms "
                  f"over the last {stretch}", file=sys.stderr, flush=True)
    rows = {t: writer.catalog.con.execute(f"select count(*) from {t}").fetchone()[0]  # our own table names
            for t in ("alleles", "distance_pairs", "tree_snapshots", "probes")}
    trees = writer.catalog.con.execute("select count(*) from tree_snapshots where newick is not null").fetchone()[0]
    writer.close()
    size = path.stat().st_size
    manifest = json.loads((snapshot_path(path) / "manifest.json").read_text())
    live = [snapshot_path(path) / p["file"] for t in manifest["tables"].values() for p in t["parts"]]
    snap = sum(f.stat().st_size for f in live)  # without the files merges retired (kept a while for readers)
    return {
        "mode": mode, "models": n, "k": args.k if mode == "sparse" else None,
        "tree_every": args.tree_every if mode == "sparse" else None, "publish_every": args.publish_every,
        "apply_ms_median": statistics.median(apply_ms), "apply_ms_p95": _pct(apply_ms, 0.95),
        "apply_ms_by_fifth": [round(statistics.median(apply_ms[j:j + stretch]), 2)
                              for j in range(0, n - stretch + 1, stretch)],
        "publish_ms_median": statistics.median(publish_ms), "publish_ms_last": publish_ms[-1],
        "publish_ms_amortised": sum(publish_ms) / n,
        "full_copy_ms_median": statistics.median(copy_ms), "full_copy_ms_last": copy_ms[-1],
        "full_copies": len(copy_ms),
        # the publishes the copy ran beside: like for like when it ran beside only some
        "publish_vs_full_copy": sum(publish_ms[j] for j in copied_at) / sum(copy_ms),
        "publish_rows_median": statistics.median(publish_rows), "publish_rows_first": publish_rows[0],
        "published_parts": len(live), "published_parts_retired": len(manifest["retired"]),
        "through_catalog_ms_median": statistics.median(apply_ms) + sum(publish_ms) / n,
        "catalog_bytes_per_model": size / n, "published_bytes_per_model": snap / n,
        "rows": rows, "whole_trees": trees,
        "memory_by_fifth": memory_by_fifth, "memory_limit": memory_limit,
        "peak_rss_mib": _peak_rss_mib(), "rss_before_writer_mib": round(rss_before),
        "peak_rss_before_copies_mib": round(peak_before_copies),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=5000)
    ap.add_argument("--modes", default="sparse,exact")
    ap.add_argument("--exact-max", type=int, default=2000)
    ap.add_argument("--publish-every", type=int, default=100)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tree-every", type=int, default=100)
    ap.add_argument("--genes", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--copy-every", type=int, default=1,
                    help="time the full-copy baseline beside every N-th publish (and the last)")
    ap.add_argument("--memory-limit", default=None,
                    help="DuckDB's memory_limit on the writer's connection (e.g. 4GB); "
                         "the setting catalog_memory_limit's default if unset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep the catalogs in this folder")
    args = ap.parse_args()

    from indexer.core.simulate import simulate_probes

    eco = simulate_probes(args.models, seed=args.seed, n_genes=args.genes, n_samples=args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for mode in args.modes.split(","):
            n = args.models if mode == "sparse" else min(args.models, args.exact_max)
            print(json.dumps(run_mode(mode, eco, n, args, folder)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
