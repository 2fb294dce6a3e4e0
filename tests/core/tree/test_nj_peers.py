"""Our neighbour joining against two independent exact NJ programs: quicktree and
`clearcut --neighbor` (Debian packages `quicktree` and `clearcut`; `scripts/setup.sh test`
installs them when it can).

Each matrix goes to the peers as a PHYLIP distance matrix at 8 decimals, under short names
m0, m1, ... (PHYLIP names are at most 10 characters), which are mapped back to our labels;
our NJ gets the same rounded matrix. Where the two peers agree with each other, our
topology must be theirs (RF = 0). Where they disagree, the matrix has ties or near-ties
that the programs resolve differently (clearcut's choices there can be further from the
minimum of Q than double-precision rounding explains); it says nothing about ours and is
skipped, with the RFs in the reason (`pytest -rs` lists them). The peers may also agree
with each other and not with us on a matrix with exact ties, because they happen to break
them alike; then both trees must be reachable by textbook NJ with some choice among the
tied pairs (`nj_reaches`, a separate O(n^3) implementation here), and the matrix is skipped
as tied.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexer.bench.nj_peers import PEERS, clearcut_newick, quicktree_newick, write_phylip
from indexer.core.tree import neighbor_joining, parse_newick, robinson_foulds, splits
from indexer.core.tree.core import Tree
from tests.core.tree.test_tree import NJ_MATRICES, NJ_MATRICES_SLOW, _matrix

PEER_MATRICES = NJ_MATRICES + [("sim:caterpillar", 1000, 0), ("sim:balanced", 1000, 0), ("clustered", 1500, 0),
                               ("l1grid", 1000, 0), ("scaled", 1000, 0), ("ultrametric_tenth", 1000, 1)]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {name!r}; `scripts/setup.sh test` installs it as root)")
    return path


def run_quicktree(phy) -> str:
    return quicktree_newick(phy, _binary("quicktree"))


def run_clearcut(phy, tree_file) -> str:
    return clearcut_newick(phy, tree_file, _binary("clearcut"))


def _relabel(tree: Tree, names: list[str]) -> Tree:
    """Short PHYLIP names (m<i>) back to row labels."""
    back = {f"m{i}": x for i, x in enumerate(names)}
    tree.leaf_node = {}
    for v, label in enumerate(tree.label):
        if label is not None and not tree.children[v]:
            tree.label[v] = back[label]
            tree.leaf_node[back[label]] = v
    return tree


def nj_reaches(d: np.ndarray, tree: Tree, names: list[str], rel: float = 1e-9) -> bool:
    """Whether textbook NJ on ``d`` can end in ``tree``'s topology when a step's near-minimal
    pairs (Q within ``rel`` of the minimum, relative to the size of the terms) may be taken
    in any order. Greedy: each step joins the first such pair that is a clade of ``tree``, so
    True is a proof and False is very likely one. Plain numpy, O(n^3): separate from
    indexer.core.tree.nj on purpose."""
    n = len(d)
    full = (1 << n) - 1
    target = set(splits(tree, names))
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    r = d.sum(axis=1)
    clade = [1 << i for i in range(n)]
    m = n
    while m > 3:
        scale = float(m - 2)
        q = scale * d[:m, :m] - (r[:m, None] + r[None, :m])
        q[np.tril_indices(m)] = np.inf
        tol = rel * (scale * np.abs(d[:m, :m]).max() + 2.0 * np.abs(r[:m]).max())
        ii, jj = np.nonzero(q <= q.min() + tol)
        for k in np.argsort(q[ii, jj], kind="stable"):
            i, j = int(ii[k]), int(jj[k])
            u = clade[i] | clade[j]
            if u.bit_count() >= n - 1 or (u if not u & 1 else full ^ u) in target:
                break
        else:
            return False
        di, dj = d[i, :m].copy(), d[j, :m].copy()
        du = 0.5 * (di + dj - d[i, j])
        du[i] = du[j] = 0.0
        r[:m] += du - di - dj
        r[i] = du.sum()
        d[i, :m] = d[:m, i] = du
        clade[i] = u
        last = m - 1
        if j != last:
            d[j, :m] = d[last, :m]
            d[:m, j] = d[:m, last]
            d[j, j] = 0.0
            r[j] = r[last]
            clade[j] = clade[last]
        m -= 1
    return True


def _compare(spec, tmp_path):
    for binary in PEERS:
        _binary(binary)
    d = np.round(_matrix(spec), 8)  # what the peers read
    names = [f"org-{i % 7}/model-{i}.v1" for i in range(len(d))]  # longer than PHYLIP allows
    phy = tmp_path / "d.phy"
    write_phylip(d, phy)
    ours = neighbor_joining(d, names)
    qt = _relabel(parse_newick(run_quicktree(phy)), names)
    cc = _relabel(parse_newick(run_clearcut(phy, tmp_path / "cc.tre")), names)
    assert set(qt.leaf_node) == set(cc.leaf_node) == set(names)
    peers = robinson_foulds(qt, cc, normalised=False)
    if peers:
        pytest.skip(f"{spec}: quicktree and clearcut disagree (RF {peers:.0f}; ours vs quicktree "
                    f"{robinson_foulds(ours, qt, normalised=False):.0f}, vs clearcut "
                    f"{robinson_foulds(ours, cc, normalised=False):.0f}): ties or near-ties that they resolve differently")
    rf = robinson_foulds(ours, qt, normalised=False)
    if rf:
        assert nj_reaches(d, qt, names), f"the peers' tree is no NJ tree of {spec} (RF {rf:.0f} from ours)"
        assert nj_reaches(d, ours, names), f"our tree is no NJ tree of {spec} (RF {rf:.0f} from the peers')"
        pytest.skip(f"{spec}: the peers agree, ours is RF {rf:.0f} away; both are NJ trees of this "
                    f"matrix with different choices among tied pairs")


@pytest.mark.parametrize("spec", PEER_MATRICES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_nj_matches_quicktree_and_clearcut(spec, tmp_path):
    _compare(spec, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec", NJ_MATRICES_SLOW, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_nj_matches_quicktree_and_clearcut_on_many_matrices(spec, tmp_path):
    _compare(spec, tmp_path)
