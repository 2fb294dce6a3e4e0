"""The PhyloLM paper's 127-model matrix: NJ reproduces its figures; one-by-one insertion in
the paper's order recovers as many families and fits D about as well (see
tests/data/paper/PROVENANCE.md)."""
import csv
from pathlib import Path

import numpy as np
import pytest

from indexer.core.distance import distance_from_similarity
from indexer.core.tree import IncrementalTree, RebuildPolicy, families_recovered, neighbor_joining, squared_error

DATA = Path(__file__).parent / "data" / "paper"


@pytest.fixture(scope="module")
def paper():
    rows = list(csv.DictReader((DATA / "models_completion_127.csv").open()))
    names = [r["engine"] for r in rows]
    family = {r["engine"]: r["family"] for r in rows}
    with (DATA / "sim_math_completion127_digitized.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0][1:] == names
    s = np.array([[float(x) for x in r[1:]] for r in table[1:]])
    return names, family, distance_from_similarity(s)


def test_nj_reproduces_the_papers_figures(paper):
    names, family, d = paper
    assert len(names) == 127 and len(set(family.values())) == 9
    t = neighbor_joining(d, names)
    assert families_recovered(t, family) == ["bloom", "gemma", "llama", "mistral"]
    nearest = np.argmin(d + np.diag(np.full(127, np.inf)), axis=1)
    same = np.mean([family[names[i]] == family[names[j]] for i, j in enumerate(nearest)])
    assert same == pytest.approx(0.976, abs=0.001)
    assert squared_error(t, d, names) == pytest.approx(142, abs=1)


@pytest.mark.parametrize("policy", [RebuildPolicy(), RebuildPolicy.never()], ids=["growth-0.5", "never"])
def test_insertion_in_the_papers_order(paper, policy):
    names, family, d = paper
    nj = neighbor_joining(d, names)
    inc = IncrementalTree(policy)
    for i, m in enumerate(names):
        inc.insert(m, d[i, :i])
    assert set(inc.tree.leaf_node) == set(names)
    inc.tree.check()
    assert len(families_recovered(inc.tree, family)) >= len(families_recovered(nj, family))
    assert squared_error(inc.tree, d, names) <= 1.10 * squared_error(nj, d, names)
