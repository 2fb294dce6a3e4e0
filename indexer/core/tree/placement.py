"""Least-squares placement of a new leaf on an existing tree, in the spirit of APPLES.

APPLES (Balaban, Sarmashghi & Mirarab, 2020) places a query q with distances delta_i to
the leaves on the edge, position x and pendant length l minimising the weighted squared
error  sum_i w_i (delta_i - d_T'(q, i))^2  (Fitch-Margoliash weights w_i = delta_i^-2 by
default, or ordinary least squares w_i = 1). For an edge above node c with length L, the
error separates into leaves below c (d = l + x + d(i,c)) and the rest
(d = l + L - x + d(i,parent)), so each edge needs six weighted moments and a 2x2
constrained quadratic. All moments come from O(n) vectorised passes over the preorder:
subtree sums are prefix-sum differences, and the sums over all leaves of functions of the
depth of lca(i, c) are ancestor-path sums (a difference array over subtree ranges).
O(n) per query with numpy constants, no Python loop over nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexer.core.tree.core import Tree

MIN_DELTA = 1e-6  # FM weights 1/delta^2 stay finite for identical models


@dataclass(frozen=True)
class Placement:
    edge: int  # the node below the chosen edge
    x: float  # distance from that node up the edge to the attachment point
    pendant: float  # length of the new leaf's edge
    error: float  # weighted squared error of the placement


def place(tree: Tree, delta_by_node: np.ndarray, is_leaf: np.ndarray, weighting: str = "fm") -> Placement:
    """Best least-squares placement of a query with distances ``delta_by_node[leaf]``.

    ``is_leaf`` is a boolean mask over nodes. ``weighting`` is ``"fm"`` (w = delta^-2) or
    ``"ols"`` (w = 1). O(n).
    """
    if tree.n_leaves < 2:
        raise ValueError("placement needs a tree with at least two leaves")
    order, pos, size = tree.order, tree.pos, tree.size
    n = order.shape[0]
    dep = tree.depths()
    leaf_o = is_leaf[order]
    delta_o = np.where(leaf_o, delta_by_node[order], 0.0)
    if weighting == "fm":
        w_o = np.where(leaf_o, 1.0 / np.maximum(delta_o, MIN_DELTA) ** 2, 0.0)
    elif weighting == "ols":
        w_o = leaf_o.astype(np.float64)
    else:
        raise ValueError(f"unknown weighting {weighting!r} (fm or ols)")
    z_o = delta_o - dep[order]
    wz = w_o * z_o
    pre = np.zeros((3, n + 1))
    np.cumsum(w_o, out=pre[0, 1:])
    np.cumsum(wz, out=pre[1, 1:])
    np.cumsum(wz * z_o, out=pre[2, 1:])
    # everything below is indexed by preorder position
    start = np.arange(n)
    stop = start + size[order]
    s0, s1, s2 = (pre[k, stop] - pre[k, start] for k in range(3))
    t0, t1, t2 = pre[:, n]
    dep_o = dep[order]
    par = tree.parent[order]
    par_pos = np.where(par >= 0, pos[np.maximum(par, 0)], 0)
    is_child = par >= 0
    dep_par = np.where(is_child, dep_o[par_pos], 0.0)

    def path_sum(values_at_parent: np.ndarray, sub: np.ndarray, own: np.ndarray) -> np.ndarray:
        # sum over x on the path from c up to the root (root excluded) of
        #   f(depth(parent x)) * (G(parent x) - G(x))  +  f(depth c) * G(c)
        b = np.where(is_child, values_at_parent * (sub[par_pos] - sub), 0.0)
        diff = np.bincount(start, weights=b, minlength=n + 1)
        diff -= np.bincount(stop, weights=b, minlength=n + 1)
        return np.cumsum(diff[:n]) + own

    h0 = path_sum(dep_par, s0, dep_o * s0)  # sum_i w_i h_ic
    h1 = path_sum(dep_par, s1, dep_o * s1)  # sum_i w_i z_i h_ic
    h2 = path_sum(dep_par ** 2, s0, dep_o ** 2 * s0)  # sum_i w_i h_ic^2
    # moments of r_i = delta_i - d(i, c): below c, and over all leaves
    b0 = s0
    b1 = s1 + dep_o * s0
    b2 = s2 + 2 * dep_o * s1 + dep_o ** 2 * s0
    all1 = t1 - dep_o * t0 + 2 * h0
    all2 = (t2 - 2 * dep_o * t1 + dep_o ** 2 * t0) + 4 * (h1 - dep_o * h0) + 4 * h2
    a0 = t0 - b0
    a1 = all1 - b1
    a2 = all2 - b2
    edge_len = tree.length[order]
    best = _solve_edges(b0, b1, b2, a0, a1, a2, edge_len)
    err, x, pend = best
    err[~is_child] = np.inf
    k = int(np.argmin(err))
    return Placement(edge=int(order[k]), x=float(x[k]), pendant=float(pend[k]), error=float(err[k]))


def _solve_edges(b0, b1, b2, a0, a1, a2, length):
    """Per edge: minimise B(u) + A(v), u = l + x, v = l - x, s.t. 0 <= x <= L, l >= 0,
    where B(u) = b2 - 2 u b1 + u^2 b0 and A(v) likewise. The problem is convex, so the
    optimum is the unconstrained one if feasible, else the best of the 1-D optima on the
    three boundary lines (each clamped to its segment)."""
    eps = 1e-300
    b0s, a0s = np.maximum(b0, eps), np.maximum(a0, eps)
    tot = b0s + a0s

    def energy(l, x):
        u, v = l + x, l - x
        return (b2 - 2 * u * b1 + u * u * b0) + (a2 - 2 * v * a1 + v * v * a0)

    u, v = b1 / b0s, a1 / a0s
    l_free, x_free = 0.5 * (u + v), 0.5 * (u - v)
    feasible = (x_free >= 0) & (x_free <= length) & (l_free >= 0)
    cands = []
    cands.append((np.where(feasible, energy(l_free, x_free), np.inf), x_free, l_free))
    for xb in (np.zeros_like(length), length):
        l_b = np.maximum((b1 - b0 * xb + a1 + a0 * xb) / tot, 0.0)
        cands.append((energy(l_b, xb), xb, l_b))
    x_l0 = np.clip((b1 - a1) / tot, 0.0, length)
    cands.append((energy(np.zeros_like(length), x_l0), x_l0, np.zeros_like(length)))
    errs = np.stack([c[0] for c in cands])
    pick = np.argmin(errs, axis=0)
    cols = np.arange(length.shape[0])
    err = errs[pick, cols]
    x = np.stack([c[1] for c in cands])[pick, cols]
    pend = np.stack([c[2] for c in cands])[pick, cols]
    return err, x, pend
