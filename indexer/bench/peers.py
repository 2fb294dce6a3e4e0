"""``phylolm bench index --peers``: our placement and tree building beside independent
programs installed for the run, on the same simulated inputs, reported as ratios.

**Inputs.** ``simulate_probes`` (real-like allele diversity), ``models`` models; ``queries``
of them are held out, drawn by ``numpy.random.default_rng(seed).choice`` (without
replacement). The other ``models - queries`` (the backbone models) are streamed in upload
order into a ``PhyloIndex(mode="sparse")``; the held-out queries are then streamed after
them, so the index ends with all ``models`` (upload order with the queries moved to the end).

**1. Placement beside APPLES-2** (``pip install apples``; its ``run_apples.py``).

- *Backbone.* Both methods place on the SAME backbone Newick, with branch lengths fitted to
  the distances, as APPLES-2 expects of its input tree. ``backbone="nj"`` (the default up to
  ``nj_max_models``): neighbour joining of the backbone models' full distance matrix, a
  tree neither placement method built. ``backbone="index"``: the tree the sparse index
  maintains after streaming the backbone models (our own incremental tree). Delta error
  discounts the backbone's own error, so either is fair; "nj" is the neutral one.
- *Distances.* Each query's PhyloLM distances to every backbone model (the exact full row,
  rounded to 8 decimals), the same numbers for everyone. APPLES-2 reads them as its ``-d``
  table (``run_apples.py -d table -t backbone.nwk -o out.jplace``; header: a blank cell and
  the backbone names; one row per query) and otherwise runs with its DEFAULTS: FM
  weighting, MLSE criterion, the APPLES-2 filter (the 25 closest backbone models, plus any
  closer than 0.2), all cores. ``--debug`` is passed only so that it logs its own stage
  times (logging changes nothing in the algorithm).
- *Ours.* ``sparse``: the index's own path for a new model: its ``k`` nearest backbone
  models from the neighbour graph (HNSW candidates re-scored exactly, or the exact backend)
  and least-squares placement on the subtree they span (``place_in_neighbourhood``). ``full``:
  least-squares placement (``place``, FM weights) on the whole backbone with the full row,
  as the exact mode does. Neither runs NNI afterwards (APPLES-2 places only).
- *Delta error* (as in the APPLES and EPA-ng papers). With B the backbone models, q the
  query, T* the true tree, T_B the backbone tree and T_q the backbone tree with q attached
  on the chosen edge: ``delta(q) = FN(T*|B+q, T_q) - FN(T*|B, T_B)``, where T*|X is the true
  tree restricted to the leaves X (unbranched paths contracted) and FN(A, T) is the number
  of non-trivial splits of A that T lacks. It counts the true splits lost by the placement
  alone: an integer >= 0 (T_q restricted to B is T_B), and 0 when q sits on the edge where
  the truth has it (when T_B = T*|B) or on any edge that loses no true split.
- *Time per query.* Ours, in process: the placement alone (``placement_ms``; APPLES-2 too
  is given distances), and for ``sparse`` also the neighbour search that yields its k
  distances (``neighbours_ms``). APPLES-2: its whole process (start-up, reading the tree
  and the table, all queries; ``process_seconds``) divided by q, and its own logged time
  for all queries (``queries_seconds``, on its pool of processes) divided by q.
- Ratios ``ours_over_apples``: our figure divided by APPLES-2's (below 1: ours is lower).

**2. Full builds beside quicktree and clearcut** (Debian packages), up to
``nj_max_models``: the full matrix of all ``models`` (rounded to 8 decimals, a PHYLIP file
for the peers) built by ours (``neighbor_joining``, in process), ``quicktree`` (exact NJ),
``clearcut --neighbor`` (exact NJ) and ``clearcut`` by default (relaxed NJ; ``--seed``
fixed). A peer's seconds are its whole process, reading the PHYLIP text included. Reported:
seconds and nRF to the truth of each, ``<figure>_ours_over_<peer>`` ratios, and the issue's
target ``nrf_ratio_incremental_over_nj`` = nRF(index tree at n, truth) / nRF(our NJ, truth).

Peers that are not installed are reported as ``"not installed"``; nothing here asserts.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from indexer.bench.index import MIN_MODELS
from indexer.core.blas import one_blas_thread
from indexer.bench.nj_peers import PEER_TIMEOUT_S, clearcut_newick, quicktree_newick, write_phylip
from indexer.core.distance import distance_from_similarity
from indexer.core.phylo_index import PhyloIndex
from indexer.core.tree import RebuildPolicy, Tree, neighbor_joining, parse_newick, robinson_foulds, to_newick
from indexer.core.tree.neighbourhood import place_in_neighbourhood
from indexer.core.tree.placement import place

NOT_INSTALLED = "not installed"
BACKBONES = ("nj", "index")
APPLES_TIMEOUT_S = 1800


# -- delta error -------------------------------------------------------------------------
class SplitCounter:
    """Splits of trees over one fixed numbering of all models (bit i = model i), restricted
    to any leaf subset: the splits of T restricted to X are the restrictions to X of T's
    splits that stay non-trivial. Masks are Python integers."""

    def __init__(self, names: Sequence[str]):
        self.bit = {x: i for i, x in enumerate(names)}

    def clade_masks(self, tree: Tree) -> list[int]:
        """The leaves below every node (in the tree's stored rooting), as bitmasks."""
        mask = [0] * tree.n_nodes
        for v in tree.order[::-1].tolist():
            kids = tree.children[v]
            if not kids:
                mask[v] = 1 << self.bit[tree.label[v]]
            else:
                acc = 0
                for c in kids:
                    acc |= mask[c]
                mask[v] = acc
        return mask

    def mask_of(self, names: Iterable[str]) -> int:
        m = 0
        for x in names:
            m |= 1 << self.bit[x]
        return m

    @staticmethod
    def split_set(masks: Iterable[int], within: int) -> set[int]:
        """Non-trivial splits, restricted to the leaves ``within``, of the edges whose lower
        sides are ``masks``; each normalised to the side without the lowest leaf of ``within``."""
        low = within & -within
        size = within.bit_count()
        out = set()
        for m in masks:
            m &= within
            k = m.bit_count()
            if 2 <= k <= size - 2:
                out.add(within ^ m if m & low else m)
        return out


class DeltaError:
    """Delta error of placements of held-out queries on one backbone tree (see the module
    docstring): ``FN(T*|B+q, T_q) - FN(T*|B, T_B)``."""

    def __init__(self, truth: Tree, backbone: Tree):
        names = sorted(truth.leaf_node)
        self.counter = SplitCounter(names)
        c = self.counter
        self.backbone = backbone
        self.truth_masks = [m for v, m in enumerate(c.clade_masks(truth)) if v != truth.root]
        self.masks = c.clade_masks(backbone)
        self.within = c.mask_of(backbone.leaf_node)
        if len(backbone.leaf_node) != self.within.bit_count():
            raise ValueError("backbone leaves must be distinct models of the truth")
        self.backbone_splits = c.split_set(self._edges(self.masks), self.within)
        self.backbone_fn = len(c.split_set(self.truth_masks, self.within) - self.backbone_splits)
        self.node_of_mask = {m: v for v, m in enumerate(self.masks) if v != backbone.root}

    def _edges(self, masks: list[int]) -> list[int]:
        return [m for v, m in enumerate(masks) if v != self.backbone.root]

    def __call__(self, query: str, edge: int) -> int:
        """Delta error of ``query`` attached on the edge above backbone node ``edge``."""
        t = self.backbone
        if edge == t.root or not 0 <= edge < t.n_nodes:
            raise ValueError("the edge is named by the node below it, never the root")
        qbit = 1 << self.counter.bit[query]
        if self.within & qbit:
            raise ValueError(f"{query!r} is in the backbone")
        within = self.within | qbit
        masks = list(self.masks)
        v = int(t.parent[edge])
        while v != t.root:  # strict ancestors of the edge's lower node gain q
            masks[v] |= qbit
            v = int(t.parent[v])
        placed = self._edges(masks) + [self.masks[edge] | qbit]  # + the new node above ``edge``
        c = self.counter
        fn = len(c.split_set(self.truth_masks, within) - c.split_set(placed, within))
        return fn - self.backbone_fn

    def edge_of_clade(self, leaves: Iterable[str]) -> int:
        """The backbone node below the edge whose one side is exactly ``leaves``."""
        m = self.counter.mask_of(leaves)
        for key in (m, self.within ^ m):
            if key in self.node_of_mask:
                return self.node_of_mask[key]
        raise KeyError("no backbone edge splits off these leaves")


# -- APPLES-2 ----------------------------------------------------------------------------
def apples_program() -> str | None:
    """The ``run_apples.py`` that ``pip install apples`` puts beside this Python, or on PATH;
    None when apples is not installed."""
    if importlib.util.find_spec("apples") is None:
        return None
    here = Path(sys.executable).parent / "run_apples.py"
    return str(here) if here.is_file() else shutil.which("run_apples.py")


def write_distance_table(path: str | Path, queries: Sequence[str], backbone: Sequence[str], d: np.ndarray) -> None:
    """APPLES' ``-d`` table: a header of a blank cell and the backbone names, then one row
    per query (its name, then its distances), tab-separated, 8 decimals."""
    with open(path, "w") as f:
        f.write("\t" + "\t".join(backbone) + "\n")
        for name, row in zip(queries, d):
            f.write(name + "\t" + "\t".join(f"{x:.8f}" for x in row) + "\n")


def jplace_edge_clades(tree_text: str) -> dict[int, frozenset[str]]:
    """Edge number -> the leaves below that edge, from a jplace tree (Newick with ``{n}``
    edge numbers after each branch length)."""
    text = re.sub(r"^\s*\[[^\]]*\]", "", tree_text)
    out: dict[int, frozenset[str]] = {}
    stack: list[list[frozenset[str]]] = []
    current: frozenset[str] | None = None
    for tok in re.findall(r"\(|\)|,|;|\{\d+\}|:[^,(){};]*|[^,(){};:]+", text):
        if tok == "(":
            stack.append([])
            current = None
        elif tok == ",":
            stack[-1].append(current)
            current = None
        elif tok == ")":
            stack[-1].append(current)
            current = frozenset().union(*stack.pop())
        elif tok == ";":
            break
        elif tok[0] == "{":
            out[int(tok[1:-1])] = current
        elif tok[0] == ":" or not tok.strip():
            continue
        elif current is None:  # a leaf's label (an internal node's label follows a ')')
            current = frozenset([tok.strip()])
    return out


# run_apples.py run through this launcher: apples 2.0.11 imports ``pkg_resources`` at start-up
# (for the path of its bundled FastTree, used only to re-estimate a backbone from an
# alignment, never with a distance table), and setuptools >= 81 no longer has it. Where it is
# missing, a stand-in with that one function is put in its place; nothing else changes.
_APPLES_LAUNCHER = """
import importlib.util, runpy, sys, types
if importlib.util.find_spec("pkg_resources") is None:
    from importlib.resources import files
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = lambda package, name: str(files(package) / name)
    sys.modules["pkg_resources"] = shim
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_apples(program: str, tree_newick: str, queries: Sequence[str], backbone: Sequence[str],
               d: np.ndarray, workdir: str | Path) -> dict:
    """APPLES-2 with its defaults on the backbone Newick and the query-to-backbone table.
    Returns {"placements": {query: frozenset of the leaves below the chosen edge},
    "process_seconds", "queries_seconds" (its own log; None if absent), "unplaced"}."""
    work = Path(workdir)
    tree_fp, dist_fp, out_fp = work / "backbone.nwk", work / "queries.dist", work / "apples.jplace"
    tree_fp.write_text(tree_newick + "\n")
    write_distance_table(dist_fp, queries, backbone, d)
    cmd = [sys.executable, "-c", _APPLES_LAUNCHER, program, "-t", str(tree_fp), "-d", str(dist_fp),
           "-o", str(out_fp), "--debug"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=APPLES_TIMEOUT_S)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"run_apples.py failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    jplace = json.loads(out_fp.read_text())
    clades = jplace_edge_clades(jplace["tree"])
    placed = {}
    for p in jplace["placements"]:
        names = p.get("n") or [nm[0] for nm in p.get("nm", [])]
        for name in names:
            placed[name] = clades[int(p["p"][0][0])]
    found = re.search(r"Processed all queries in ([0-9.]+) seconds", r.stderr)
    return {"placements": placed, "process_seconds": seconds,
            "queries_seconds": float(found.group(1)) if found else None,
            "unplaced": sorted(set(queries) - set(placed))}


# -- the benchmark -----------------------------------------------------------------------
def bench_peers(models: int = 5000, queries: int = 100, seed: int = 0, genes: int = 128, samples: int = 32,
                shape: str = "yule", k: int = 32, candidates: int = 64, backend: str = "hnsw",
                growth: float | None = 0.5, rebuild_max_models: int = 2000, backbone: str | None = None,
                nj_max_models: int = 5000) -> dict:
    """The side-by-side run (module docstring). ``backbone``: "nj" | "index" | None (nj up to
    ``nj_max_models``, else index). Returns the figures as a JSON-ready dict."""
    from indexer.core.simulate import SHAPES, simulate_probes

    if models < MIN_MODELS or not 1 <= queries <= models - MIN_MODELS:
        raise ValueError(f"need at least {MIN_MODELS} models and 1 <= queries <= models - {MIN_MODELS}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    backbone = backbone or ("nj" if models - queries <= nj_max_models else "index")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}")
    load_start = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    eco = simulate_probes(models, seed=seed, n_genes=genes, n_samples=samples, shape=shape)
    sim_seconds = time.perf_counter() - t0
    held = np.sort(np.random.default_rng(seed).choice(models, queries, replace=False))
    is_query = np.zeros(models, dtype=bool)
    is_query[held] = True
    index = PhyloIndex(genome_hash=f"simulated-{seed}", n_samples=samples, policy=RebuildPolicy(growth=growth),
                       mode="sparse", k=k, candidates=candidates, backend=backend,
                       rebuild_max_models=rebuild_max_models)
    t1 = time.perf_counter()
    with one_blas_thread():
        for i in np.flatnonzero(~is_query).tolist():
            index.insert(eco.ids[i], eco.counts(i))
    backbone_stream_seconds = time.perf_counter() - t1
    backbone_ids = list(index.ids)
    t2 = time.perf_counter()
    if backbone == "nj":
        tree = neighbor_joining(index.distance_matrix(), backbone_ids)
    else:
        tree = index.tree.copy()
    backbone_seconds = time.perf_counter() - t2
    out: dict = {
        "models": models, "queries": queries, "seed": seed, "genes": genes, "samples": samples, "shape": shape,
        "k": k, "candidates": candidates, "backend": backend, "backbone": backbone,
        "cpu_count": os.cpu_count(), "load_average_1min_start": load_start,
        "simulation_seconds": round(sim_seconds, 1), "backbone_stream_seconds": round(backbone_stream_seconds, 1),
        "backbone_build_seconds": round(backbone_seconds, 1),
    }
    query_ids = [eco.ids[i] for i in held.tolist()]
    out["placement"] = _placement_side_by_side(index, tree, eco, held, query_ids)
    t3 = time.perf_counter()
    with one_blas_thread():
        for i in held.tolist():
            index.insert(eco.ids[i], eco.counts(i))
    out["query_stream_seconds"] = round(time.perf_counter() - t3, 1)
    out["nrf_incremental_truth"] = round(robinson_foulds(index.tree, eco.truth), 4)
    if models <= nj_max_models:
        out["full_builds"] = _full_builds(index, eco.truth, seed, out["nrf_incremental_truth"])
    else:
        out["full_builds"] = f"not run: more than --nj-max {nj_max_models} models"
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return out


def _placement_side_by_side(index: PhyloIndex, tree: Tree, eco, held: np.ndarray, query_ids: list[str]) -> dict:
    delta = DeltaError(eco.truth, tree)
    alleles, graph = index.alleles, index.graph
    nb = len(index)
    everyone = np.arange(nb)
    is_leaf = tree.is_leaf_mask()
    node_of_row = np.array([tree.leaf_node[x] for x in index.ids], dtype=np.int64)
    rows_d = np.empty((len(query_ids), nb))
    ours = {"sparse": {"delta": [], "placement_ms": [], "neighbours_ms": []},
            "full": {"delta": [], "placement_ms": []}}
    with one_blas_thread():
        for j, (i, qid) in enumerate(zip(held.tolist(), query_ids)):
            enc = alleles.encode_new(qid, eco.counts(i))
            cols, vals = enc.cols, enc.vals
            d = np.round(np.atleast_1d(distance_from_similarity(alleles.similarity_to(everyone, cols, vals))), 8)
            rows_d[j] = d
            t = time.perf_counter()
            found = graph.search(cols, vals)
            t_search = time.perf_counter()
            p, _ = place_in_neighbourhood(tree, node_of_row[found.rows], d[found.rows], index.incremental.weighting)
            t_placed = time.perf_counter()
            ours["sparse"]["neighbours_ms"].append(1e3 * (t_search - t))
            ours["sparse"]["placement_ms"].append(1e3 * (t_placed - t_search))
            ours["sparse"]["delta"].append(delta(qid, p.edge))
            by_node = np.zeros(tree.n_nodes)
            by_node[node_of_row] = d
            t = time.perf_counter()
            p = place(tree, by_node, is_leaf, index.incremental.weighting)
            ours["full"]["placement_ms"].append(1e3 * (time.perf_counter() - t))
            ours["full"]["delta"].append(delta(qid, p.edge))
    res: dict = {"backbone_models": nb, "backbone_fn_splits": delta.backbone_fn,
                 "backbone_nrf_truth": round(delta.backbone_fn / max(1, nb - 3), 4)}
    for name, r in ours.items():
        res[f"ours_{name}"] = _summary(r["delta"], {s: r[s] for s in r if s.endswith("_ms")})
    program = apples_program()
    if program is None:
        res["apples"] = NOT_INSTALLED
        return res
    short = {x: f"m{i}" for i, x in enumerate(eco.ids)}  # names safe in any Newick / table reader
    back = {v: x for x, v in short.items()}
    named = _relabel(tree.copy(), short)
    with tempfile.TemporaryDirectory() as tmp:
        a = run_apples(program, to_newick(named, support=False), [short[x] for x in query_ids],
                       [short[x] for x in index.ids], rows_d, tmp)
    deltas = [delta(qid, delta.edge_of_clade(back[x] for x in a["placements"][short[qid]]))
              for qid in query_ids if short[qid] in a["placements"]]
    q = len(query_ids)
    apples = _summary(deltas, {})
    apples.update({"unplaced": len(a["unplaced"]), "process_seconds": round(a["process_seconds"], 3),
                   "process_ms_per_query": round(1e3 * a["process_seconds"] / q, 3),
                   "queries_seconds": a["queries_seconds"],
                   "queries_ms_per_query": None if a["queries_seconds"] is None
                   else round(1e3 * a["queries_seconds"] / q, 3),
                   "threads": os.cpu_count()})
    res["apples"] = apples
    for name in ours:
        mine = res[f"ours_{name}"]
        res[f"ours_{name}"]["ours_over_apples"] = {
            "delta_mean": _ratio(mine["delta_mean"], apples["delta_mean"]),
            "delta_median": _ratio(mine["delta_median"], apples["delta_median"]),
            "placement_ms_over_process_ms_per_query": _ratio(mine["placement_ms_mean"],
                                                             apples["process_ms_per_query"]),
            "placement_ms_over_queries_ms_per_query": _ratio(mine["placement_ms_mean"],
                                                             apples["queries_ms_per_query"]),
        }
    return res


def _summary(deltas: list[int], times: dict[str, list[float]]) -> dict:
    out = {"placed": len(deltas),
           "delta_mean": round(float(np.mean(deltas)), 4) if deltas else None,
           "delta_median": float(np.median(deltas)) if deltas else None,
           "delta_max": int(max(deltas)) if deltas else None,
           "delta_zero_share": round(float(np.mean(np.asarray(deltas) == 0)), 4) if deltas else None,
           "deltas": [int(x) for x in deltas]}
    for key, v in times.items():
        out[f"{key}_mean"] = round(float(np.mean(v)), 4)
        out[f"{key}_median"] = round(float(np.median(v)), 4)
    return out


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def _full_builds(index: PhyloIndex, truth: Tree, seed: int, nrf_incremental: float) -> dict:
    ids = list(index.ids)
    t = time.perf_counter()
    d = np.round(index.distance_matrix(), 8)
    out: dict = {"models": len(ids), "matrix_seconds": round(time.perf_counter() - t, 2)}
    t = time.perf_counter()
    ours = neighbor_joining(d, ids)
    seconds = {"ours": time.perf_counter() - t}
    trees = {"ours": ours}
    short_back = {f"m{i}": x for i, x in enumerate(ids)}  # write_phylip names row i "m<i>"
    with tempfile.TemporaryDirectory() as tmp:
        phy = Path(tmp) / "d.phy"
        t = time.perf_counter()
        write_phylip(d, phy)
        out["phylip_write_seconds"] = round(time.perf_counter() - t, 2)
        peers = {
            "quicktree": ("quicktree", lambda: quicktree_newick(phy)),
            "clearcut_exact": ("clearcut", lambda: clearcut_newick(phy, Path(tmp) / "cc.tre")),
            "clearcut_relaxed": ("clearcut", lambda: clearcut_relaxed_newick(phy, Path(tmp) / "ccr.tre", seed)),
        }
        for name, (binary, run) in peers.items():
            if shutil.which(binary) is None:
                trees[name] = None
                continue
            t = time.perf_counter()
            text = run()
            seconds[name] = time.perf_counter() - t
            trees[name] = _relabel(parse_newick(text), short_back)
    for name, tr in trees.items():
        if tr is None:
            out[name] = NOT_INSTALLED
            continue
        if set(tr.leaf_node) != set(ids):
            raise RuntimeError(f"{name}'s tree has not the leaves of the matrix")
        row = {"seconds": round(seconds[name], 3), "nrf_truth": round(robinson_foulds(tr, truth), 4)}
        if name != "ours":
            row["nrf_to_ours"] = round(robinson_foulds(tr, ours), 4)
            row["ours_over_peer"] = {"seconds": _ratio(out["ours"]["seconds"], row["seconds"]),
                                     "nrf_truth": _ratio(out["ours"]["nrf_truth"], row["nrf_truth"])}
        out[name] = row
    out["nrf_incremental_truth"] = nrf_incremental
    out["nrf_ratio_incremental_over_nj"] = _ratio(nrf_incremental, out["ours"]["nrf_truth"])
    return out


def clearcut_relaxed_newick(phy: str | Path, tree_file: str | Path, seed: int, program: str = "clearcut") -> str:
    """clearcut's default relaxed NJ of a PHYLIP matrix (its own shuffling, seeded)."""
    subprocess.run([program, f"--in={phy}", f"--out={tree_file}", "--distance", f"--seed={seed + 1}", "--quiet"],
                   capture_output=True, text=True, timeout=PEER_TIMEOUT_S, check=True)
    return Path(tree_file).read_text()


def _relabel(tree: Tree, names: dict[str, str]) -> Tree:
    tree.label = [None if x is None else names[x] for x in tree.label]
    tree.leaf_node = {names[x]: v for x, v in tree.leaf_node.items()}
    return tree


def table_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """The side-by-side figures for a human: (what, method, figure, value, ours over it)."""
    rows: list[tuple[str, str, str, str, str]] = []
    pl = result["placement"]
    rows.append(("placement", "backbone", f"{result['backbone']} tree of {pl['backbone_models']} models",
                 f"nRF to truth {pl['backbone_nrf_truth']}", ""))
    labels = {"ours_sparse": f"ours, sparse (k={result['k']})", "ours_full": "ours, full", "apples": "APPLES-2"}
    for method in ("ours_sparse", "ours_full", "apples"):
        r = pl[method]
        label = labels[method]
        if r == NOT_INSTALLED:
            rows.append(("placement", label, "", NOT_INSTALLED, ""))
            continue
        ratio = r.get("ours_over_apples", {})
        rows.append(("placement", label, "delta error mean / median",
                     f"{r['delta_mean']} / {r['delta_median']}", _fmt_pair(ratio.get("delta_mean"),
                                                                           ratio.get("delta_median"))))
        if method == "apples":
            rows.append(("placement", label, "ms per query: whole process / its query stage",
                         f"{r['process_ms_per_query']} / {r['queries_ms_per_query']}", ""))
        else:
            extra = f" (+ neighbours {r['neighbours_ms_mean']})" if "neighbours_ms_mean" in r else ""
            rows.append(("placement", label, "placement ms per query, mean" + extra, str(r["placement_ms_mean"]),
                         _fmt_pair(ratio.get("placement_ms_over_process_ms_per_query"),
                                   ratio.get("placement_ms_over_queries_ms_per_query"))))
    fb = result["full_builds"]
    if isinstance(fb, str):
        rows.append(("full build", "", "", fb, ""))
        return rows
    for name in ("ours", "quicktree", "clearcut_exact", "clearcut_relaxed"):
        r = fb[name]
        if r == NOT_INSTALLED:
            rows.append(("full build", name, "", NOT_INSTALLED, ""))
            continue
        ratio = r.get("ours_over_peer", {})
        rows.append(("full build", name, "seconds / nRF to truth", f"{r['seconds']} / {r['nrf_truth']}",
                     _fmt_pair(ratio.get("seconds"), ratio.get("nrf_truth"))))
    rows.append(("full build", "incremental", "nRF to truth / over our NJ's",
                 f"{fb['nrf_incremental_truth']} / {fb['nrf_ratio_incremental_over_nj']}", ""))
    return rows


def _fmt_pair(a, b) -> str:
    return "" if a is None and b is None else f"{a} / {b}"
