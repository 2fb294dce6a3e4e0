"""A tree kept up to date one leaf at a time over a growing distance matrix.

Each ``insert`` appends the new leaf's distance row, places the leaf by least-squares
placement (O(n)), runs NNI around it, and rebuilds by neighbour joining when the
``RebuildPolicy`` says so. The distance matrix is kept dense (capacity doubling) with its
row sums, which the NNI averages read. Pure; ``PhyloIndex`` feeds it rows computed from
alleles, and a precomputed matrix (such as the paper's) can be fed row by row.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.core.tree.core import Tree
from indexer.core.tree.nj import neighbor_joining
from indexer.core.tree.nni import local_nni
from indexer.core.tree.placement import Placement, place
from indexer.core.tree.policy import RebuildPolicy


@dataclass
class TreeUpdate:
    placement: Placement | None  # None when the tree was (re)built by NJ instead
    sister: list[str]  # up to 5 leaves below the edge the leaf was placed on
    nni_moves: int
    rebuilt: bool
    timings_ms: dict[str, float] = field(default_factory=dict)  # placement, nni, rebuild


class IncrementalTree:
    def __init__(self, policy: RebuildPolicy | None = None, weighting: str = "fm", nni_radius: int = 2):
        self.policy = policy or RebuildPolicy()
        self.weighting = weighting
        self.nni_radius = nni_radius
        self.names: list[str] = []
        self._row: dict[str, int] = {}
        self._dist = np.zeros((16, 16))
        self._row_sums = np.zeros(16)
        self.tree: Tree | None = None
        self._row_of_node = np.zeros(0, dtype=np.int64)
        self._is_leaf = np.zeros(0, dtype=bool)
        self.n_at_last_rebuild = 0
        self.inserts_since_rebuild = 0
        self.rebuild_seconds_total = 0.0
        self.n_rebuilds = 0

    def __len__(self) -> int:
        return len(self.names)

    def distance_matrix(self) -> np.ndarray:
        n = len(self)
        return self._dist[:n, :n].copy()

    def distance_row(self, name: str) -> np.ndarray:
        return self._dist[self._row[name], : len(self)].copy()

    def load(self, names: Sequence[str], distances: np.ndarray, tree: Tree | None = None) -> None:
        """Start from a full matrix and, if given, a tree on exactly these leaves (no NJ)."""
        if self.names:
            raise ValueError("load into an empty tree only")
        n = len(names)
        self._ensure_capacity(n)
        self.names = list(names)
        self._row = {m: i for i, m in enumerate(self.names)}
        self._dist[:n, :n] = distances
        self._row_sums[:n] = self._dist[:n, :n].sum(axis=1)
        if tree is not None:
            if set(tree.leaf_node) != set(names):
                raise ValueError("the tree's leaves differ from the models")
            self.tree = tree
            self._reset_node_maps()
            self.n_at_last_rebuild = n
        elif n:
            self.rebuild()

    def insert(self, name: str, distances: np.ndarray) -> TreeUpdate:
        """Add leaf ``name`` with distances to every earlier leaf (in ``names`` order)."""
        if name in self._row:
            raise ValueError(f"{name!r} is already in the tree")
        distances = np.asarray(distances, dtype=np.float64)
        if distances.shape != (len(self),):
            raise ValueError(f"expected {len(self)} distances, got {distances.shape}")
        self._append(name, distances)
        n = len(self)
        self.inserts_since_rebuild += 1
        upd = TreeUpdate(None, [], 0, False, {})
        if self.tree is None or n <= self.policy.min_models or self.tree.n_leaves < 3:
            self._timed_rebuild(upd.timings_ms)
            upd.rebuilt = True
            return upd
        t1 = time.perf_counter()
        tree = self.tree
        leaves = self._is_leaf[: tree.n_nodes]
        delta = np.zeros(tree.n_nodes)
        delta[leaves] = distances[self._row_of_node[: tree.n_nodes][leaves]]
        p = place(tree, delta, leaves, self.weighting)
        upd.placement = p
        upd.sister = tree.subtree_leaves(p.edge)[:5]
        q = tree.insert_leaf(p.edge, p.x, p.pendant, name)
        self._grow_node_maps(tree.n_nodes)
        self._is_leaf[q - 1] = False  # the internal node insert_leaf made just before q
        self._is_leaf[q] = True
        self._row_of_node[q] = n - 1
        tree.support.clear()  # supports belong to the tree they were computed on
        upd.timings_ms["placement"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        upd.nni_moves = local_nni(tree, self._dist, self._row_sums, self._row_of_node, self._is_leaf,
                                  around=q - 1, radius=self.nni_radius)
        upd.timings_ms["nni"] = (time.perf_counter() - t2) * 1e3
        if self.policy.due(n, self.n_at_last_rebuild, self.inserts_since_rebuild):
            self._timed_rebuild(upd.timings_ms)
            upd.rebuilt = True
        return upd

    def nj_tree(self) -> Tree:
        if not self.names:
            raise ValueError("the tree is empty")
        n = len(self)
        return neighbor_joining(self._dist[:n, :n], self.names)

    def rebuild(self) -> Tree:
        self.tree = self.nj_tree()
        self._reset_node_maps()
        self.n_at_last_rebuild = len(self)
        self.inserts_since_rebuild = 0
        return self.tree

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

    def _append(self, name: str, drow: np.ndarray) -> None:
        k = len(self)
        self._ensure_capacity(k + 1)
        self._dist[k, :k] = drow
        self._dist[:k, k] = drow
        self._dist[k, k] = 0.0
        self._row_sums[:k] += drow
        self._row_sums[k] = drow.sum()
        self._row[name] = k
        self.names.append(name)

    def _grow_node_maps(self, n_nodes: int) -> None:
        have = self._row_of_node.shape[0]
        if n_nodes > have:
            cap = max(n_nodes, 2 * have)
            self._row_of_node = np.concatenate([self._row_of_node, np.full(cap - have, -1, dtype=np.int64)])
            self._is_leaf = np.concatenate([self._is_leaf, np.zeros(cap - have, dtype=bool)])

    def _reset_node_maps(self) -> None:
        t = self.tree
        cap = max(2 * t.n_nodes, 16)
        self._row_of_node = np.full(cap, -1, dtype=np.int64)
        self._is_leaf = np.zeros(cap, dtype=bool)
        for name, v in t.leaf_node.items():
            self._row_of_node[v] = self._row[name]
            self._is_leaf[v] = True
