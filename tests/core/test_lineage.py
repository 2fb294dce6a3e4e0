"""Lineage check: declared bases confirmed or flagged, undeclared relatives found."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from indexer.core.lineage import check_lineage
from indexer.adapters import reference


def _world():
    # base A with fine-tunes a1, a2; base B with fine-tune b1; a re-upload of a1; an out-group
    ids = ["A/base", "x/a1", "y/a2", "B/base", "z/b1", "w/a1-copy", "far/out"]
    pts = {"A/base": (0, 0), "x/a1": (0.3, 0), "y/a2": (0, 0.35), "B/base": (5, 0),
           "z/b1": (5.3, 0.2), "w/a1-copy": (0.32, 0.02), "far/out": (20, 20)}
    p = np.array([pts[i] for i in ids])
    return ids, np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))


def test_true_claim_confirmed_false_claim_flagged_copy_found():
    ids, d = _world()
    declared = {"x/a1": ["A/base"], "y/a2": ["A/base"], "z/b1": ["far/out"], "A/base": ["gone/x"]}
    created = {m: datetime(2024, 1, 1 + i) for i, m in enumerate(ids)}
    f = check_lineage(d, ids, declared, created)
    by = {(x.kind, x.model_id, x.other_id): x for x in f}
    assert ("confirmed", "x/a1", "A/base") in by and by[("confirmed", "x/a1", "A/base")].rank <= 3
    bad = by[("suspicious", "z/b1", "far/out")]
    assert bad.nearest_id == "B/base" and bad.distance > 10 * bad.nearest_distance
    assert ("not_indexed", "A/base", "gone/x") in by
    und = [x for x in f if x.kind == "undeclared"]
    # the re-upload of a1, and b1 sitting on B/base while claiming the out-group
    assert sorted((x.model_id, x.other_id) for x in und) == [("w/a1-copy", "x/a1"), ("z/b1", "B/base")]
    copy = next(x for x in und if x.model_id == "w/a1-copy")
    assert copy.distance == pytest.approx(np.hypot(0.02, 0.02)) and "declares no base" in copy.detail


def test_siblings_nearer_each_other_than_the_base_do_not_hide_it():
    """Four fine-tunes of one base sit 0.9 from each other and 1.0 from the base (as far
    fine-tunes do under Nei distance); one has a fine-tune of its own at 0.2. The base is
    confirmed for each, because models of its own declared lineage are set aside when its
    rank is taken; a model outside the lineage nearer than the base still counts."""
    ids = ["A/base", "o/a1", "o/a2", "o/a3", "o/a4", "o/a1-ft", "u/other"]
    n = len(ids)
    d = np.full((n, n), 0.9)
    d[0, :] = d[:, 0] = 1.0
    d[5, :] = d[:, 5] = 1.05
    d[1, 5] = d[5, 1] = 0.2
    d[6, :] = d[:, 6] = 2.0
    np.fill_diagonal(d, 0.0)
    declared = {f"o/a{i}": ["A/base"] for i in range(1, 5)} | {"o/a1-ft": ["o/a1"]}
    by = {(x.model_id, x.other_id): x for x in check_lineage(d, ids, declared)}
    for i in range(1, 5):
        f = by[(f"o/a{i}", "A/base")]
        assert f.kind == "confirmed" and f.rank == 1, f
    assert by[("o/a1-ft", "o/a1")].kind == "confirmed"
    # an undeclared model nearer than the base, three times over, does push it out
    d2 = d.copy()
    for j in (2, 3, 4):  # o/a2..o/a4 declare nothing now: they are not of the base's lineage
        declared.pop(f"o/a{j}")
    f = {(x.model_id, x.other_id): x for x in check_lineage(d2, ids, declared)}[("o/a1", "A/base")]
    assert f.rank == 4 and f.kind != "confirmed"


def test_a_childs_exact_copy_does_not_push_its_declared_base_out():
    """A re-upload of the child's weights (known from the Hub's hashes) sits at 0 from it:
    it is the child, so it takes no rank from the child's declared base; unknown as a copy,
    it would (with two other models nearer than the base)."""
    ids = ["A/base", "o/child", "m/child-copy", "u/x", "u/y", "u/z"]
    d = np.array([[0.0, 1.0, 1.0, 2.0, 2.0, 2.0],
                  [1.0, 0.0, 0.0, 0.9, 0.95, 2.0],
                  [1.0, 0.0, 0.0, 0.9, 0.95, 2.0],
                  [2.0, 0.9, 0.9, 0.0, 2.0, 2.0],
                  [2.0, 0.95, 0.95, 2.0, 0.0, 2.0],
                  [2.0, 2.0, 2.0, 2.0, 2.0, 0.0]])
    declared = {"o/child": ["A/base"]}
    blind = {(x.kind, x.model_id, x.other_id): x for x in check_lineage(d, ids, declared)}
    assert ("confirmed", "o/child", "A/base") not in blind  # rank 4 of 5: the copy counted
    known = {(x.kind, x.model_id, x.other_id): x
             for x in check_lineage(d, ids, declared, copies={"m/child-copy": "o/child"})}
    f = known[("confirmed", "o/child", "A/base")]
    assert f.rank == 3
    assert ("exact_copy", "m/child-copy", "o/child") in known


def test_equidistant_index_raises_no_alarm():
    ids = [f"o/m{i}" for i in range(6)]
    d = np.ones((6, 6)) - np.eye(6)
    f = check_lineage(d, ids, {"o/m1": ["o/m5"]}, close_distance=0.5)
    assert [x.kind for x in f] == ["confirmed"]  # ties: nothing is strictly closer


def test_paper_matrix_llama_finetunes_confirm_and_a_false_claim_is_flagged():
    pm = reference.paper_matrix()
    declared = {"lmsys/vicuna-7b-v1.3": ["huggyllama/llama-7b"],
                "Qwen/Qwen1.5-7B-Chat": ["EleutherAI/pythia-12b"]}  # the second is false
    kinds = {(x.model_id, x.kind) for x in check_lineage(pm.distance, pm.ids, declared)}
    assert ("lmsys/vicuna-7b-v1.3", "confirmed") in kinds
    assert ("Qwen/Qwen1.5-7B-Chat", "suspicious") in kinds


def test_validation():
    with pytest.raises(ValueError):
        check_lineage(np.zeros((2, 3)), ["a/b", "c/d"], {})
    with pytest.raises(ValueError):
        check_lineage(np.zeros((2, 2)), ["a/b", "c/d"], {}, ratio=1.0)


def _graph_world(n: int = 600, k: int = 8, seed: int = 4):
    """Points in the plane as models: the full matrix, and each model's k nearest as the
    graph a sparse index stores."""
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 2))
    d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
    ids = [f"m/{i:04d}" for i in range(n)]
    masked = d + np.diag(np.full(n, np.inf))
    graph = {ids[i]: [(ids[j], float(d[i, j])) for j in np.argsort(masked[i])[:k]] for i in range(n)}
    pos = {m: i for i, m in enumerate(ids)}
    asked: list[int] = []

    def rows(models, among):
        asked.append(len(among))
        return d[np.ix_([pos[m] for m in models], [pos[m] for m in among])]

    return ids, d, graph, rows, asked


def test_neighbour_graph_ranks_equal_the_matrix_within_k_and_on_exact_rows():
    from indexer.core.lineage import MatrixRelatives, NeighbourRelatives

    ids, d, graph, rows, asked = _graph_world()
    rng = np.random.default_rng(1)
    queries = [(ids[a], ids[b], frozenset(ids[c] for c in rng.integers(0, len(ids), 3)))
               for a, b in rng.integers(0, len(ids), (300, 2)) if a != b]
    queries += [(m, o, frozenset()) for m in ids[:50] for o, _ in graph[m]]  # inside the graph
    graph_rel = NeighbourRelatives(ids, graph, rows, k=8)
    assert graph_rel.ranks(queries) == MatrixRelatives(d, ids).ranks(queries)
    assert set(asked) == {len(ids)}  # the queries outside the graph read exact rows
    assert all(graph_rel.nearest(m) == MatrixRelatives(d, ids).nearest(m) for m in ids)


def test_past_the_sample_size_ranks_outside_the_graph_are_estimated_within_their_error():
    from indexer.core.lineage import MatrixRelatives, NeighbourRelatives

    ids, d, graph, rows, asked = _graph_world()
    sample = 150
    rel = NeighbourRelatives(ids, graph, rows, k=8, sample=sample, seed=2)
    rng = np.random.default_rng(3)
    queries = [(ids[a], ids[b], frozenset()) for a, b in rng.integers(0, len(ids), (400, 2)) if a != b]
    queries = [q for q in queries if q[1] not in {o for o, _ in graph[q[0]]}]
    got, want = rel.ranks(queries), MatrixRelatives(d, ids).ranks(queries)
    assert max(asked) <= sample + 256  # the sample and the batch's other models, never every model
    n = len(ids) - 1
    errors = []
    for (dg, rg, s), (dw, rw, _) in zip(got, want):
        assert dg == dw and s == sample and rg > 8  # exact distance; beyond the graph's k
        p = (rw - 1) / n
        errors.append(abs(rg - rw) / n / max(np.sqrt(p * (1 - p) / sample), 1 / sample))
    # each estimate within 4.5 standard errors of its share (normal tails: 1 in 150,000 beyond)
    assert max(errors) < 4.5 and np.mean(errors) < 1.2


def test_far_ranks_carried_between_checks_of_a_growing_index_equal_a_fresh_check():
    """A streaming job checks at every publish with the last check's counts (``FarRanks``):
    through exact rows, the switch to the sample and the sample's changes, and an index that
    lost a model (a rolled-back insert), its ranks equal a fresh check's, while it computes
    only the distances to the references that changed."""
    from indexer.core.lineage import FarRanks, NeighbourRelatives

    ids, d, _, rows, _ = _graph_world(n=600)
    rng = np.random.default_rng(5)
    memo, sample, k = FarRanks(), 150, 8
    for n in (60, 100, 151, 152, 153, 240, 239, 400, 401, 600):
        prefix = ids[:n]
        masked = d[:n, :n] + np.diag(np.full(n, np.inf))
        graph = {m: [(prefix[j], float(d[i, j])) for j in np.argsort(masked[i])[:k]] for i, m in enumerate(prefix)}
        queries = [(prefix[a], prefix[b], frozenset(prefix[c] for c in rng.integers(0, n, 2)))
                   for a, b in np.random.default_rng(n % 7).integers(0, n, (40, 2)) if a != b]
        queries += [(prefix[i], prefix[max(i - 30, 0)], frozenset()) for i in range(31, n, 3)]  # stable claims
        computed = memo.computed
        carried = NeighbourRelatives(prefix, graph, rows, k=k, sample=sample, memo=memo).ranks(queries)
        fresh_memo = FarRanks()
        fresh = NeighbourRelatives(prefix, graph, rows, k=k, sample=sample, memo=fresh_memo).ranks(queries)
        assert carried == fresh, n
        if n == 401:  # one insert on: the same far queries but 40, and the same sample
            assert memo.computed - computed < fresh_memo.computed / 3, (memo.computed - computed)


def test_bottom_sample_is_uniform_and_kept_as_the_index_grows():
    from indexer.core.lineage import bottom_sample

    ids = [f"o/m{i:05d}" for i in range(20000)]
    first = set(bottom_sample(ids[:10000], 500, seed=0))
    grown = set(bottom_sample(ids, 500, seed=0))
    assert len(first) == len(grown) == 500
    # a model of the first half stays in the sample unless a newer one pushes it out
    assert first >= {m for m in grown if m < ids[10000]}
    assert 180 < len(grown - first) < 320  # about half of the grown sample is new (binomial, sd 11)
    assert set(bottom_sample(ids, 500, seed=1)) != grown
