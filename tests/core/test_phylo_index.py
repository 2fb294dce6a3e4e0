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


def _sparse_backend():
    try:
        import hnswlib  # noqa: F401
        return "hnsw"
    except ImportError:
        return "exact"


def _arrays(obj, seen=None):
    """Every numpy array reachable from an object's attributes (and lists/dicts of them)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _arrays(x, seen)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _arrays(x, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("indexer"):
        for x in vars(obj).values():
            yield from _arrays(x, seen)


def test_sparse_mode_keeps_no_square_matrix(eco_counts):
    eco, counts = eco_counts
    index = PhyloIndex("genome", 32, RebuildPolicy(), mode="sparse", k=8, candidates=16,
                       backend=_sparse_backend(), rebuild_max_models=40)
    results = [index.insert(m, counts[i]) for i, m in enumerate(eco.ids)]
    n = len(index)
    for a in _arrays(index):
        assert a.ndim < 2 or min(a.shape) < n // 4, a.shape  # lists are n x k, never n x n
    # the neighbours given at insert are the k nearest by the exact row, exact distances
    full = index.distance_matrix()
    assert full.shape == (n, n)  # on demand, not kept
    for i in range(9, n, 17):
        r = results[i]
        # its k nearest first, then the earlier models whose k nearest it entered
        assert r.rows is not None and r.rows.shape[0] >= 8 and len(set(r.rows.tolist())) == r.rows.shape[0]
        assert np.allclose(r.distance, full[i, r.rows], atol=1e-12)
        row = full[i, :i]
        assert np.allclose(np.sort(r.distance[:8]), np.sort(row)[:8], atol=1e-12)
    index.tree.check()
    assert set(index.tree.leaf_node) == set(index.ids)
    # rebuilds stop once the index outgrows rebuild_max_models
    assert index.incremental.rebuilds_skipped >= 1
    assert not any(r.rebuilt for r in results[41:])


def test_sparse_mode_tree_is_about_as_good_as_nj(eco_counts):
    eco, counts = eco_counts
    index = PhyloIndex("genome", 32, RebuildPolicy.never(), mode="sparse", k=16, candidates=32,
                       backend=_sparse_backend())
    for i, m in enumerate(eco.ids):
        index.insert(m, counts[i])
    nj = index.nj_tree()
    inc, ref = robinson_foulds(index.tree, eco.truth), robinson_foulds(nj, eco.truth)
    assert inc <= 1.25 * ref + 0.02, (inc, ref)


def test_sparse_nearest_agrees_with_the_exact_mode(eco_counts):
    eco, counts = eco_counts
    exact, _ = build(eco, counts, RebuildPolicy(), n=80)
    sparse = PhyloIndex("genome", 32, RebuildPolicy(), mode="sparse", k=8, candidates=8, backend="exact")
    for i, m in enumerate(eco.ids[:80]):
        sparse.insert(m, counts[i])
    for m in eco.ids[::7][:10]:
        got, want = sparse.nearest(m, 5), exact.nearest(m, 5)
        assert [x for x, _ in got] == [x for x, _ in want]
        assert np.allclose([d for _, d in got], [d for _, d in want], atol=1e-12)
        assert [x for x, _ in sparse.nearest(m, 12)] == [x for x, _ in exact.nearest(m, 12)]  # beyond k: exact row


def test_sparse_mode_resumes_from_stored_alleles_and_tree(eco_counts):
    """A resumed sparse index has the original's neighbour lists and tree, and the next
    insert goes exactly as it would have in the original."""
    eco, counts = eco_counts
    opts = dict(mode="sparse", k=8, candidates=16, backend=_sparse_backend(), rebuild_max_models=40)
    original = PhyloIndex("genome", 32, RebuildPolicy(), **opts)
    for i, m in enumerate(eco.ids[:90]):
        original.insert(m, counts[i])
    newick = original.newick()
    resumed = PhyloIndex.from_state(eco.ids[:90], counts[:90], newick, genome_hash="genome", n_samples=32,
                                    policy=RebuildPolicy(), **opts)
    assert resumed.n_rebuilds == 0 and resumed.newick() == newick
    for r in range(0, 90, 11):
        a, b = original.graph.neighbours(r), resumed.graph.neighbours(r)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.distance, b.distance)
    r1, r2 = original.insert(eco.ids[90], counts[90]), resumed.insert(eco.ids[90], counts[90])
    assert r1.neighbours == r2.neighbours and r1.sister == r2.sister
    assert original.newick() == resumed.newick()
    # models stored after the tree was: inserted on resume; no tree and over the NJ limit: all inserted
    later = PhyloIndex.from_state(eco.ids[:100], counts[:100], newick, n_samples=32, policy=RebuildPolicy(), **opts)
    assert set(later.tree.leaf_node) == set(eco.ids[:100]) and later.n_rebuilds == 0
    no_tree = PhyloIndex.from_state(eco.ids[:60], counts[:60], None, n_samples=32, policy=RebuildPolicy(), **opts)
    assert set(no_tree.tree.leaf_node) == set(eco.ids[:60])
    assert no_tree.incremental.rebuilds_skipped >= 1  # grown by inserts past rebuild_max_models
