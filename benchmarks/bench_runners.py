"""The backfill on Beam's in-process runner and on the DaskRunner, side by side.

    python benchmarks/bench_runners.py [--models 48] [--workers 1,2,4] [--genes 32] [--samples 16]
                                       [--seed 5] [--hub DIR --backend B]

Builds a simulated ecosystem (`phylolm simulate`, unless --hub names a Hub folder), then runs
`phylolm backfill` on it once per runner, each into a fresh catalog and probe cache: the
in-process FnApiRunner, then `--dask-workers W` for each W (a local dask cluster the CLI
starts and stops). Prints one JSON line per run: the wall seconds of the whole command and
of its phases, read off its output as it arrives (start → listed; listed → cluster up;
→ first insert, i.e. every probe done, since the writer starts after the gather; → last
insert; → exit), where the probes ran, and whether the catalog equals the in-process one.
Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], env: dict, cwd: Path) -> tuple[int, list[tuple[float, str]], float]:
    """Run `phylolm ARGS`; (exit status, [(seconds since start, stdout line)], total seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "indexer", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stdout]
    proc.wait()
    return proc.returncode, lines, time.monotonic() - start


def _catalog(path: Path) -> tuple:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return tuple(con.execute(q).fetchall() for q in (
            "select id, status from models order by id",
            "select p.model_id, a.gene, a.allele, a.count from alleles a join probes p on p.probe_id = a.probe "
            "order by 1, 2, 3",
            "select model_a, model_b, round(similarity, 12) from distance_pairs order by 1, 2",
            "select newick from tree_snapshots order by snapshot_id desc limit 1"))
    finally:
        con.close()


def _first(lines, pattern: str) -> float | None:
    rx = re.compile(pattern)
    return next((t for t, line in lines if rx.search(line)), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=48)
    ap.add_argument("--workers", default="1,2,4", help="dask worker counts, comma-separated")
    ap.add_argument("--genes", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--hub", type=Path, help="a Hub folder to backfill instead of a simulated one")
    ap.add_argument("--backend", default="simulated")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="bench-runners-") as tmp:
        work = Path(tmp)
        hub = args.hub
        if hub is None:
            hub = work / "hub"
            code, _, _ = _cli(["simulate", "--models", str(args.models), "--seed", str(args.seed), "--genes",
                               str(args.genes), "--samples", str(args.samples), "--out", str(hub)], env, work)
            if code != 0:
                print(json.dumps({"error": "phylolm simulate failed"}))
                return 1
        runs = [("FnApiRunner (in-process)", [])] + [
            (f"DaskRunner, {w} worker(s)", ["--dask-workers", str(w)]) for w in args.workers.split(",") if w]
        reference = None
        for name, extra in runs:
            catalog = work / f"c{len(extra) and extra[-1]}.duckdb"
            run_env = dict(env, PHYLOLM_CACHE_DIR=str(work / f"cache-{catalog.stem}"))
            code, lines, total = _cli(["backfill", "--hub", str(hub), "--catalog", str(catalog), "--backend",
                                       args.backend, "--genes", str(args.genes), "--samples", str(args.samples),
                                       *extra], run_env, work)
            listed = _first(lines, r"^backfill: \d+ model")
            up = _first(lines, r"^dask: local cluster")
            first = _first(lines, r"^\[1/\d+\]")
            last = max((t for t, line in lines if line.startswith("[")), default=None)
            where = next((line.split(": ", 1)[1] for _, line in lines if line.startswith("probes of ")), None)
            got = _catalog(catalog) if code == 0 else None
            if reference is None:
                reference = got
            row = {"runner": name, "models": len(got[0]) if got else None, "exit": code,
                   "seconds": round(total, 2),
                   "start_to_listed": listed and round(listed, 2),
                   "cluster_up": up and listed and round(up - listed, 2),
                   "probes_done_at": first and round(first, 2),
                   "inserts": first and last and round(last - first, 2),
                   "after_last_insert": last and round(total - last, 2),
                   "probes_ran_in": where,
                   "same_catalog_as_in_process": got == reference if got else None}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
