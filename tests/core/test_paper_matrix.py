"""The PhyloLM paper's 127-model matrix (the packaged copy, see
indexer/data/reference/PROVENANCE.md): NJ reproduces its figures; one-by-one insertion in the
paper's order recovers as many families and fits D about as well."""
import numpy as np
import pytest

from indexer.core.tree import IncrementalTree, RebuildPolicy, families_recovered, neighbor_joining, squared_error


def _names_families_distance(paper):
    """The paper's models, model -> family, and D = -log S, in the matrix's order."""
    pm, _ = paper
    return list(pm.ids), dict(zip(pm.ids, pm.families)), pm.distance


def test_nj_reproduces_the_papers_figures(paper):
    names, family, d = _names_families_distance(paper)
    assert len(names) == 127 and len(set(family.values())) == 9
    t = neighbor_joining(d, names)
    assert families_recovered(t, family) == ["bloom", "gemma", "llama", "mistral"]
    nearest = np.argmin(d + np.diag(np.full(127, np.inf)), axis=1)
    same = np.mean([family[names[i]] == family[names[j]] for i, j in enumerate(nearest)])
    assert same == pytest.approx(0.976, abs=0.001)
    assert squared_error(t, d, names) == pytest.approx(142, abs=1)


@pytest.mark.parametrize("policy", [RebuildPolicy(), RebuildPolicy.never()], ids=["growth-0.5", "never"])
def test_insertion_in_the_papers_order(paper, policy):
    names, family, d = _names_families_distance(paper)
    nj = neighbor_joining(d, names)
    inc = IncrementalTree(policy)
    for i, m in enumerate(names):
        inc.insert(m, d[i, :i])
    assert set(inc.tree.leaf_node) == set(names)
    inc.tree.check()
    assert len(families_recovered(inc.tree, family)) >= len(families_recovered(nj, family))
    assert squared_error(inc.tree, d, names) <= 1.10 * squared_error(nj, d, names)
