"""The in-memory phylogenetic index: distances, the incrementally maintained tree, and the
policy that decides when to rebuild it.

Inserting a model: (1) its Nei similarity row against every indexed model, one sparse
product (``AlleleIndex``); (2) least-squares placement of the new leaf on the current tree,
O(n) (``indexer.tree.placement``); (3) NNI around the insertion (``indexer.tree.nni``);
(4) if the ``RebuildPolicy`` says so, a full neighbour joining over the distance matrix.
The distance matrix is kept dense (O(n^2) memory, capacity doubling) because NJ and
the NNI averages read it. Pure: no I/O; the catalog stores what this computes.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.distance import AlleleIndex, distance_from_similarity
from indexer.tree.bootstrap import gene_bootstrap
from indexer.tree.core import Tree
from indexer.tree.newick import parse_newick, to_newick
from indexer.tree.nj import neighbor_joining
from indexer.tree.nni import local_nni
from indexer.tree.placement import Placement, place
from indexer.tree.policy import RebuildPolicy


@dataclass
class InsertResult:
    model_id: str
    similarity: np.ndarray  # Nei similarity to the models indexed before, in that order
    neighbours: list[str]  # nearest models by distance, closest first
    neighbour_distances: list[float]
    placement: Placement | None  # None when the tree was built by NJ instead
    sister: list[str]  # up to 5 leaves below the edge the model was placed on
    nni_moves: int
    rebuilt: bool
    timings_ms: dict[str, float] = field(default_factory=dict)  # distance, placement, nni, rebuild

    @property
    def insert_ms(self) -> float:
        """Distance row + placement + local NNI (the rebuild, when due, is counted apart)."""
        return sum(self.timings_ms.get(k, 0.0) for k in ("distance", "placement", "nni"))


@dataclass(frozen=True)
class BootstrapResult:
    n_replicates: int
    seed: int
    seconds: float
    support: dict[str, float]  # split (leaves of the smaller side, sorted, joined by " ") -> support


class PhyloIndex:
    """Models, their distance matrix and their tree, updated one model at a time."""

    def __init__(self, genome_hash: str = "", n_samples: int = 32, policy: RebuildPolicy | None = None,
                 weighting: str = "fm", nni_radius: int = 2, n_neighbours: int = 5):
        self.genome_hash = genome_hash
        self.n_samples = n_samples
        self.policy = policy or RebuildPolicy()
        self.weighting = weighting
        self.nni_radius = nni_radius
        self.n_neighbours = n_neighbours
        self.alleles = AlleleIndex(n_samples=n_samples)
        self._dist = np.zeros((16, 16))
        self._row_sums = np.zeros(16)
        self.tree: Tree | None = None
        self._row_of_node = np.zeros(0, dtype=np.int64)
        self._is_leaf = np.zeros(0, dtype=bool)
        self.n_at_last_rebuild = 0
        self.inserts_since_rebuild = 0
        self.rebuild_seconds_total = 0.0
        self.n_rebuilds = 0

    # -- reading -----------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return self.alleles.ids

    def __len__(self) -> int:
        return len(self.alleles)

    def distance_matrix(self) -> np.ndarray:
        n = len(self)
        return self._dist[:n, :n].copy()

    def distance_row(self, model_id: str) -> np.ndarray:
        n = len(self)
        return self._dist[self.alleles.row_of(model_id), :n].copy()

    def newick(self, support: bool = True) -> str:
        if self.tree is None:
            return ";"
        return to_newick(self.tree, support=support)

    def nearest(self, model_id: str, k: int = 5) -> list[tuple[str, float]]:
        row = self.distance_row(model_id)
        i = self.alleles.row_of(model_id)
        row[i] = np.inf
        top = np.argsort(row, kind="stable")[:k]
        ids = self.ids
        return [(ids[j], float(row[j])) for j in top if np.isfinite(row[j])]

    # -- writing -----------------------------------------------------------------
    def insert(self, model_id: str, counts: Sequence[dict[str, int]]) -> InsertResult:
        """Add one model: distance row, placement, local NNI, rebuild if due."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        sim = self.alleles.add(model_id, counts, self.n_samples)
        drow = distance_from_similarity(sim) if sim.size else np.empty(0)
        self._append_distances(drow)
        n = len(self)
        timings["distance"] = (time.perf_counter() - t0) * 1e3
        order = np.argsort(drow, kind="stable")[: self.n_neighbours]
        ids = self.ids
        neighbours = [ids[j] for j in order]
        result = InsertResult(model_id, sim, neighbours, [float(drow[j]) for j in order],
                              None, [], 0, False, timings)
        self.inserts_since_rebuild += 1
        if self.tree is None or n <= self.policy.min_models or self.tree.n_leaves < 3:
            self._timed_rebuild(timings)
            result.rebuilt = True
            return result
        t1 = time.perf_counter()
        delta = np.zeros(self.tree.n_nodes)
        leaves = self._is_leaf[: self.tree.n_nodes]
        delta[leaves] = drow[self._row_of_node[: self.tree.n_nodes][leaves]]
        p = place(self.tree, delta, leaves, self.weighting)
        result.placement = p
        result.sister = self.tree.subtree_leaves(p.edge)[:5]
        q = self.tree.insert_leaf(p.edge, p.x, p.pendant, model_id)
        self._grow_node_maps(self.tree.n_nodes)
        self._is_leaf[q - 1] = False
        self._is_leaf[q] = True
        self._row_of_node[q] = n - 1
        self.tree.support.clear()  # supports belong to the tree they were computed on
        timings["placement"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        result.nni_moves = local_nni(self.tree, self._dist, self._row_sums, self._row_of_node,
                                     self._is_leaf, around=q - 1, radius=self.nni_radius)
        timings["nni"] = (time.perf_counter() - t2) * 1e3
        if self.policy.due(n, self.n_at_last_rebuild, self.inserts_since_rebuild):
            self._timed_rebuild(timings)
            result.rebuilt = True
        return result

    def rebuild(self) -> Tree:
        """Replace the tree by a neighbour-joining tree of the current matrix."""
        self.tree = self.nj_tree()
        self._reset_node_maps()
        self.n_at_last_rebuild = len(self)
        self.inserts_since_rebuild = 0
        return self.tree

    def nj_tree(self) -> Tree:
        """A fresh neighbour-joining tree of the current distance matrix (index unchanged)."""
        if len(self) == 0:
            raise ValueError("the index is empty")
        return neighbor_joining(self._dist[: len(self), : len(self)], self.ids)

    def bootstrap(self, n_replicates: int = 100, seed: int = 0) -> BootstrapResult:
        """Gene-bootstrap support for every split of the current tree (stored on it)."""
        if self.tree is None or len(self) < 4:
            raise ValueError("bootstrap needs a tree of at least four models")
        t0 = time.perf_counter()
        support = gene_bootstrap(
            self.tree,
            lambda w: distance_from_similarity(self.alleles.similarity_with_gene_weights(w)),
            self.ids, self.alleles.n_genes, n_replicates, seed, neighbor_joining)
        self.tree.support = dict(support)
        seconds = time.perf_counter() - t0
        n_all = self.tree.n_leaves
        by_split = {}
        for node, value in support.items():
            side = self.tree.subtree_leaves(node)
            if 2 * len(side) > n_all:
                side = sorted(set(self.tree.leaf_node) - set(side))
            by_split[" ".join(sorted(side))] = value
        return BootstrapResult(n_replicates, seed, seconds, by_split)

    @classmethod
    def from_state(cls, ids: Sequence[str], counts_list: Sequence[Sequence[dict[str, int]]],
                   newick: str | None = None, *, genome_hash: str = "", n_samples: int = 32,
                   policy: RebuildPolicy | None = None, **options) -> "PhyloIndex":
        """Resume from stored alleles and a stored tree: the allele index and distance matrix
        are rebuilt in bulk (one sparse product); the tree is parsed, not rebuilt. Models the
        stored tree lacks are inserted incrementally; with no tree at all, NJ builds one."""
        index = cls(genome_hash, n_samples, policy, **options)
        if len(ids) != len(counts_list):
            raise ValueError("ids and counts_list differ in length")
        tree = parse_newick(newick) if newick and newick.strip() != ";" else None
        in_tree = set(tree.leaf_node) if tree is not None else set()
        extra = set(in_tree) - set(ids)
        if extra:
            raise ValueError(f"the stored tree has {len(extra)} models without alleles, e.g. {sorted(extra)[0]!r}")
        first = [i for i, m in enumerate(ids) if m in in_tree]
        later = [i for i, m in enumerate(ids) if m not in in_tree]
        for i in first:
            index.alleles.add_unscored(ids[i], counts_list[i], n_samples)
        n = len(first)
        index._ensure_capacity(n)
        if n:
            index._dist[:n, :n] = index.alleles.distance_matrix()
            index._row_sums[:n] = index._dist[:n, :n].sum(axis=1)
        if tree is not None and tree.n_leaves >= 3:
            index.tree = tree
            index._reset_node_maps()
            index.n_at_last_rebuild = n
        elif n:
            index.rebuild()
        for i in later:
            index.insert(ids[i], counts_list[i])
        return index

    # -- internals ---------------------------------------------------------------
    def _timed_rebuild(self, timings: dict[str, float]) -> None:
        t = time.perf_counter()
        self.rebuild()
        sec = time.perf_counter() - t
        timings["rebuild"] = sec * 1e3
        self.rebuild_seconds_total += sec
        self.n_rebuilds += 1

    def _ensure_capacity(self, n: int) -> None:
        cap = self._dist.shape[0]
        if n <= cap:
            return
        new_cap = max(n, 2 * cap)
        d = np.zeros((new_cap, new_cap))
        d[:cap, :cap] = self._dist
        self._dist = d
        self._row_sums = np.concatenate([self._row_sums, np.zeros(new_cap - cap)])

    def _append_distances(self, drow: np.ndarray) -> None:
        n = len(self)  # already counts the new model
        self._ensure_capacity(n)
        k = n - 1
        self._dist[k, :k] = drow
        self._dist[:k, k] = drow
        self._dist[k, k] = 0.0
        self._row_sums[:k] += drow
        self._row_sums[k] = drow.sum()

    def _grow_node_maps(self, n_nodes: int) -> None:
        if n_nodes > self._row_of_node.shape[0]:
            cap = max(n_nodes, 2 * self._row_of_node.shape[0])
            self._row_of_node = np.concatenate([self._row_of_node, np.full(cap - self._row_of_node.shape[0], -1)])
            self._is_leaf = np.concatenate([self._is_leaf, np.zeros(cap - self._is_leaf.shape[0], dtype=bool)])

    def _reset_node_maps(self) -> None:
        t = self.tree
        cap = max(2 * t.n_nodes, 16)
        self._row_of_node = np.full(cap, -1, dtype=np.int64)
        self._is_leaf = np.zeros(cap, dtype=bool)
        for name, v in t.leaf_node.items():
            self._row_of_node[v] = self.alleles.row_of(name)
            self._is_leaf[v] = True
