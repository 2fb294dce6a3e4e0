"""Branch support by gene bootstrap (Felsenstein, 1985, with genes as the characters).

Each replicate draws G genes with replacement (a gene drawn k times weighs k), recomputes
the similarity matrix under those weights, builds a neighbour-joining tree and records its
splits; a split of the reference tree gets the fraction of replicates that contain it.
Cost: B x (one weighted similarity product, O(nnz * n), + one NJ).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from indexer.core.tree.compare import splits
from indexer.core.tree.core import Tree


def split_support(reference: Tree, replicates: Sequence[set[int]] | Sequence[Tree],
                  names: Sequence[str] | None = None) -> dict[int, float]:
    """{internal node of ``reference``: fraction of replicates sharing its split}."""
    names = sorted(reference.leaf_node) if names is None else list(names)
    ref = splits(reference, names)
    counts = dict.fromkeys(ref, 0)
    for rep in replicates:
        rep_splits = rep if isinstance(rep, set) else set(splits(rep, names))
        for s in ref:
            if s in rep_splits:
                counts[s] += 1
    b = max(len(replicates), 1)
    return {node: counts[s] / b for s, node in ref.items()}


def gene_bootstrap(reference: Tree, distances_for_weights: Callable[[np.ndarray], np.ndarray],
                   ids: Sequence[str], n_genes: int, n_replicates: int, seed: int,
                   build: Callable[[np.ndarray, Sequence[str]], Tree]) -> dict[int, float]:
    """Support of every split of ``reference`` from ``n_replicates`` gene-resampled trees.

    ``distances_for_weights(w)`` returns the distance matrix when gene g weighs ``w[g]``;
    ``build`` makes a tree from a distance matrix (neighbour joining).
    """
    if n_replicates < 1:
        raise ValueError("n_replicates must be at least 1")
    rng = np.random.default_rng(seed)
    names = sorted(reference.leaf_node)
    reps = []
    for _ in range(n_replicates):
        weights = rng.multinomial(n_genes, np.full(n_genes, 1.0 / n_genes)).astype(np.float64)
        tree = build(distances_for_weights(weights), list(ids))
        reps.append(set(splits(tree, names)))
    return split_support(reference, reps, names)
