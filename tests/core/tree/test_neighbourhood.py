"""Placement on the subtree spanned by a leaf's neighbours, and the tree kept that way."""
import numpy as np
import pytest

from indexer.core.simulate import simulate
from indexer.core.tree.neighbourhood import place_in_neighbourhood, spanned_subtree
from indexer.core.tree.nj import neighbor_joining
from indexer.core.tree.placement import place


@pytest.fixture(scope="module")
def nj_and_queries():
    eco = simulate(90, seed=4, n_genes=48)
    from indexer.core.distance import AlleleIndex
    index = AlleleIndex(n_samples=32)
    for i, m in enumerate(eco.ids):
        index.add_unscored(m, eco.sample_counts(i, 32, seed=2))
    d = index.distance_matrix()
    backbone = list(range(70))
    tree = neighbor_joining(d[np.ix_(backbone, backbone)], [eco.ids[i] for i in backbone])
    return eco, d, tree


def node_delta(tree, eco, d, q):
    delta = np.zeros(tree.n_nodes)
    is_leaf = np.zeros(tree.n_nodes, dtype=bool)
    for name, v in tree.leaf_node.items():
        delta[v] = d[q, eco.ids.index(name)]
        is_leaf[v] = True
    return delta, is_leaf


def test_neighbourhood_spanning_the_tree_places_like_the_whole_tree(nj_and_queries):
    eco, d, tree = nj_and_queries
    leaves = list(tree.leaf_node.values())
    for q in range(70, 90):
        delta, is_leaf = node_delta(tree, eco, d, q)
        for weighting in ("fm", "ols"):
            full = place(tree, delta, is_leaf, weighting)
            local, small = place_in_neighbourhood(tree, leaves, delta[leaves], weighting)
            assert small.n_leaves == tree.n_leaves
            assert local.edge == full.edge
            assert local.x == pytest.approx(full.x, abs=1e-9)
            assert local.pendant == pytest.approx(full.pendant, abs=1e-9)
            assert local.error == pytest.approx(full.error, rel=1e-9, abs=1e-12)


def test_spanned_subtree_keeps_the_paths_between_the_neighbours(nj_and_queries):
    eco, d, tree = nj_and_queries
    rng = np.random.default_rng(0)
    names = sorted(tree.leaf_node)
    for _ in range(10):
        chosen = [names[i] for i in rng.choice(len(names), 12, replace=False)]
        nodes = [tree.leaf_node[x] for x in chosen]
        small, node_of = spanned_subtree(tree, nodes)
        small.check()
        assert sorted(small.leaf_node) == sorted(str(v) for v in nodes)
        assert small.n_nodes <= 2 * len(nodes) - 1  # unbranched paths contracted
        assert np.allclose(small.path_distances([str(v) for v in nodes]), tree.path_distances(chosen), atol=1e-12)
        for u in range(small.n_nodes):  # every small node stands for a big node
            assert small.label[u] is None or int(small.label[u]) == node_of[u]


def test_placement_on_a_neighbourhood_lands_inside_it(nj_and_queries):
    eco, d, tree = nj_and_queries
    for q in range(70, 80):
        order = np.argsort([d[q, eco.ids.index(x)] for x in tree.leaf_node])
        names = list(tree.leaf_node)
        near = [tree.leaf_node[names[i]] for i in order[:10]]
        delta, _ = node_delta(tree, eco, d, q)
        p, small = place_in_neighbourhood(tree, near, delta[near], "fm")
        assert 0.0 <= p.x <= tree.length[p.edge] and p.pendant >= 0.0
        # the chosen edge lies on the spanned subtree: its lower node has a neighbour below
        # it, and not all of them
        below = {tree.leaf_node[x] for x in tree.subtree_leaves(p.edge)}
        assert 0 < len(below & set(near)) < len(near) or p.edge in near


def test_off_path_rebuilds_give_the_trees_of_rebuilds_in_place():
    """A rebuild on the worker thread, swapped in ``lag`` inserts later, ends in the very
    tree a rebuild in place gives: the leaves inserted meanwhile are re-placed on the new
    tree from the neighbours they came with. The inserts in between never wait for NJ.
    (Rebuilds at every doubling, so the lags stay below the gap between two rebuilds; a
    rebuild due while one is in flight starts after the swap.)"""
    from indexer.core.phylo_index import PhyloIndex
    from indexer.core.simulate import simulate_probes
    from indexer.core.tree import RebuildPolicy
    from indexer.core.tree.newick import to_newick

    eco = simulate_probes(200, seed=5, n_genes=32)
    runs = {}
    for lag in (0, 3, 7):
        index = PhyloIndex(n_samples=32, policy=RebuildPolicy(growth=1.0), mode="sparse", k=12, candidates=24,
                           backend="exact", rebuild_lag=lag)
        swaps, waited_for_nj = [], 0
        for i, m in enumerate(eco.ids):
            was_in_flight = index.incremental.rebuild_in_flight
            r = index.insert(m, eco.counts(i))
            if "swap" in r.timings_ms:
                swaps.append(i)
            if was_in_flight and "rebuild" in r.timings_ms:
                waited_for_nj += 1
        index.incremental.finish_rebuild()
        runs[lag] = (to_newick(index.tree, support=False), index.n_rebuilds, swaps)
        assert waited_for_nj == 0
    newick0, rebuilds0, swaps0 = runs[0]
    assert rebuilds0 >= 6 and not swaps0  # every insert up to min_models, then at 8, 16, ..., 128
    for lag in (3, 7):
        newick, rebuilds, swaps = runs[lag]
        assert newick == newick0
        assert rebuilds == rebuilds0
        assert swaps, "no rebuild went off the write path"
    assert runs[3][2] != runs[7][2]  # the swaps happened at other inserts
