"""`phylolm bench index --peers` (indexer/bench/peers.py): the delta error it reports, and
the side-by-side run against the real APPLES-2 (the `test` extra installs apples) and the
real quicktree / clearcut (Debian packages; skipped where they are absent)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from indexer.bench.peers import NOT_INSTALLED, DeltaError, apples_program, bench_peers, jplace_edge_clades
from indexer.core.simulate import simulate_probes
from indexer.core.tree import parse_newick
from indexer.core.tree.neighbourhood import spanned_subtree

RUN = dict(models=60, queries=10, seed=0, genes=32, k=10, candidates=10, backend="exact")


@pytest.fixture(scope="module")
def result() -> dict:
    return bench_peers(**RUN)


def test_delta_error_counts_the_true_splits_the_placement_loses():
    # truth ((a,b),(c,(d,q))): on B = {a,b,c,d} the backbone is the truth restricted, ((a,b),(c,d))
    truth = parse_newick("((a:1,b:1):1,(c:1,(d:1,q:1):1):1);")
    backbone = parse_newick("((a:1,b:1):1,(c:1,d:1):1);")
    delta = DeltaError(truth, backbone)
    assert delta.backbone_fn == 0
    edge = {x: backbone.leaf_node[x] for x in "abcd"}
    assert delta("q", edge["d"]) == 0  # where the truth has it
    assert delta("q", edge["c"]) == 1  # keeps ab|cdq, loses dq|abc
    assert delta("q", edge["a"]) == 2 and delta("q", edge["b"]) == 2  # loses both
    with pytest.raises(ValueError):
        delta("a", edge["d"])  # a backbone model is no query


def test_delta_error_is_zero_on_the_true_edge_and_never_negative():
    eco = simulate_probes(60, seed=3, n_genes=8)
    truth = eco.truth
    rng = np.random.default_rng(3)
    queries = set(rng.choice(eco.ids, 10, replace=False).tolist())
    b_nodes = [truth.leaf_node[x] for x in eco.ids if x not in queries]
    small, _ = spanned_subtree(truth, b_nodes)  # the truth restricted to the backbone models
    small.label = [None if x is None else truth.label[int(x)] for x in small.label]
    small.leaf_node = {small.label[v]: v for v in small.leaf_node.values()}
    delta = DeltaError(truth, small)
    assert delta.backbone_fn == 0
    edges = [v for v in range(small.n_nodes) if v != small.root]
    checked = 0
    for q in sorted(queries):
        v = truth.leaf_node[q]
        while not set(truth.subtree_leaves(v)) - queries:  # up to the first ancestor holding a backbone model
            v = int(truth.parent[v])
        below = set(truth.subtree_leaves(v)) - queries
        all_deltas = [delta(q, e) for e in edges]
        assert all(isinstance(x, int) and x >= 0 for x in all_deltas)
        assert max(all_deltas) > 0
        if len(below) < len(small.leaf_node):  # not at the root: one edge splits these off
            assert delta(q, delta.edge_of_clade(below)) == 0
            checked += 1
    assert checked >= 8


def test_jplace_edge_numbers_name_the_leaves_below():
    clades = jplace_edge_clades("[&R] ((a:1{0},b:1.5{1})x:0.5{2},c:1{3},d:2e-3{4});")
    assert clades == {0: {"a"}, 1: {"b"}, 2: {"a", "b"}, 3: {"c"}, 4: {"d"}}


def test_placement_beside_the_real_apples(result):
    assert apples_program() is not None, "apples is not installed: pip install apples (in the `test` extra)"
    pl = result["placement"]
    apples = pl["apples"]
    assert apples != NOT_INSTALLED
    assert apples["placed"] + apples["unplaced"] == RUN["queries"] and apples["placed"] >= RUN["queries"] - 1
    for name in ("ours_sparse", "ours_full", "apples"):
        r = pl[name]
        assert all(isinstance(x, int) and x >= 0 for x in r["deltas"]), (name, r["deltas"])
        assert r["delta_mean"] == round(float(np.mean(r["deltas"])), 4)
        assert r["delta_max"] <= 2 * (pl["backbone_models"] - 2)  # at most every split of T*|B+q
    assert len(pl["ours_sparse"]["deltas"]) == len(pl["ours_full"]["deltas"]) == RUN["queries"]
    for name in ("ours_sparse", "ours_full"):
        r, ratio = pl[name], pl[name]["ours_over_apples"]
        if apples["delta_mean"]:
            assert ratio["delta_mean"] == round(r["delta_mean"] / apples["delta_mean"], 4)
        assert ratio["placement_ms_over_process_ms_per_query"] == round(
            r["placement_ms_mean"] / apples["process_ms_per_query"], 4)
        assert r["placement_ms_mean"] > 0
    per_query = 1e3 * apples["process_seconds"] / RUN["queries"]  # seconds are rounded to 1 ms
    assert apples["process_ms_per_query"] == pytest.approx(per_query, abs=0.5 / RUN["queries"] + 1e-3)
    assert 0 < apples["queries_seconds"] <= apples["process_seconds"]


def test_full_builds_beside_quicktree_and_clearcut(result):
    fb = result["full_builds"]
    assert fb["models"] == RUN["models"]
    assert fb["nrf_ratio_incremental_over_nj"] == round(fb["nrf_incremental_truth"] / fb["ours"]["nrf_truth"], 4)
    missing = [p for p in ("quicktree", "clearcut") if shutil.which(p) is None]
    for name, binary in (("quicktree", "quicktree"), ("clearcut_exact", "clearcut"), ("clearcut_relaxed", "clearcut")):
        r = fb[name]
        if binary in missing:
            assert r == NOT_INSTALLED
            continue
        assert r["seconds"] > 0 and 0 <= r["nrf_truth"] <= 1  # the leaf sets were checked by the run itself
        assert r["ours_over_peer"]["seconds"] == round(fb["ours"]["seconds"] / r["seconds"], 4)
        assert r["ours_over_peer"]["nrf_truth"] == round(fb["ours"]["nrf_truth"] / r["nrf_truth"], 4)
        if name != "clearcut_relaxed":  # two exact NJs of the same matrix (no ties here): the same tree
            assert r["nrf_to_ours"] == 0.0 and r["nrf_truth"] == fb["ours"]["nrf_truth"]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages; `scripts/setup.sh test` installs them)")


def test_peers_not_installed_are_reported_so(monkeypatch):
    import indexer.bench.peers as peers

    monkeypatch.setattr(peers, "apples_program", lambda: None)
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    res = bench_peers(models=30, queries=5, genes=16, k=8, candidates=8, backend="exact")
    assert res["placement"]["apples"] == NOT_INSTALLED
    assert "ours_over_apples" not in res["placement"]["ours_sparse"]
    fb = res["full_builds"]
    assert fb["quicktree"] == fb["clearcut_exact"] == fb["clearcut_relaxed"] == NOT_INSTALLED
    assert fb["ours"]["seconds"] > 0
    assert any(row[3] == NOT_INSTALLED for row in peers.table_rows(res))
