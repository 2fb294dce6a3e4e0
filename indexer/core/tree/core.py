"""The phylogenetic tree the index maintains: an unrooted tree stored from an internal root.

Nodes are integers; arrays hold each node's parent and the length of the edge to it, and
lists hold children and leaf labels (model ids). Besides the topology the tree keeps a
preorder of its nodes (``order``), each node's position in it (``pos``) and its subtree size
(``size``): a subtree is then the contiguous slice ``order[pos[v] : pos[v] + size[v]]``, which
lets least-squares placement compute every subtree sum with one prefix sum (O(n) numpy
work per query instead of a Python traversal). Leaf insertion and NNI update that layout
in O(n) vectorised time; ``reindex`` rebuilds it from scratch.
"""
from __future__ import annotations

import numpy as np


class Tree:
    """An unrooted, mostly binary tree with branch lengths and leaf labels."""

    def __init__(self, capacity: int = 16):
        capacity = max(capacity, 4)
        self.parent = np.full(capacity, -1, dtype=np.int64)
        self.length = np.zeros(capacity, dtype=np.float64)
        self.children: list[list[int]] = []
        self.label: list[str | None] = []
        self.support: dict[int, float] = {}  # internal node -> support of the split above it
        self.leaf_node: dict[str, int] = {}
        self.root = -1
        self.order = np.empty(0, dtype=np.int64)
        self.pos = np.zeros(capacity, dtype=np.int64)
        self.size = np.zeros(capacity, dtype=np.int64)

    # -- building ----------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.children)

    def add_node(self, parent: int = -1, length: float = 0.0, label: str | None = None) -> int:
        """A new node under ``parent`` (or a parentless one); layout is not updated."""
        v = len(self.children)
        if v >= self.parent.shape[0]:
            cap = 2 * self.parent.shape[0]
            self.parent = np.concatenate([self.parent, np.full(cap - v, -1, dtype=np.int64)])
            self.length = np.concatenate([self.length, np.zeros(cap - v)])
            self.pos = np.concatenate([self.pos, np.zeros(cap - v, dtype=np.int64)])
            self.size = np.concatenate([self.size, np.zeros(cap - v, dtype=np.int64)])
        self.children.append([])
        self.label.append(label)
        self.parent[v] = parent
        self.length[v] = length
        if parent >= 0:
            self.children[parent].append(v)
        if label is not None:
            if label in self.leaf_node:
                raise ValueError(f"duplicate leaf label {label!r}")
            self.leaf_node[label] = v
        return v

    def reindex(self) -> "Tree":
        """Recompute preorder, positions and subtree sizes from the topology. O(n)."""
        order: list[int] = []
        stack = [self.root] if self.root >= 0 else []
        while stack:
            v = stack.pop()
            order.append(v)
            stack.extend(reversed(self.children[v]))
        self.order = np.asarray(order, dtype=np.int64)
        self.pos[self.order] = np.arange(len(order))
        size = self.size
        size[: self.n_nodes] = 1
        for v in reversed(order):
            p = self.parent[v]
            if p >= 0:
                size[p] += size[v]
        return self

    # -- reading -----------------------------------------------------------------
    def is_leaf(self, v: int) -> bool:
        return not self.children[v]

    @property
    def leaf_names(self) -> list[str]:
        """Leaf labels in preorder."""
        return [self.label[v] for v in self.order if not self.children[v]]

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_node)

    def is_leaf_mask(self) -> np.ndarray:
        return np.fromiter((not c for c in self.children), dtype=bool, count=self.n_nodes)

    def subtree(self, v: int) -> np.ndarray:
        return self.order[self.pos[v]: self.pos[v] + self.size[v]]

    def subtree_leaves(self, v: int) -> list[str]:
        return [self.label[u] for u in self.subtree(v) if not self.children[u]]

    def depths(self) -> np.ndarray:
        """Path length from the root to every node, in O(n) numpy (``subtree_depths`` of the
        root, ``order[0]``, scattered to node ids)."""
        out = np.zeros(self.n_nodes)
        if self.order.shape[0]:
            out[self.order] = self.subtree_depths(int(self.order[0]))
        return out

    def subtree_depths(self, v: int) -> np.ndarray:
        """Path length from ``v`` to every node of its subtree, in the order of ``subtree(v)``,
        O(size of the subtree): each edge length is added to the preorder range of the
        subtree below it (difference array, then a prefix sum)."""
        start, size = int(self.pos[v]), int(self.size[v])
        nodes = self.order[start:start + size]
        lengths = self.length[nodes].copy()
        lengths[0] = 0.0  # v's own edge lies above it
        diff = np.bincount(np.arange(size), weights=lengths, minlength=size + 1)
        diff -= np.bincount(self.pos[nodes] - start + self.size[nodes], weights=lengths, minlength=size + 1)
        return np.cumsum(diff[:size])

    def copy(self) -> "Tree":
        t = Tree.__new__(Tree)
        t.parent, t.length = self.parent.copy(), self.length.copy()
        t.children = [list(c) for c in self.children]
        t.label = list(self.label)
        t.support = dict(self.support)
        t.leaf_node = dict(self.leaf_node)
        t.root = self.root
        t.order, t.pos, t.size = self.order.copy(), self.pos.copy(), self.size.copy()
        return t

    def neighbours(self, v: int) -> list[int]:
        nb = list(self.children[v])
        if self.parent[v] >= 0:
            nb.append(int(self.parent[v]))
        return nb

    def path_distances(self, names: list[str]) -> np.ndarray:
        """Leaf-to-leaf path lengths for ``names`` (in that order). O(n^2)."""
        n = self.n_nodes
        adj = [self.neighbours(v) for v in range(n)]
        idx = [self.leaf_node[x] for x in names]
        out = np.zeros((len(idx), len(idx)))
        for a, src in enumerate(idx):
            dist = np.full(n, np.nan)
            dist[src] = 0.0
            stack = [src]
            while stack:
                v = stack.pop()
                for u in adj[v]:
                    if np.isnan(dist[u]):
                        w = self.length[u] if self.parent[u] == v else self.length[v]
                        dist[u] = dist[v] + w
                        stack.append(u)
            out[a] = dist[idx]
        return out

    # -- editing (keeps the layout) -----------------------------------------------
    def insert_leaf(self, edge: int, x: float, pendant: float, name: str) -> int:
        """Attach leaf ``name`` on the edge above node ``edge`` at distance ``x`` from it.

        A new internal node splits the edge; the leaf hangs from it by ``pendant``.
        Returns the new leaf. O(n) for the layout update (vectorised).
        """
        c = edge
        p = int(self.parent[c])
        if p < 0:
            raise ValueError("the root has no edge above it")
        old_len = self.length[c]
        x = min(max(x, 0.0), old_len)
        start, stop = self.pos[c], self.pos[c] + self.size[c]
        # ancestors of c (before the edit): their subtree range covers c's position
        live = self.order
        anc = live[(self.pos[live] < start) & (self.pos[live] + self.size[live] >= stop)]
        m = self.add_node(-1, old_len - x)
        self.parent[m] = p
        self.children[p][self.children[p].index(c)] = m
        self.parent[c] = m
        self.length[c] = x
        self.children[m].append(c)
        q = self.add_node(m, max(pendant, 0.0), name)
        self.order = np.concatenate([live[:start], [m], live[start:stop], [q], live[stop:]])
        self.pos[self.order] = np.arange(self.order.shape[0])
        self.size[anc] += 2
        self.size[m] = self.size[c] + 2
        self.size[q] = 1
        return q

    def swap(self, u: int, v: int) -> None:
        """Exchange the subtrees hanging at ``u`` and ``v`` (an NNI when ``u`` is a child of a
        child of ``v``'s parent). Edge lengths travel with the subtrees. Neither may contain
        the other."""
        pu, pv = int(self.parent[u]), int(self.parent[v])
        su, sv = self.pos[u], self.pos[v]
        if su <= sv < su + self.size[u] or sv <= su < sv + self.size[v]:
            raise ValueError("cannot swap nested subtrees")
        iu, iv = self.children[pu].index(u), self.children[pv].index(v)
        self.children[pu][iu] = v
        self.children[pv][iv] = u
        self.parent[u], self.parent[v] = pv, pu
        (a, na), (b, nb) = sorted([(su, self.size[u]), (sv, self.size[v])])
        o = self.order
        self.order = np.concatenate([o[:a], o[b:b + nb], o[a + na:b], o[a:a + na], o[b + nb:]])
        self.pos[self.order] = np.arange(self.order.shape[0])
        # only nodes on the path between the two parents change size
        delta = self.size[v] - self.size[u]
        w = pu
        anc_u = set()
        while w >= 0:
            anc_u.add(w)
            w = int(self.parent[w]) if w != self.root else -1
        w = pv
        anc_v = []
        while w >= 0 and w not in anc_u:
            anc_v.append(w)
            w = int(self.parent[w]) if w != self.root else -1
        lca = w
        w = pu
        while w != lca:
            self.size[w] += delta
            w = int(self.parent[w])
        for w in anc_v:
            self.size[w] -= delta

    def check(self) -> None:
        """Raise AssertionError if the layout disagrees with the topology (for tests)."""
        t = self.copy().reindex()
        assert np.array_equal(t.order, self.order), "preorder differs"
        nodes = self.order
        assert np.array_equal(t.size[nodes], self.size[nodes]), "subtree sizes differ"
        for v in nodes:
            for c in self.children[v]:
                assert self.parent[c] == v
