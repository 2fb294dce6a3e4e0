"""Comparing trees and fitting them to distances: splits, Robinson-Foulds, monophyly, fit.

A split (bipartition of the leaves) is encoded as a Python integer bitmask over the leaves
in a fixed name order, normalised to the side not containing the first leaf, so that two
unrooted trees on the same leaves share a split iff they share the integer.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from indexer.core.tree.core import Tree


def splits(tree: Tree, names: Sequence[str] | None = None) -> dict[int, int]:
    """Non-trivial splits of ``tree`` as {bitmask: node below the edge}. O(n^2 / 64)."""
    names = sorted(tree.leaf_node) if names is None else list(names)
    bit = {x: i for i, x in enumerate(names)}
    if set(bit) != set(tree.leaf_node):
        raise ValueError("trees must have the same leaves")
    n = len(names)
    full = (1 << n) - 1
    mask = [0] * tree.n_nodes
    out: dict[int, int] = {}
    for v in tree.order[::-1]:
        v = int(v)
        if not tree.children[v]:
            mask[v] = 1 << bit[tree.label[v]]
            continue
        acc = 0
        for c in tree.children[v]:
            acc |= mask[c]
        mask[v] = acc
        if v == tree.root:
            continue
        k = acc.bit_count()
        if 2 <= k <= n - 2:
            s = acc if not acc & 1 else full ^ acc
            out.setdefault(s, v)
    return out


def robinson_foulds(a: Tree, b: Tree, normalised: bool = True) -> float:
    """Robinson-Foulds distance |S(a) ^ S(b)| between unrooted trees on the same leaves;
    normalised by 2(n-3), the maximum for binary trees (0 = same topology, 1 = no split shared)."""
    names = sorted(a.leaf_node)
    sa, sb = set(splits(a, names)), set(splits(b, names))
    rf = len(sa ^ sb)
    if not normalised:
        return float(rf)
    denom = 2 * (len(names) - 3)
    return rf / denom if denom > 0 else 0.0


def is_monophyletic(tree: Tree, group: Iterable[str]) -> bool:
    """True if ``group`` is exactly one side of some edge (unrooted sense), or everything/one."""
    group = set(group)
    names = sorted(tree.leaf_node)
    if len(group) <= 1 or len(group) >= len(names) - 1:
        return True
    bit = {x: i for i, x in enumerate(names)}
    m = 0
    for x in group:
        m |= 1 << bit[x]
    full = (1 << len(names)) - 1
    s = m if not m & 1 else full ^ m
    return s in splits(tree, names)


def families_recovered(tree: Tree, family_of: dict[str, str]) -> list[str]:
    """Families (of two or more members) that form one clade of the unrooted tree."""
    groups: dict[str, list[str]] = {}
    for x, f in family_of.items():
        groups.setdefault(f, []).append(x)
    return sorted(f for f, xs in groups.items() if len(xs) >= 2 and is_monophyletic(tree, xs))


def squared_error(tree: Tree, distances: np.ndarray, names: Sequence[str]) -> float:
    """Sum over leaf pairs (i < j) of (path length - D_ij)^2: how well the tree fits D."""
    p = tree.path_distances(list(names))
    iu = np.triu_indices(len(names), 1)
    return float(((p[iu] - np.asarray(distances)[iu]) ** 2).sum())
