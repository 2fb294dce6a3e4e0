"""Local nearest-neighbour interchanges around a freshly inserted leaf.

An internal edge (a, b) separates four groups of leaves: the two subtrees below b
(A, B), a sibling subtree C of b, and the rest of the tree U. NNI exchanges B or A with
C. Each of the three quartet topologies is scored by the balanced minimum-evolution
change of tree length (Desper & Gascuel, 2002) computed from average distances between
the four groups; the best one is kept if it shortens the tree, and the edge gets its
least-squares length from those averages. Only edges within ``radius`` of the insertion
are tried (and edges next to an accepted move), so the cost stays O(n) per insertion:
group averages are read from row sums of D minus one block over the three smaller groups.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from indexer.core.tree.core import Tree

MAX_BLOCK_LEAVES = 800  # skip edges whose three smaller groups exceed this (cost bound)


def local_nni(tree: Tree, dist: np.ndarray, row_sums: np.ndarray, row_of_node: np.ndarray,
              is_leaf: np.ndarray, around: int, radius: int = 2, max_moves: int = 8) -> int:
    """NNIs on internal edges within ``radius`` edges of node ``around``; returns moves made.

    ``dist`` is the model distance matrix (rows as ``row_of_node`` maps leaves), and
    ``row_sums`` its row sums. Tree length only decreases; at most ``max_moves`` swaps.
    """
    def averages(b1, b2, s, a, sizes, n_u):
        if sum(sizes) > MAX_BLOCK_LEAVES:
            return None
        return _dense_averages(tree, (b1, b2, s), sizes, n_u, dist, row_sums, row_of_node, is_leaf)
    return _nni_loop(tree, around, radius, max_moves, averages, is_leaf)


def local_nni_sampled(tree: Tree, block, row_of_node: np.ndarray, is_leaf: np.ndarray, around: int,
                      radius: int = 2, max_moves: int = 8, sample: int = 16) -> int:
    """``local_nni`` without a distance matrix: the four group averages of each quartet are
    estimated on at most ``sample`` leaves per group (evenly spread over the group's preorder),
    the rest of the tree U by the leaves of U nearest the edge (the subtrees met walking up
    from it), with distances from ``block(rows_a, rows_b)``. O(sample^2 + subtree sizes) per
    edge, independent of n but for vectorised slicing.
    """
    def averages(b1, b2, s, a, sizes, n_u):
        groups = [_sample_rows(tree, x, is_leaf, row_of_node, sample) for x in (b1, b2, s)]
        groups.append(_rows_above(tree, a, (b1, b2, s), is_leaf, row_of_node, sample))
        if groups[3].size == 0:
            return None
        rows = np.concatenate(groups)
        d = block(rows, rows)
        bounds = np.cumsum([0] + [g.size for g in groups])
        avg = np.zeros((4, 4))
        for g in range(4):
            for h in range(g + 1, 4):
                avg[g, h] = avg[h, g] = d[bounds[g]:bounds[g + 1], bounds[h]:bounds[h + 1]].mean()
        return avg
    return _nni_loop(tree, around, radius, max_moves, averages, is_leaf)


def _sample_rows(tree: Tree, v: int, is_leaf: np.ndarray, row_of_node: np.ndarray, k: int) -> np.ndarray:
    sub = tree.subtree(v)
    leaves = sub[is_leaf[sub]]
    if leaves.size > k:
        leaves = leaves[np.linspace(0, leaves.size - 1, k).astype(np.int64)]
    return row_of_node[leaves]


def _rows_above(tree: Tree, a: int, skip: tuple, is_leaf, row_of_node, k: int) -> np.ndarray:
    """Up to ``k`` leaves of U (outside the subtrees ``skip``), nearest the edge first."""
    out: list[np.ndarray] = []
    have = 0
    for c in _subtrees_outside(tree, a, skip):
        rows = _sample_rows(tree, c, is_leaf, row_of_node, k - have)
        out.append(rows)
        have += rows.size
        if have >= k:
            break
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def _subtrees_outside(tree: Tree, a: int, skip: tuple):
    """The subtrees that make up U, nearest first: at the root its other children; else the
    siblings met walking up from ``a``."""
    if a == tree.root:
        yield from (c for c in tree.children[a] if c not in skip)
        return
    v = a
    while v != tree.root:
        p = int(tree.parent[v])
        yield from (c for c in tree.children[p] if c != v)
        v = p


def _nni_loop(tree: Tree, around: int, radius: int, max_moves: int, averages, is_leaf) -> int:
    queue = deque(_edges_near(tree, around, radius))
    queued = set(queue)
    moves = 0
    while queue and moves < max_moves:
        b = queue.popleft()
        queued.discard(b)
        done = _try_edge(tree, b, averages, is_leaf)
        if done:
            moves += 1
            for e in _edges_near(tree, b, 1):
                if e not in queued:
                    queue.append(e)
                    queued.add(e)
    return moves


def _edges_near(tree: Tree, v: int, radius: int) -> list[int]:
    """Internal edges (named by their lower node) within ``radius`` steps of node ``v``."""
    seen = {v}
    frontier = [v]
    nodes = [v]
    for _ in range(radius):
        nxt = []
        for u in frontier:
            for w in tree.neighbours(u):
                if w not in seen:
                    seen.add(w)
                    nxt.append(w)
        nodes += nxt
        frontier = nxt
    edges = []
    for u in nodes:
        if u != tree.root and tree.children[u]:
            edges.append(u)
    return edges


def _group_rows(tree: Tree, v: int, is_leaf: np.ndarray, row_of_node: np.ndarray) -> np.ndarray:
    sub = tree.subtree(v)
    return row_of_node[sub[is_leaf[sub]]]


def _try_edge(tree: Tree, b: int, averages, is_leaf) -> bool:
    a = int(tree.parent[b])
    if a < 0 or len(tree.children[b]) != 2:
        return False
    siblings = [c for c in tree.children[a] if c != b]
    if a == tree.root:
        if len(siblings) != 2:
            return False
    elif len(siblings) != 1:
        return False
    b1, b2 = tree.children[b]
    s = siblings[0]
    sizes = [int(_count_leaves(tree, x, is_leaf)) for x in (b1, b2, s)]
    n_u = tree.n_leaves - sum(sizes)
    if n_u <= 0:
        return False
    avg = averages(b1, b2, s, a, sizes, n_u)
    if avg is None:
        return False
    A, B, C, U = 0, 1, 2, 3
    # balanced ME: tree length of split XY|ZW changes by (1/4)[(XY+ZW) - (XZ+YW)] on swap
    score = {
        "keep": avg[A, B] + avg[C, U],
        "swap_b2": avg[A, C] + avg[B, U],  # b2 <-> s gives AC|BU
        "swap_b1": avg[B, C] + avg[A, U],  # b1 <-> s gives BC|AU
    }
    choice = min(score, key=lambda k: (score[k], k != "keep"))
    tol = 1e-12 * max(1.0, abs(score["keep"]))
    if choice == "keep" or score["keep"] - score[choice] <= tol:
        return False
    n = dict(zip((A, B, C, U), sizes + [n_u]))
    if choice == "swap_b2":
        tree.swap(b2, s)
        x, y, z, w = A, C, B, U  # new split XY | ZW
    else:
        tree.swap(b1, s)
        x, y, z, w = C, B, A, U  # b now holds (s, b2)
    _refit_lengths(tree, b, avg, n, (x, y, z, w), is_leaf)
    return True


def _dense_averages(tree: Tree, nodes, sizes, n_u, dist, row_sums, row_of_node, is_leaf) -> np.ndarray:
    """Exact group averages from the matrix: blocks over the three smaller groups, and
    distances to U from row sums minus those blocks."""
    groups = [_group_rows(tree, x, is_leaf, row_of_node) for x in nodes]
    rows = np.concatenate(groups)
    block = dist[np.ix_(rows, rows)]
    bounds = np.cumsum([0] + sizes)
    avg = np.zeros((4, 4))
    for g in range(3):
        sg = slice(bounds[g], bounds[g + 1])
        for h in range(g + 1, 3):
            sh = slice(bounds[h], bounds[h + 1])
            avg[g, h] = avg[h, g] = block[sg, sh].mean()
        to_u = row_sums[groups[g]].sum() - block[sg, :].sum()
        avg[g, 3] = avg[3, g] = to_u / (sizes[g] * n_u)
    return avg


def _refit_lengths(tree: Tree, b: int, avg: np.ndarray, n: dict, groups: tuple, is_leaf) -> None:
    """Least-squares (OLS) lengths of the internal edge and the three subtree edges of the
    quartet XY|ZW from group averages (Desper & Gascuel, 2002); W's edge is kept."""
    x, y, z, w = groups
    node_x, node_y = tree.children[b]
    node_z = next(c for c in tree.children[int(tree.parent[b])] if c != b) if n[z] else -1
    # which child of b holds which group: match by leaf counts is ambiguous, so by identity
    nodes = {x: node_x, y: node_y, z: node_z}

    def height(v: int) -> float:  # mean path length from v down to its leaves, O(its subtree)
        sub = tree.subtree(v)
        return float(tree.subtree_depths(v)[is_leaf[sub]].mean())

    def mix(g: int, h1: int, h2: int) -> float:  # average from g to the union of h1, h2
        return (n[h1] * avg[g, h1] + n[h2] * avg[g, h2]) / (n[h1] + n[h2])

    lam = (n[x] * n[w] + n[y] * n[z]) / ((n[x] + n[y]) * (n[z] + n[w]))
    inner = 0.5 * (lam * (avg[x, z] + avg[y, w]) + (1 - lam) * (avg[x, w] + avg[y, z])
                   - (avg[x, y] + avg[z, w]))
    lx = 0.5 * (avg[x, y] + mix(x, z, w) - mix(y, z, w)) - height(nodes[x])
    ly = 0.5 * (avg[x, y] + mix(y, z, w) - mix(x, z, w)) - height(nodes[y])
    xy_w = (n[x] * avg[x, w] + n[y] * avg[y, w]) / (n[x] + n[y])
    lz = 0.5 * (mix(z, x, y) + avg[z, w] - xy_w) - height(nodes[z])
    tree.length[b] = max(inner, 0.0)
    tree.length[nodes[x]] = max(lx, 0.0)
    tree.length[nodes[y]] = max(ly, 0.0)
    tree.length[nodes[z]] = max(lz, 0.0)


def _count_leaves(tree: Tree, v: int, is_leaf: np.ndarray) -> int:
    sub = tree.subtree(v)
    return int(is_leaf[sub].sum())
