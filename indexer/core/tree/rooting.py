"""Rooting for display: the index's trees are unrooted, people read rooted drawings.

``midpoint_root`` roots a tree at the middle of its longest leaf-to-leaf path (Farris 1972),
which puts a distant out-group (another model family) on one side of the root and the
family it stands apart from on the other. The topology, branch lengths and split supports are
unchanged; only where the drawing starts moves. O(n): two farthest-leaf searches and one
traversal.
"""
from __future__ import annotations

from indexer.core.tree.core import Tree


def _farthest(adj: list[list[tuple[int, float]]], start: int) -> tuple[int, list[float], list[int]]:
    dist = [-1.0] * len(adj)
    prev = [-1] * len(adj)
    dist[start] = 0.0
    stack = [start]
    while stack:
        v = stack.pop()
        for w, length in adj[v]:
            if dist[w] < 0:
                dist[w] = dist[v] + length
                prev[w] = v
                stack.append(w)
    far = max(range(len(adj)), key=lambda v: dist[v] if not adj[v] or len(adj[v]) == 1 else -1.0)
    return far, dist, prev


def midpoint_root(tree: Tree) -> Tree:
    """A copy of ``tree`` rooted at the midpoint of its longest leaf-to-leaf path."""
    n = tree.n_nodes
    if tree.n_leaves < 3:
        return tree.copy()
    adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    support: dict[frozenset, float] = {}
    for v in range(n):
        p = int(tree.parent[v])
        if p >= 0:
            adj[v].append((p, float(tree.length[v])))
            adj[p].append((v, float(tree.length[v])))
            if v in tree.support:
                support[frozenset((v, p))] = tree.support[v]
    a, _, _ = _farthest(adj, next(iter(tree.leaf_node.values())))
    b, dist, prev = _farthest(adj, a)
    half = dist[b] / 2
    # Walk back from b towards a until the midpoint falls on the edge (v, prev[v]).
    v = b
    while prev[v] >= 0 and dist[prev[v]] > half:
        v = prev[v]
    u = prev[v]
    if u < 0:
        return tree.copy()
    to_u = half - dist[u]  # the root sits this far from u along the edge (u, v)
    new = Tree(capacity=n + 1)
    root = new.add_node()
    new.root = root
    mapping: dict[int, int] = {}
    stack = [(u, -1, root, to_u, v), (v, -1, root, float(dict(adj[v])[u]) - to_u, u)]
    while stack:
        node, from_node, parent_new, length, avoid = stack.pop()
        x = new.add_node(parent_new, max(length, 0.0), tree.label[node] if tree.is_leaf(node) else None)
        mapping[node] = x
        edge = frozenset((node, from_node if from_node >= 0 else avoid))
        if edge in support:
            new.support[x] = support[edge]
        for w, l in adj[node]:
            if w != from_node and w != avoid:
                stack.append((w, node, x, l, -1))
    return new.reindex()
