"""The neighbour graph: exact lists by construction with the exact backend, recall of the
HNSW candidates against brute force, exact distances either way."""
import numpy as np
import pytest

from indexer.core.distance import AlleleIndex
from indexer.core.neighbours import NeighbourGraph
from indexer.core.simulate import simulate_probes


@pytest.fixture(scope="module")
def probed():
    eco = simulate_probes(600, seed=3, n_genes=64)
    return eco, [eco.counts(i) for i in range(len(eco.ids))]


def build(probed, backend, n=None, **kw):
    eco, counts = probed
    graph = NeighbourGraph(AlleleIndex(n_samples=32), backend=backend, **kw)
    for i, m in enumerate(eco.ids[:n]):
        graph.insert(m, counts[i])
    return graph


def test_exact_backend_lists_are_the_brute_force_k_nearest(probed):
    graph = build(probed, "exact", n=200, k=8, candidates=8)
    full = graph.alleles.distance_matrix()
    for row in range(len(graph)):
        got = graph.neighbours(row)
        brute = graph.brute_force(row, 8)
        # the same k nearest: equal distances (rows may swap only where distances tie to rounding)
        assert np.max(np.abs(got.distance - full[row, brute])) <= 1e-12
        assert np.mean(got.rows == brute) >= 0.75
        # the distances are the full matrix's, not estimates
        assert np.max(np.abs(got.distance - full[row, got.rows])) <= 1e-12


def test_insert_returns_the_k_nearest_earlier_models(probed):
    eco, counts = probed
    graph = build(probed, "exact", n=100, k=5, candidates=5)
    found = graph.insert(eco.ids[100], counts[100])
    row = graph.exact_row(100)[:100]
    assert found.rows.tolist() == np.lexsort((np.arange(100), row))[:5].tolist()
    assert np.allclose(found.distance, row[found.rows], atol=1e-12)
    assert np.allclose(found.similarity, np.exp(-found.distance), atol=1e-12)


def test_hnsw_candidates_recall_at_10(probed):
    pytest.importorskip("hnswlib")
    eco, _ = probed
    graph = build(probed, "hnsw", k=16, candidates=48, buckets=16)
    assert graph._ann is not None and graph._ann.get_current_count() == len(eco.ids)
    rng = np.random.default_rng(0)
    hits = []
    for row in rng.choice(len(graph), 60, replace=False).tolist():
        truth = set(graph.brute_force(row, 10).tolist())
        stored = graph.neighbours(row)
        hits.append(len(truth & set(stored.rows[:10].tolist())) / 10)
        exact = graph.exact_row(row)
        assert np.max(np.abs(stored.distance - exact[stored.rows])) <= 1e-12
    assert np.mean(hits) >= 0.99


def test_a_copy_of_a_model_is_its_nearest_at_distance_zero(probed):
    eco, counts = probed
    graph = build(probed, "exact", n=50, k=4, candidates=4)
    found = graph.insert("copy-of-7", counts[7])
    assert found.rows[0] == 7 and found.distance[0] == 0.0
    with pytest.raises(ValueError, match="candidates >= k"):
        NeighbourGraph(AlleleIndex(), k=8, candidates=4)
