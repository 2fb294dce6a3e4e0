"""The sparse allele index: one new row equals the full recomputation and the paper's formula."""
import numpy as np
import pytest

from indexer.core.distance import AlleleIndex, distance_from_similarity, nearest_k, nei_similarity


def random_counts(rng, n_genes=40, n_samples=32, max_alleles=6):
    out = []
    for _ in range(n_genes):
        k = int(rng.integers(1, max_alleles + 1))
        c = rng.multinomial(n_samples, rng.dirichlet(np.ones(k) * 0.5))
        out.append({f"a{j}": int(x) for j, x in enumerate(c) if x > 0})
    return out


def test_incremental_rows_equal_full_recomputation_and_direct_formula():
    rng = np.random.default_rng(7)
    models = [random_counts(rng) for _ in range(60)]
    index = AlleleIndex(n_samples=32)
    rows = [index.add(f"org/m-{i}.v1", c) for i, c in enumerate(models)]
    full = index.similarity_matrix()
    assert np.allclose(full, full.T, atol=0) and np.all(np.diag(full) == 1.0)
    for i in range(1, len(models)):
        assert rows[i].shape == (i,)
        assert np.max(np.abs(rows[i] - full[i, :i])) <= 1e-12
    for i, j in [(0, 1), (5, 17), (42, 59)]:
        assert full[i, j] == pytest.approx(nei_similarity(models[i], models[j], 32), abs=1e-12)
    # the distance matrix is D = -log S with the paper's floor
    assert np.allclose(index.distance_matrix(), -np.log(np.clip(full, 1e-10, 1)))


def test_disjoint_alleles_hit_the_floor_and_identical_models_are_at_zero():
    index = AlleleIndex(n_samples=4)
    a = [{"x": 4}, {"y": 2, "z": 2}]
    index.add("a/one", a)
    assert index.add("a/same", a)[0] == pytest.approx(1.0)
    row = index.add("a/other", [{"q": 4}, {"w": 4}])
    assert np.all(row == 0.0)
    assert distance_from_similarity(0.0) == pytest.approx(-np.log(1e-10))
    assert distance_from_similarity(1.0 + 1e-15) == 0.0


def test_bad_input_is_refused():
    index = AlleleIndex(n_samples=4)
    index.add("a/one", [{"x": 4}, {"y": 4}])
    with pytest.raises(ValueError, match="genes"):
        index.add("a/two", [{"x": 4}])
    with pytest.raises(ValueError, match="already"):
        index.add("a/one", [{"x": 4}, {"y": 4}])
    with pytest.raises(ValueError, match="no alleles"):
        index.add("a/three", [{}, {}])


def test_counts_only_storage_gives_the_same_similarities_as_stored_frequencies():
    """The Hub-scale layout (counts + one norm a row, ``values=False``) against the stored
    float64 frequencies: every product agrees to rounding, including ``rows_dot`` in
    several blocks, and the memory per stored allele drops from 14 to 6 bytes."""
    rng = np.random.default_rng(11)
    models = [random_counts(rng) for _ in range(50)]
    full, lean = AlleleIndex(n_samples=32), AlleleIndex(n_samples=32, values=False)
    lean.dot_block_entries = 300  # a few rows a block: the blockwise path is exercised
    rows_full = [full.add(f"o/m{i}", c) for i, c in enumerate(models)]
    rows_lean = [lean.add(f"o/m{i}", c) for i, c in enumerate(models)]
    for a, b in zip(rows_full, rows_lean):
        assert np.max(np.abs(a - b), initial=0.0) <= 1e-14
    assert np.max(np.abs(full.similarity_matrix() - lean.similarity_matrix())) <= 1e-14
    some = np.array([3, 17, 4, 49])
    assert np.max(np.abs(full.similarity_block(some, some) - lean.similarity_block(some, some))) <= 1e-14
    cols, vals = full.encoded_row(7)
    c2, v2 = lean.encoded_row(7)
    assert np.array_equal(cols, c2) and np.max(np.abs(vals - v2)) <= 1e-15
    assert np.max(np.abs(full.similarity_to(some, cols, vals) - lean.similarity_to(some, c2, v2))) <= 1e-14
    assert lean.similarity_to(np.array([7]), c2, v2)[0] == pytest.approx(1.0, abs=1e-14)
    nnz = lean.matrix().nnz
    assert full.memory_bytes() - lean.memory_bytes() == 8 * nnz


