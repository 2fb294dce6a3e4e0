"""The in-memory phylogenetic index: allele vectors, distances, and the maintained tree.

Inserting a model: (1) its Nei similarity row against every indexed model, one sparse
product (``AlleleIndex``); (2) least-squares placement of the new leaf on the current tree,
O(n); (3) NNI around the insertion; (4) a full neighbour joining when the ``RebuildPolicy``
says so (steps 2-4: ``IncrementalTree``). Pure: no I/O; the catalog stores what this
computes and ``from_state`` resumes from it.

``mode="sparse"`` is the Hub-scale variant, with nothing O(n^2) on the insert path and no
n x n matrix in memory: (1) the model's k nearest from the ``NeighbourGraph`` (candidates
from HNSW, re-scored exactly); (2) placement on the subtree spanned by those neighbours
and NNI on sampled group averages (``NeighbourhoodTree``); (3) NJ rebuilds only while the
index is small. Full rows and the full matrix are computed on demand only.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.core.blas import one_blas_thread
from indexer.core.distance import AlleleIndex, distance_from_similarity, nearest_k
from indexer.core.neighbours import NeighbourGraph
from indexer.core.tree.bootstrap import gene_bootstrap
from indexer.core.tree.core import Tree
from indexer.core.tree.incremental import IncrementalTree
from indexer.core.tree.neighbourhood import NeighbourhoodTree
from indexer.core.tree.newick import parse_newick, to_newick
from indexer.core.tree.nj import neighbor_joining
from indexer.core.tree.placement import Placement
from indexer.core.tree.policy import RebuildPolicy


@dataclass
class InsertResult:
    model_id: str
    similarity: np.ndarray  # Nei similarity to the models indexed before, in that order
    distance: np.ndarray  # the PhyloLM distance of each of them (distance_from_similarity)
    neighbours: list[str]  # nearest earlier models by distance, closest first (ties: by id)
    neighbour_distances: list[float]
    placement: Placement | None  # None when the tree was built by NJ instead
    sister: list[str]  # up to 5 leaves below the edge the model was placed on
    nni_moves: int
    rebuilt: bool
    timings_ms: dict[str, float] = field(default_factory=dict)  # distance, placement, nni, rebuild
    rows: np.ndarray | None = None  # sparse mode: the rows similarity/distance refer to (see below)

    @property
    def insert_ms(self) -> float:
        """Distance row + placement + local NNI (a rebuild, when due, is counted apart)."""
        return sum(self.timings_ms.get(k, 0.0) for k in ("distance", "placement", "nni"))


@dataclass(frozen=True)
class BootstrapResult:
    n_replicates: int
    seed: int
    seconds: float
    support: dict[str, float]  # split (its smaller side's ids, sorted, space-joined) -> support


class PhyloIndex:
    """Models, their distance matrix and their tree, updated one model at a time."""

    def __init__(self, genome_hash: str = "", n_samples: int = 32, policy: RebuildPolicy | None = None,
                 weighting: str = "fm", nni_radius: int = 2, n_neighbours: int = 5, mode: str = "exact",
                 k: int = 32, candidates: int = 64, backend: str = "hnsw", rebuild_max_models: int = 2000,
                 rebuild_lag: int = 0):
        """``mode``: ``"exact"`` (full rows, dense matrix, the default) or ``"sparse"`` (the
        ``k`` nearest only; ``candidates``, ``backend``: see ``NeighbourGraph``; rebuilds up
        to ``rebuild_max_models``, off the write path when ``rebuild_lag > 0``: see
        ``NeighbourhoodTree``)."""
        if mode not in ("exact", "sparse"):
            raise ValueError(f"unknown mode {mode!r} (exact or sparse)")
        self.genome_hash = genome_hash
        self.n_samples = n_samples
        self.n_neighbours = n_neighbours
        self.mode = mode
        # the sparse mode keeps counts only (6 bytes an allele, not 14): see AlleleIndex
        self.alleles = AlleleIndex(n_samples=n_samples, values=(mode == "exact"))
        self.graph: NeighbourGraph | None = None
        if mode == "exact":
            self.incremental = IncrementalTree(policy, weighting, nni_radius)
        else:
            self.graph = NeighbourGraph(self.alleles, k=k, candidates=candidates, backend=backend)
            self.incremental = NeighbourhoodTree(self.alleles.distance_block, policy, weighting, nni_radius,
                                                 rebuild_max_models=rebuild_max_models, rebuild_lag=rebuild_lag)

    # -- reading -----------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return self.alleles.ids

    def __len__(self) -> int:
        return len(self.alleles)

    def __contains__(self, model_id: str) -> bool:  # O(1); ``model_id in ids`` copies and scans
        return model_id in self.alleles

    def ids_at(self, rows) -> list[str]:
        return self.alleles.ids_at(rows)

    @property
    def tree(self) -> Tree | None:
        return self.incremental.tree

    @property
    def policy(self) -> RebuildPolicy:
        return self.incremental.policy

    @property
    def n_rebuilds(self) -> int:
        return self.incremental.n_rebuilds

    @property
    def rebuild_seconds_total(self) -> float:
        return self.incremental.rebuild_seconds_total

    def distance_matrix(self) -> np.ndarray:
        """The full matrix: kept (exact mode) or computed now, O(n^2) (sparse mode)."""
        if self.mode == "sparse":
            everyone = np.arange(len(self))
            return self.alleles.distance_block(everyone, everyone)
        return self.incremental.distance_matrix()

    def newick(self, support: bool = True) -> str:
        return ";" if self.tree is None else to_newick(self.tree, support=support)

    def nearest(self, model_id: str, k: int = 5) -> list[tuple[str, float]]:
        """The k nearest models to an indexed one, by distance (ties: by id, see ``nearest_k``)."""
        r = self.alleles.row_of(model_id)
        if self.mode == "sparse":
            if k <= self.graph.k:
                nb = self.graph.neighbours(r)
                ids = self.ids
                best = sorted(zip(nb.distance.tolist(), (ids[j] for j in nb.rows.tolist())))[:k]
                return [(m, d) for d, m in best]
            row = self.graph.exact_row(r)
        else:
            row = self.incremental.distance_row(model_id)
        row[r] = np.inf
        ids = self.ids
        return [(ids[j], float(row[j])) for j in nearest_k(row, k, ids)]

    # -- writing -----------------------------------------------------------------
    def insert(self, model_id: str, counts: Sequence[dict[str, int]]) -> InsertResult:
        """Add one model: distance row (sparse mode: its k nearest), placement, local NNI,
        rebuild if due."""
        with one_blas_thread():
            if self.mode == "sparse":
                return self._insert_sparse(model_id, counts)
            return self._insert_exact(model_id, counts)

    def _insert_exact(self, model_id: str, counts: Sequence[dict[str, int]]) -> InsertResult:
        t0 = time.perf_counter()
        sim = self.alleles.add(model_id, counts, self.n_samples)
        drow = distance_from_similarity(sim) if sim.size else np.empty(0)
        distance_ms = (time.perf_counter() - t0) * 1e3
        upd = self.incremental.insert(model_id, drow)
        ids = self.ids
        order = nearest_k(drow, self.n_neighbours, ids[: drow.size])
        return InsertResult(model_id, sim, drow, [ids[j] for j in order], [float(drow[j]) for j in order],
                            upd.placement, upd.sister, upd.nni_moves, upd.rebuilt,
                            {"distance": distance_ms, **upd.timings_ms})

    def _insert_sparse(self, model_id: str, counts: Sequence[dict[str, int]]) -> InsertResult:
        t0 = time.perf_counter()
        found = self.graph.insert(model_id, counts, self.n_samples)
        distance_ms = (time.perf_counter() - t0) * 1e3
        upd = self.incremental.insert(model_id, found.rows, found.distance)
        near = found.rows[: self.n_neighbours].tolist()
        # its k nearest, then the earlier models whose k nearest it entered (beyond its own):
        # every pair of the graph, so that a store of them holds each model's current list
        entered = self.graph.entered
        more = ~np.isin(entered.rows, found.rows)
        return InsertResult(model_id, np.concatenate([found.similarity, entered.similarity[more]]),
                            np.concatenate([found.distance, entered.distance[more]]), self.ids_at(near),
                            found.distance[: len(near)].tolist(), upd.placement, upd.sister, upd.nni_moves,
                            upd.rebuilt, {"distance": distance_ms, **upd.timings_ms},
                            rows=np.concatenate([found.rows, entered.rows[more]]))

    def rebuild(self) -> Tree:
        """Replace the tree by a neighbour-joining tree of the current matrix."""
        return self.incremental.rebuild()

    def nj_tree(self) -> Tree:
        """A fresh neighbour-joining tree of the current matrix (the index is unchanged)."""
        return self.incremental.nj_tree()

    def bootstrap(self, n_replicates: int = 100, seed: int = 0) -> BootstrapResult:
        """Gene-bootstrap support of every split of the current tree, stored on the tree (and
        so written into ``newick()``). Cost: n_replicates x (similarity product + NJ)."""
        tree = self.tree
        if tree is None or len(self) < 4:
            raise ValueError("bootstrap needs a tree of at least four models")
        t0 = time.perf_counter()
        support = gene_bootstrap(
            tree, lambda w: distance_from_similarity(self.alleles.similarity_with_gene_weights(w)),
            self.ids, self.alleles.n_genes, n_replicates, seed, neighbor_joining)
        tree.support = dict(support)
        everyone = set(tree.leaf_node)
        by_split = {}
        for node, value in support.items():
            side = tree.subtree_leaves(node)
            if 2 * len(side) > len(everyone):
                side = sorted(everyone - set(side))
            by_split[" ".join(sorted(side))] = value
        return BootstrapResult(n_replicates, seed, time.perf_counter() - t0, by_split)

    def _resume_sparse(self, ids, counts_list, tree: Tree | None, first: list[int], later: list[int],
                       n_samples: int) -> "PhyloIndex":
        with one_blas_thread():
            if tree is None and len(ids) > self.incremental.rebuild_max_models:
                first, later = [], list(range(len(ids)))  # too many for NJ: insert them all
            for i in first:
                self.graph.insert(ids[i], counts_list[i], n_samples)
            if first:
                names = [ids[i] for i in first]
                use_tree = tree if tree is not None and tree.n_leaves >= 3 else None
                self.incremental.load(names, use_tree)
            for i in later:
                self._insert_sparse(ids[i], counts_list[i])
        return self

    @classmethod
    def from_state(cls, ids: Sequence[str], counts_list: Sequence[Sequence[dict[str, int]]],
                   newick: str | None = None, *, genome_hash: str = "", n_samples: int = 32,
                   policy: RebuildPolicy | None = None, **options) -> "PhyloIndex":
        """Resume from stored alleles and a stored tree: the allele index and the distance
        matrix are rebuilt in bulk (one sparse product), the tree is parsed, not rebuilt.
        Models the stored tree lacks are then inserted incrementally; with no stored tree,
        NJ builds one.

        Sparse mode: the neighbour graph is rebuilt by searching every model in the stored
        order (as the inserts did, so the lists come out the same), O(n x insert search),
        and nothing n x n is built unless there is no stored tree and n is at most
        ``rebuild_max_models`` (then NJ; beyond it the models are inserted one by one)."""
        if len(ids) != len(counts_list):
            raise ValueError("ids and counts_list differ in length")
        index = cls(genome_hash, n_samples, policy, **options)
        tree = parse_newick(newick) if newick and newick.strip() != ";" else None
        in_tree = set(tree.leaf_node) if tree is not None else set()
        unknown = in_tree - set(ids)
        if unknown:
            raise ValueError(f"the stored tree has {len(unknown)} models without alleles, e.g. {min(unknown)!r}")
        first = [i for i, m in enumerate(ids) if m in in_tree] if tree is not None else list(range(len(ids)))
        later = [i for i in range(len(ids)) if tree is not None and ids[i] not in in_tree]
        if index.mode == "sparse":
            return index._resume_sparse(ids, counts_list, tree, first, later, n_samples)
        for i in first:
            index.alleles.add_unscored(ids[i], counts_list[i], n_samples)
        if first:
            use_tree = tree if tree is not None and tree.n_leaves >= 3 else None
            index.incremental.load([ids[i] for i in first], index.alleles.distance_matrix(), use_tree)
        for i in later:
            index.insert(ids[i], counts_list[i])
        return index
