"""Midpoint rooting for display: same unrooted tree, root on the longest path's middle."""
import numpy as np

from indexer.core.tree import parse_newick, robinson_foulds
from indexer.core.tree.rooting import midpoint_root


def test_midpoint_root_keeps_the_tree_and_separates_the_outgroup():
    t = parse_newick("((a:0.1,b:0.1)0.9:0.05,(c:0.1,out:2.0):0.02,d:0.1);")
    r = midpoint_root(t)
    names = sorted(t.leaf_names)
    assert robinson_foulds(t, r) == 0.0
    assert np.allclose(t.path_distances(names), r.path_distances(names))
    top = [sorted(r.subtree_leaves(c)) for c in r.children[r.root]]
    assert ["out"] in top  # the far leaf hangs alone off the root
    assert 0.9 in r.support.values()  # split supports travel with their edges


def test_small_trees_unchanged():
    t = parse_newick("(a:1,b:2);")
    assert sorted(midpoint_root(t).leaf_names) == ["a", "b"]
