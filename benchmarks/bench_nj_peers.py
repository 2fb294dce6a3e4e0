"""Full NJ time: ours against quicktree and clearcut --neighbor on the same matrices, JSON lines.

    python benchmarks/bench_nj_peers.py [--models 1000,2000,4000] [--seed 0] [--repeats 3]
                                        [--baseline OLD_NJ.py]

Each matrix is a simulated ecosystem (128 genes, one probe of N = 32 per gene, AlleleIndex
distances rounded to 8 decimals: ``indexer.bench.nj_peers.simulated_distances``). Programs run in
turn, ``--repeats`` rounds, and the minimum and median wall time of each is printed. Ours
is ``neighbor_joining`` on the matrix in memory; a peer's time is its whole process,
reading the PHYLIP text included. ``--baseline`` times another copy of ``nj.py`` side by
side (e.g. ``git show REV:indexer/core/tree/nj.py > old_nj.py``). Peers that are not installed
are left out. The RF between every two trees is printed too. Figures only: nothing is
asserted.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexer.bench.nj_peers import clearcut_newick, quicktree_newick, simulated_distances, write_phylip  # noqa: E402
from indexer.core.tree import neighbor_joining, parse_newick, robinson_foulds  # noqa: E402


def _load(path: str):
    spec = importlib.util.spec_from_file_location("baseline_nj", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="1000,2000,4000", help="comma-separated sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", help="another nj.py to time side by side")
    args = ap.parse_args()
    baseline = _load(args.baseline) if args.baseline else None
    for n in (int(x) for x in args.models.split(",")):
        t0 = time.perf_counter()
        d = simulated_distances(n, args.seed)
        matrix_seconds = time.perf_counter() - t0
        names = [f"m{i}" for i in range(n)]
        with tempfile.TemporaryDirectory() as tmp:
            phy = Path(tmp) / "d.phy"
            write_phylip(d, phy)
            out = Path(tmp) / "cc.tre"
            programs = {"ours": lambda: neighbor_joining(d, names)}
            if baseline is not None:
                programs["baseline"] = lambda: baseline.neighbor_joining(d, names)
            if shutil.which("quicktree"):
                programs["quicktree"] = lambda: parse_newick(quicktree_newick(phy))
            if shutil.which("clearcut"):
                programs["clearcut"] = lambda: parse_newick(clearcut_newick(phy, out))
            seconds: dict[str, list[float]] = {k: [] for k in programs}
            trees = {}
            for _ in range(args.repeats):
                for name, run in programs.items():
                    t0 = time.perf_counter()
                    trees[name] = run()
                    seconds[name].append(time.perf_counter() - t0)
        row = {"models": n, "seed": args.seed, "cpu_count": os.cpu_count(),
               "load_average_1min": round(os.getloadavg()[0], 2), "matrix_seconds": round(matrix_seconds, 2),
               "seconds_min": {k: round(min(v), 3) for k, v in seconds.items()},
               "seconds_median": {k: round(statistics.median(v), 3) for k, v in seconds.items()}}
        for peer in ("baseline", "quicktree", "clearcut"):
            if peer in seconds:
                row[f"ours_over_{peer}_min"] = round(min(seconds["ours"]) / min(seconds[peer]), 2)
        keys = list(trees)
        row["rf"] = {f"{a}-{b}": robinson_foulds(trees[a], trees[b], normalised=False)
                     for i, a in enumerate(keys) for b in keys[i + 1:]}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
