"""PhyloIndex: inserts agree with a full recomputation, trees stay good, state resumes cheaply."""
import numpy as np
import pytest

from indexer.core.phylo_index import PhyloIndex
from indexer.core.simulate import simulate
from indexer.core.tree import RebuildPolicy, parse_newick, robinson_foulds


@pytest.fixture(scope="module")
def eco_counts():
    eco = simulate(160, seed=12, n_genes=64)
    return eco, [eco.sample_counts(i, 32, seed=1) for i in range(len(eco.ids))]


def build(eco, counts, policy, n=None):
    index = PhyloIndex("genome", 32, policy)
    results = [index.insert(m, counts[i]) for i, m in enumerate(eco.ids[:n])]
    return index, results


def test_insert_rows_equal_full_recomputation(eco_counts):
    eco, counts = eco_counts
    index, results = build(eco, counts, RebuildPolicy(), n=60)
    full = index.alleles.similarity_matrix()
    for i, r in enumerate(results):
        assert r.similarity.shape == (i,)
        assert np.max(np.abs(r.similarity - full[i, :i]), initial=0.0) <= 1e-12
    d = index.distance_matrix()
    assert np.allclose(d, -np.log(np.clip(full, 1e-10, 1)), atol=1e-12)
    last = results[-1]
    assert last.neighbours[0] == index.ids[int(np.argmin(d[59, :59]))]
    assert {"distance"} <= set(last.timings_ms) and last.insert_ms > 0
    assert index.nearest(index.ids[59], 3)[0][0] == last.neighbours[0]
    index.tree.check()
    assert set(index.tree.leaf_node) == set(index.ids)


def test_rebuild_policy_decides_when_nj_runs(eco_counts):
    eco, counts = eco_counts
    never, res_never = build(eco, counts, RebuildPolicy.never(), n=80)
    assert [r.rebuilt for r in res_never].count(True) == never.policy.min_models
    growth, res = build(eco, counts, RebuildPolicy(growth=0.5), n=80)
    rebuilt_at = [i + 1 for i, r in enumerate(res) if r.rebuilt]
    assert rebuilt_at[:4] == [1, 2, 3, 4]
    for prev, cur in zip(rebuilt_at[3:], rebuilt_at[4:]):
        assert cur == int(np.ceil(1.5 * prev))
    assert all(r.placement is not None for r in res if not r.rebuilt)
    capped, res_cap = build(eco, counts, RebuildPolicy(growth=None, max_inserts=10), n=40)
    assert [i + 1 for i, r in enumerate(res_cap) if r.rebuilt][4:] == [14, 24, 34]


def test_incremental_tree_is_about_as_good_as_nj(eco_counts):
    eco, counts = eco_counts
    index, _ = build(eco, counts, RebuildPolicy.never())
    nj = index.nj_tree()
    inc, ref = robinson_foulds(index.tree, eco.truth), robinson_foulds(nj, eco.truth)
    assert inc <= 1.25 * ref + 0.02, (inc, ref)


def test_from_state_resumes_without_rebuilding(eco_counts):
    eco, counts = eco_counts
    index, _ = build(eco, counts, RebuildPolicy(), n=50)
    newick = index.newick()
    resumed = PhyloIndex.from_state(eco.ids[:50], counts[:50], newick, genome_hash="genome", n_samples=32)
    assert resumed.n_rebuilds == 0
    assert robinson_foulds(resumed.tree, index.tree) == 0.0
    assert np.allclose(resumed.distance_matrix(), index.distance_matrix(), atol=1e-12)
    # models stored after the snapshot are inserted incrementally on resume
    more = PhyloIndex.from_state(eco.ids[:55], counts[:55], newick, genome_hash="genome", n_samples=32,
                                 policy=RebuildPolicy.never())
    assert more.n_rebuilds == 0 and set(more.tree.leaf_node) == set(eco.ids[:55])
    # continuing after a resume matches continuing the original
    r1, r2 = index.insert(eco.ids[50], counts[50]), resumed.insert(eco.ids[50], counts[50])
    assert np.allclose(r1.similarity, r2.similarity, atol=1e-12) and r1.neighbours == r2.neighbours
    # no stored tree: NJ builds one
    fresh = PhyloIndex.from_state(eco.ids[:20], counts[:20], None)
    assert fresh.tree.n_leaves == 20
    with pytest.raises(ValueError, match="without alleles"):
        PhyloIndex.from_state(eco.ids[:10], counts[:10], newick)


def test_gene_bootstrap_support_is_stored_and_written(eco_counts):
    eco, counts = eco_counts
    index, _ = build(eco, counts, RebuildPolicy(), n=30)
    index.rebuild()
    res = index.bootstrap(n_replicates=8, seed=3)
    assert res.n_replicates == 8 and res.seconds > 0
    assert len(res.support) == 30 - 3  # every split of a binary tree on 30 leaves
    values = np.array(list(res.support.values()))
    assert values.min() >= 0 and values.max() <= 1 and values.max() == 1.0
    assert np.all(np.isclose(values * 8, np.round(values * 8)))
    back = parse_newick(index.newick(support=True))
    assert sorted(back.support.values()) == pytest.approx(sorted(np.round(values, 3)))
    again = index.bootstrap(n_replicates=8, seed=3)
    assert again.support == res.support
    # a new insertion invalidates supports of the old tree
    index.insert(eco.ids[30], counts[30])
    assert not index.tree.support
