"""Placement on the subtree spanned by a new leaf's nearest models, and a tree kept that way.

APPLES-2 (Balaban, Jiang, Zhu, McDonald, Knight & Mirarab, 2022) scales least-squares
placement by using only the query's closest references: distances to far leaves carry
little weight under Fitch-Margoliash weighting and the most noise. Here the references are
the new model's ``k`` nearest (from the neighbour graph), and the placement is solved on the
subtree their paths span, with unbranched paths contracted to single edges: a tree of at
most ``2k - 1`` nodes, where ``place`` (the O(size) least-squares solver) runs unchanged.
The chosen edge and position are then mapped back onto the full tree. Cost: O(k x depth)
to find the spanned subtree, O(k) for the solve, O(n) vectorised for the leaf insertion.

``NeighbourhoodTree`` maintains a tree this way without any n x n matrix: placement reads
the neighbour distances it is given, local NNI reads group averages estimated on a bounded
sample of each group's leaves (distances computed on demand by a ``block`` function), and a
full neighbour-joining rebuild, which needs all pairs, runs only while the index is small.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from indexer.core.tree.core import Tree
from indexer.core.tree.incremental import TreeUpdate
from indexer.core.tree.nj import neighbor_joining
from indexer.core.tree.nni import local_nni_sampled
from indexer.core.tree.placement import Placement, place
from indexer.core.tree.policy import RebuildPolicy

Block = Callable[[np.ndarray, np.ndarray], np.ndarray]  # rows a, rows b -> distances (len a, len b)


def spanned_subtree(tree: Tree, leaves: Sequence[int]) -> tuple[Tree, np.ndarray]:
    """The subtree of ``tree`` spanned by the paths between ``leaves`` (two or more), with
    unbranched paths contracted.

    Returns the small tree (its leaves labelled by their node in ``tree``) and, for each of
    its nodes, the ``tree`` node it stands for (``node_of``): the small edge above small node
    u is the path from ``node_of[u]`` up to ``node_of[parent of u]``. Its root is the lowest
    common ancestor of ``leaves`` in the stored rooting. O(k x depth).
    """
    leaves = [int(v) for v in leaves]
    if len(set(leaves)) < 2:
        raise ValueError("a spanned subtree needs at least two distinct leaves")
    parent = tree.parent
    target = set(leaves)
    # union of the root paths, walked until a node already seen: each node once
    child_count: dict[int, int] = {}
    for v in target:
        child_count.setdefault(v, 0)
        while v != tree.root:
            p = int(parent[v])
            seen = p in child_count
            child_count[p] = child_count.get(p, 0) + 1
            if seen:
                break
            v = p
    # the lowest common ancestor: down from the root while the path does not branch
    top = tree.root
    while child_count[top] == 1 and top not in target:
        top = next(c for c in tree.children[top] if c in child_count)
    kept = [v for v, c in child_count.items() if c >= 2 or v in target]
    small = Tree(capacity=len(kept) + 1)
    node_of: list[int] = []
    index_of: dict[int, int] = {}
    # preorder over kept nodes, children in the big tree's order, so that a neighbourhood
    # spanning the whole tree gives the very same tree
    stack = [top]
    up_len: dict[int, float] = {top: 0.0}
    up_parent: dict[int, int] = {top: -1}
    while stack:
        v = stack.pop()
        u = small.add_node(up_parent[v], up_len[v], str(v) if v in target else None)
        index_of[v] = u
        node_of.append(v)
        below = []
        for c in tree.children[v]:
            if c not in child_count:
                continue
            length = float(tree.length[c])
            while child_count[c] == 1 and c not in target:  # contract the unbranched path
                c = next(w for w in tree.children[c] if w in child_count)
                length += float(tree.length[c])
            up_len[c], up_parent[c] = length, u
            below.append(c)
        stack.extend(reversed(below))
    small.root = 0
    small.reindex()
    return small, np.asarray(node_of, dtype=np.int64)


def place_in_neighbourhood(tree: Tree, leaves: Sequence[int], distances: Sequence[float],
                           weighting: str = "fm") -> tuple[Placement, Tree]:
    """Least-squares placement of a query with ``distances`` to the tree nodes ``leaves``,
    solved on the subtree they span and mapped back onto ``tree``.

    Returns the placement on ``tree`` (edge, x from the edge's lower node, pendant) and the
    spanned subtree it was solved on. When ``leaves`` are all the leaves of ``tree`` it is
    exactly ``place`` on the whole tree. O(k x depth + k).
    """
    small, node_of = spanned_subtree(tree, leaves)
    by_leaf = dict(zip((int(v) for v in leaves), (float(d) for d in distances)))
    delta = np.zeros(small.n_nodes)
    is_leaf = np.zeros(small.n_nodes, dtype=bool)
    for v in small.leaf_node.values():
        delta[v] = by_leaf[int(node_of[v])]
        is_leaf[v] = True
    p = place(small, delta, is_leaf, weighting)
    # walk up the contracted path from its lower end until the position falls in an edge
    v, x = int(node_of[p.edge]), p.x
    stop = int(node_of[int(small.parent[p.edge])])
    while x > tree.length[v] and int(tree.parent[v]) != stop:
        x -= float(tree.length[v])
        v = int(tree.parent[v])
    return Placement(edge=v, x=min(max(x, 0.0), float(tree.length[v])), pendant=p.pendant, error=p.error), small


class _PlacedTree:
    """A tree with its leaf <-> row maps, grown by neighbourhood placement and sampled NNI.
    The writer's live tree is one; an off-path rebuild grows another and swaps it in."""

    def __init__(self, tree: Tree, names: Sequence[str]):
        self.tree = tree
        self.row_of_node = np.full(max(2 * tree.n_nodes, 16), -1, dtype=np.int64)
        self.is_leaf = np.zeros(self.row_of_node.shape[0], dtype=bool)
        self.node_of_row = np.full(max(2 * len(names), 16), -1, dtype=np.int64)
        for row, name in enumerate(names):
            v = tree.leaf_node[name]
            self.row_of_node[v] = row
            self.node_of_row[row] = v
            self.is_leaf[v] = True

    def add(self, name: str, row: int, rows: np.ndarray, distances: np.ndarray, block: Block,
            weighting: str, radius: int, sample: int, timings: dict[str, float]) -> tuple[Placement, list[str], int]:
        """Place leaf ``name`` (index row ``row``) from its nearest rows, then NNI around it."""
        t1 = time.perf_counter()
        tree = self.tree
        p, _ = place_in_neighbourhood(tree, self.node_of_row[rows], distances, weighting)
        sister = tree.subtree_leaves(p.edge)[:5]
        q = tree.insert_leaf(p.edge, p.x, p.pendant, name)
        self._grow(tree.n_nodes, row + 1)
        self.is_leaf[q - 1] = False
        self.is_leaf[q] = True
        self.row_of_node[q] = row
        self.node_of_row[row] = q
        tree.support.clear()
        timings["placement"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        moves = local_nni_sampled(tree, block, self.row_of_node, self.is_leaf, around=q - 1,
                                  radius=radius, sample=sample)
        timings["nni"] = (time.perf_counter() - t2) * 1e3
        return p, sister, moves

    def _grow(self, n_nodes: int, n_rows: int) -> None:
        if n_nodes > self.row_of_node.shape[0]:
            have = self.row_of_node.shape[0]
            cap = max(n_nodes, 2 * have)
            self.row_of_node = np.concatenate([self.row_of_node, np.full(cap - have, -1, dtype=np.int64)])
            self.is_leaf = np.concatenate([self.is_leaf, np.zeros(cap - have, dtype=bool)])
        if n_rows > self.node_of_row.shape[0]:
            have = self.node_of_row.shape[0]
            cap = max(n_rows, 2 * have)
            self.node_of_row = np.concatenate([self.node_of_row, np.full(cap - have, -1, dtype=np.int64)])


class NeighbourhoodTree:
    """A tree kept up to date one leaf at a time from each new leaf's nearest neighbours.

    ``block(rows_a, rows_b)`` gives exact distances between leaves by row (insertion order)
    on demand; nothing of size n x n is kept. Rebuilds by NJ (which needs every pair, built
    transiently from ``block``) run when the policy says so and the tree has at most
    ``rebuild_max_models`` leaves; later ones are skipped and counted.

    ``rebuild_lag > 0`` moves rebuilds off the write path: the NJ of the first n0 leaves runs
    on a worker thread while inserts go on on the current tree; the worker then re-places
    the leaves inserted meanwhile on its new tree (same placement and NNI, from the
    neighbours each came with), and the new tree is swapped in at insert n0 + ``rebuild_lag``
    exactly (the writer waits there only if the worker is not done, and re-places what is
    left). Swapping at a fixed insert keeps runs reproducible: the tree after every insert
    is the same whatever the threads' timing. The insert that swaps reports the time it
    waited and re-placed as ``"swap"``; the NJ itself is off its clock.
    """

    def __init__(self, block: Block, policy: RebuildPolicy | None = None, weighting: str = "fm",
                 nni_radius: int = 2, nni_sample: int = 8, rebuild_max_models: int = 2000,
                 rebuild_lag: int = 0):
        if rebuild_lag < 0:
            raise ValueError("rebuild_lag must be non-negative")
        self.block = block
        self.policy = policy or RebuildPolicy()
        self.weighting = weighting
        self.nni_radius = nni_radius
        self.nni_sample = nni_sample
        self.rebuild_max_models = rebuild_max_models
        self.rebuild_lag = rebuild_lag
        self.names: list[str] = []
        self._live: _PlacedTree | None = None
        self._neighbours: list[tuple[np.ndarray, np.ndarray]] = []  # per row since the job's n0
        self._job = None  # (future, n0) while an off-path rebuild runs
        self._lock = threading.Lock()
        self.n_at_last_rebuild = 0
        self.inserts_since_rebuild = 0
        self.rebuild_seconds_total = 0.0
        self.n_rebuilds = 0
        self.rebuilds_skipped = 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def tree(self) -> Tree | None:
        return None if self._live is None else self._live.tree

    @property
    def rebuild_in_flight(self) -> bool:
        return self._job is not None

    def insert(self, name: str, rows: np.ndarray, distances: np.ndarray) -> TreeUpdate:
        """Add leaf ``name`` (the next row), given its nearest earlier rows and distances."""
        rows = np.asarray(rows, dtype=np.int64)
        distances = np.asarray(distances, dtype=np.float64)
        if rows.shape != distances.shape:
            raise ValueError("rows and distances differ in shape")
        upd = TreeUpdate(None, [], 0, False, {})
        if self._job is not None and len(self.names) >= self._job[1] + self.rebuild_lag:
            self._swap(upd.timings_ms)
        self.names.append(name)
        n = len(self.names)
        self.inserts_since_rebuild += 1
        if self.tree is None or n <= self.policy.min_models or self.tree.n_leaves < 3 or rows.shape[0] < 2:
            self.finish_rebuild()
            self._timed_rebuild(upd.timings_ms)
            upd.rebuilt = True
            return upd
        if self._job is not None:
            with self._lock:
                self._neighbours.append((rows, distances))
        upd.placement, upd.sister, upd.nni_moves = self._live.add(
            name, n - 1, rows, distances, self.block, self.weighting, self.nni_radius, self.nni_sample,
            upd.timings_ms)
        if self._job is None and self.policy.due(n, self.n_at_last_rebuild, self.inserts_since_rebuild):
            if n > self.rebuild_max_models:
                self.rebuilds_skipped += 1
                self.n_at_last_rebuild, self.inserts_since_rebuild = n, 0
            elif self.rebuild_lag:
                self._start_job(n)
            else:
                self._timed_rebuild(upd.timings_ms)
                upd.rebuilt = True
        return upd

    def load(self, names: Sequence[str], tree: Tree | None = None) -> None:
        """Start from leaves ``names`` (rows 0..n-1 of ``block``) and a stored tree of
        exactly them, or, without one, their NJ tree."""
        if self.names:
            raise ValueError("load into an empty tree only")
        self.names = list(names)
        if tree is None:
            self.rebuild()
            return
        if set(tree.leaf_node) != set(self.names) or tree.n_leaves != len(self.names):
            raise ValueError("the stored tree's leaves are not the loaded models")
        self._live = _PlacedTree(tree, self.names)
        self.n_at_last_rebuild = len(self.names)
        self.inserts_since_rebuild = 0

    def nj_tree(self) -> Tree:
        """NJ on every pair, computed now from ``block``: O(n^2) memory while it runs."""
        if not self.names:
            raise ValueError("the tree is empty")
        return self._nj(len(self.names))

    def _nj(self, n: int) -> Tree:
        everyone = np.arange(n)
        return neighbor_joining(self.block(everyone, everyone), self.names[:n])

    def rebuild(self) -> Tree:
        """Replace the tree by NJ of every leaf, now (an off-path rebuild in flight is
        finished first, so it cannot swap an older tree in later)."""
        self.finish_rebuild()
        self._live = _PlacedTree(self.nj_tree(), self.names)
        self.n_at_last_rebuild = len(self)
        self.inserts_since_rebuild = 0
        return self._live.tree

    def finish_rebuild(self) -> bool:
        """Wait for an off-path rebuild in flight and swap it in now; False when none ran."""
        if self._job is None:
            return False
        self._swap({})
        return True

    # -- off-path rebuilds ---------------------------------------------------------
    def _start_job(self, n0: int) -> None:
        self._neighbours = []
        self._job = (_executor().submit(self._rebuild_job, n0), n0)
        self.n_at_last_rebuild, self.inserts_since_rebuild = n0, 0

    def _rebuild_job(self, n0: int) -> tuple[_PlacedTree, int, float]:
        """On the worker: NJ of the first n0 leaves, then the leaves inserted since, re-placed
        until it has caught up with what the writer has logged so far."""
        t = time.perf_counter()
        placed = _PlacedTree(self._nj(n0), self.names[:n0])
        done = 0
        while True:
            with self._lock:
                todo = self._neighbours[done:]
            if not todo:
                return placed, done, time.perf_counter() - t
            done = self._replay(placed, n0, done, todo)

    def _replay(self, placed: _PlacedTree, n0: int, done: int, todo) -> int:
        """Re-place on ``placed`` the leaves logged since the job's n0, from the ``done``-th on."""
        for rows, distances in todo:
            row = n0 + done
            placed.add(self.names[row], row, rows, distances, self.block, self.weighting,
                       self.nni_radius, self.nni_sample, {})
            done += 1
        return done

    def _swap(self, timings: dict) -> None:
        t = time.perf_counter()
        future, n0 = self._job
        placed, done, seconds = future.result()
        with self._lock:
            rest = self._neighbours[done:]
        self._replay(placed, n0, done, rest)
        self._live, self._job, self._neighbours = placed, None, []
        self.rebuild_seconds_total += seconds
        self.n_rebuilds += 1
        timings["swap"] = (time.perf_counter() - t) * 1e3

    def _timed_rebuild(self, timings: dict) -> None:
        t = time.perf_counter()
        self.rebuild()
        dt = time.perf_counter() - t
        timings["rebuild"] = dt * 1e3
        self.rebuild_seconds_total += dt
        self.n_rebuilds += 1


_EXECUTOR = None


def _executor():
    """One worker thread for off-path rebuilds (NumPy and BLAS release the GIL in NJ's
    matrix work; one rebuild at a time per tree by construction)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phylolm-rebuild")
    return _EXECUTOR