def test_counts_must_be_whole_numbers():
    index = AlleleIndex(n_samples=4)
    with pytest.raises(ValueError, match="whole numbers"):
        index.add("a/frac", [{"x": 2.5}, {"y": 4}])
    with pytest.raises(ValueError, match="whole numbers"):
        index.add("a/huge", [{"x": 70000}, {"y": 4}])
    assert len(index) == 0


def test_unit_gene_weights_give_the_plain_similarity_and_bulk_loading_matches():
    rng = np.random.default_rng(3)
    models = [random_counts(rng, n_genes=10) for _ in range(12)]
    index, bulk = AlleleIndex(n_samples=32), AlleleIndex(n_samples=32)
    for i, c in enumerate(models):
        index.add(f"o/m{i}", c)
        bulk.add_unscored(f"o/m{i}", c)
    s = index.similarity_matrix()
    assert np.allclose(index.similarity_with_gene_weights(np.ones(10)), s, atol=1e-12)
    assert np.array_equal(bulk.similarity_matrix(), s)
    # weight 2 on gene 0 and 0 elsewhere: the similarity of gene 0 alone
    w = np.zeros(10)
    w[0] = 2.0
    only0 = index.similarity_with_gene_weights(w)
    assert only0[0, 1] == pytest.approx(nei_similarity(models[0][:1], models[1][:1], 32), abs=1e-12)
    # a query that is not added
    row = index.similarity_row(models[3])
    assert row[3] == pytest.approx(1.0) and np.allclose(row, s[3], atol=1e-12)


def test_nearest_k_breaks_ties_by_id():
    d = np.array([0.5, 0.2, np.inf, 0.2, 0.1, 0.2])
    ids = ["o/f", "o/e", "o/self", "o/b", "o/z", "o/c"]
    assert list(nearest_k(d, 3, ids)) == [4, 3, 5]  # 0.1, then the 0.2s by id: o/b, o/c
    assert list(nearest_k(d, 3)) == [4, 1, 3]  # without ids: by position
    assert list(nearest_k(d, 10, ids)) == [4, 3, 5, 1, 0]  # never the non-finite one
    assert nearest_k(np.empty(0), 5).size == 0
    m = np.array([[np.inf, 1.0, 1.0], [1.0, np.inf, 2.0], [1.0, 2.0, np.inf]])
    assert nearest_k(m, 1, ["o/c", "o/b", "o/a"])[:, 0].tolist() == [2, 0, 0]  # row 0: o/a before o/b
    assert nearest_k(m, 2, ["o/c", "o/b", "o/a"]).tolist() == [[2, 1], [0, 2], [0, 1]]


@pytest.mark.parametrize("values", [True, False])
def test_bulk_loading_from_arrays_equals_adding_one_by_one(values):
    rng = np.random.default_rng(11)
    models = [random_counts(rng) for _ in range(40)]
    ids = [f"org/m-{i:02d}" for i in range(40)]
    one = AlleleIndex(n_samples=32, values=values)
    for m, c in zip(ids, models):
        one.add_unscored(m, c)
    names = sorted({a for c in models for g in c for a in g})
    code = {a: i for i, a in enumerate(names)}
    genes = [g for c in models for g, per in enumerate(c) for _ in per]
    alleles = [code[a] for c in models for per in c for a in per]
    counts = [x for c in models for per in c for x in per.values()]
    lengths = [sum(len(per) for per in c) for c in models]
    bulk = AlleleIndex.from_arrays(ids, lengths, genes, alleles, names, counts, n_genes=40, n_samples=32,
                                   values=values)
    assert bulk.ids == ids and bulk.n_columns == one.n_columns
    assert np.max(np.abs(bulk.distance_matrix() - one.distance_matrix())) <= 1e-12
    # it keeps growing as an index filled one model at a time
    extra = random_counts(rng)
    assert np.max(np.abs(bulk.add("org/new", extra) - one.add("org/new", extra))) <= 1e-12
    with pytest.raises(ValueError, match="counts"):
        AlleleIndex.from_arrays(ids[:1], [1], [0], [0], names, [0], n_genes=40, n_samples=32)
    with pytest.raises(ValueError, match="gene numbers"):
        AlleleIndex.from_arrays(ids[:1], [1], [40], [0], names, [3], n_genes=40, n_samples=32)
