"""The writer on the sparse (Hub-scale) index, ``index_mode = "sparse"``: a real DuckDB
catalog and the real ``IndexWriter``; the alleles are the simulator's (no model runs here).

Per insert the catalog gains the model's k nearest pairs (not its full row), and a whole tree
every ``tree_every`` inserts with placement records between; publishing stores the whole tree
first; a restart re-inserts the models after the newest whole tree and comes back with the
same neighbour lists; a catalog is never continued in the other mode.
"""
from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest

from indexer.app.job import JobConfig
from indexer.app.writer import IndexWriter
from indexer.core.distance import AlleleIndex
from indexer.core.simulate import simulate_probes
from indexer.core.tree import parse_newick
from indexer.errors import PhylolmError
from schemas.records import ProbeParams
from tests.helpers.outcomes import simulated_outcome

K, TREE_EVERY = 6, 10


@pytest.fixture(scope="module")
def eco():
    return simulate_probes(50, seed=3, n_genes=24, n_samples=16)


def _config(path, eco, **kw) -> JobConfig:
    opts = {"index_mode": "sparse", "index_k": K, "tree_every": TREE_EVERY, **kw}
    return JobConfig(catalog=path, backend="simulated", n_genes=eco.n_genes,
                     params=ProbeParams(n_samples=eco.n_samples), **opts)


def _index_all(path, eco, n: int, **kw) -> IndexWriter:
    writer = IndexWriter(_config(path, eco, **kw))
    for i in range(n):
        assert writer.apply(simulated_outcome(writer, eco, i)).status == "indexed"
    return writer


def _exact_matrix(eco, n: int) -> tuple[list[str], np.ndarray]:
    index = AlleleIndex(n_samples=eco.n_samples, values=False)
    for i in sorted(range(n), key=lambda i: eco.ids[i]):
        index.add_unscored(eco.ids[i], eco.counts(i))
    return index.ids, index.distance_matrix()


def test_each_insert_stores_its_k_nearest_and_a_whole_tree_every_tree_every(eco, tmp_path):
    n = 40
    writer = _index_all(tmp_path / "c.duckdb", eco, n)
    con = writer.catalog.con
    # O(k) pairs per model, not n: the i-th insert adds its min(i, K) nearest and the earlier
    # models whose K nearest it entered; each pair is stored once
    stored = con.execute("select count(*) from distance_pairs").fetchone()[0]
    assert sum(min(i, K) for i in range(n)) < stored <= 2 * sum(min(i, K) for i in range(n)) < n * (n - 1) // 2
    per_model = dict(con.execute("""select m, count(*) from (select model_b as m from distance_pairs
                                     union all select model_a from distance_pairs) group by m""").fetchall())
    assert max(per_model.values()) > K  # a model is also listed by later models' k nearest
    # the stored distances are exact: equal to the full matrix computed from the alleles
    ids, d = _exact_matrix(eco, n)
    at = {m: i for i, m in enumerate(ids)}
    for a, b, dist in con.execute("select model_a, model_b, distance from distance_pairs").fetchall():
        assert dist == pytest.approx(d[at[a], at[b]], abs=1e-12)
    # ... the nearest of them to the earlier models are each model's K nearest among the models
    # indexed before it, and the nearest K of all are its K nearest now (the graph's lists)
    order = {m: i for i, m in enumerate(eco.ids)}
    for j in range(K + 1, n):
        m = eco.ids[j]
        want = sorted(d[at[m], at[x]] for x in eco.ids[:j])[:K]
        pairs = con.execute("select model_a, model_b, distance from distance_pairs where model_a = ? or model_b = ?",
                            [m, m]).fetchall()
        got_earlier = sorted(dist for a, b, dist in pairs if order[b if a == m else a] < j)[:K]
        assert got_earlier == pytest.approx(want, abs=1e-12)
        now = sorted(d[at[m], at[x]] for x in eco.ids[:n] if x != m)[:K]
        assert sorted(dist for _, _, dist in pairs)[:K] == pytest.approx(now, abs=1e-12)
    # whole trees: at least one every TREE_EVERY snapshots, placement records between
    rows = con.execute("select newick is null, stats from tree_snapshots order by snapshot_id").fetchall()
    assert len(rows) == n
    gaps, run = [], 0
    for is_record, _ in rows:
        run = run + 1 if is_record else 0
        gaps.append(run)
    assert max(gaps) == TREE_EVERY - 1 and sum(r for r, _ in rows) > n // 2
    assert all('"placement"' in s and '"sister"' in s for r, s in rows if r)
    # publishing replaces current_tree first (nothing appended): readers get every indexed
    # model in the tree, as of the newest placement record
    whole_before = con.execute("select count(newick) from tree_snapshots").fetchone()[0]
    writer.publish()
    snap_id, newick, _ = writer.catalog.latest_snapshot()
    assert set(parse_newick(newick).leaf_node) == set(eco.ids[:n])
    assert snap_id == con.execute("select max(snapshot_id) from tree_snapshots").fetchone()[0]
    assert con.execute("select newick is null from tree_snapshots where snapshot_id = ?", [snap_id]).fetchone()[0]
    assert con.execute("select count(*), max(n_leaves) from current_tree").fetchone() == (1, n)
    assert con.execute("select count(newick) from tree_snapshots").fetchone()[0] == whole_before
    layout = writer.catalog.index_layout()
    assert (layout.mode, layout.k, layout.backend) == ("sparse", K, "simulated")
    # the full matrix on demand, for readers that need it (estimates, plots, the lineage check)
    _, ids2, d2 = writer.catalog.complete_matrix()
    assert ids2 == ids and np.allclose(d2, d, atol=1e-12)
    writer.close()


def test_a_restart_reinserts_after_the_newest_whole_tree_with_the_same_lists(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    n = 33  # ends on placement records: the newest whole tree lacks the last models
    writer = _index_all(path, eco, n)
    assert writer.catalog.placements_since_tree(writer.genome.hash) > 0
    before = {m: writer.index.nearest(m, K) for m in writer.index.ids}
    writer.close()
    again = IndexWriter(_config(path, eco))
    assert sorted(again.index.ids) == sorted(eco.ids[:n])
    assert set(again.index.tree.leaf_node) == set(eco.ids[:n])
    after = {m: again.index.nearest(m, K) for m in again.index.ids}
    assert {m: [x for x, _ in v] for m, v in after.items()} == {m: [x for x, _ in v] for m, v in before.items()}
    for m, near in after.items():  # the same products, summed in another order
        assert [x for _, x in near] == pytest.approx([x for _, x in before[m]], abs=1e-12)
    # it goes on where it stopped: the next insert is one more model, with its K nearest and
    # the lists it entered (the same lists as before the restart: each pair not stored yet)
    count = "select count(*) from distance_pairs"
    stored = again.catalog.con.execute(count).fetchone()[0]
    assert again.apply(simulated_outcome(again, eco, n)).n_models == n + 1
    new = eco.ids[n]
    entered = [m for m in again.index.ids if m != new and new in {x for x, _ in again.index.nearest(m, K)}]
    assert again.catalog.con.execute(count).fetchone()[0] == \
        stored + len({x for x, _ in again.index.nearest(new, K)} | set(entered))
    again.close()


def test_a_catalog_keeps_the_mode_it_was_made_with(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    _index_all(path, eco, 5).close()
    for other in ({"index_mode": "exact"}, {"index_k": K + 1}):
        with pytest.raises(PhylolmError, match=f"indexed in the sparse, k = {K} mode"):
            IndexWriter(_config(path, eco, **other))
    exact = tmp_path / "exact.duckdb"
    _index_all(exact, eco, 5, index_mode="exact").close()
    with pytest.raises(PhylolmError, match="indexed in the exact mode"):
        IndexWriter(_config(exact, eco))
    # the exact mode is as before: every pair, a whole tree with every insert
    w = IndexWriter(_config(exact, eco, index_mode="exact"))
    con = w.catalog.con
    assert con.execute("select count(*) from distance_pairs").fetchone()[0] == 10
    assert con.execute("select count(*) from tree_snapshots where newick is null").fetchone()[0] == 0
    w.close()


def test_the_writer_connection_has_the_configured_memory_limit(eco, tmp_path):
    """``catalog_memory_limit`` from the settings reaches the writer's DuckDB connection, and
    a value DuckDB would refuse is refused when the settings are read."""
    from indexer.app.settings import Settings, job_config

    cfg = job_config(Settings(catalog=tmp_path / "c.duckdb", backend="simulated", catalog_memory_limit="256MB"),
                     None)
    writer = IndexWriter(cfg)
    try:
        assert writer.catalog.con.execute("select current_setting('memory_limit')").fetchone()[0] == "244.1 MiB"
    finally:
        writer.close()
    with pytest.raises(ValueError, match="not a size"):
        Settings(catalog_memory_limit="2")


def test_whole_trees_are_spaced_by_the_index_size_so_their_bytes_grow_linearly(tmp_path):
    """Past ``tree_every / TREE_SHARE`` models a whole tree comes every ``TREE_SHARE`` of the
    index's size, and publishing many times replaces one ``current_tree`` row: the Newick
    bytes stored stay within a constant times the newest tree's, where a whole tree every
    ``tree_every`` inserts (and one per publish) made them grow with n squared."""
    from indexer.app.defaults import TREE_SHARE

    eco = simulate_probes(300, seed=5, n_genes=16, n_samples=8)
    every = 3  # tree_every / TREE_SHARE = 150: the share takes over half way
    writer = IndexWriter(_config(tmp_path / "c.duckdb", eco, tree_every=every))
    for i in range(len(eco.ids)):
        writer.apply(simulated_outcome(writer, eco, i))
        if i % 10 == 9:
            writer.publish()
    con = writer.catalog.con
    whole = con.execute("select n_leaves from tree_snapshots where newick is not null and reason = 'insert' "
                        "order by snapshot_id").fetchall()
    gaps = [b - a for (a,), (b,) in zip(whole, whole[1:])]
    late = [g for (a,), g in zip(whole, gaps) if a > every / TREE_SHARE]
    assert late and all(g >= math.ceil(TREE_SHARE * a) - 1 for (a,), g in zip(whole, gaps) if a > every / TREE_SHARE)
    assert len(whole) < len(eco.ids) / every  # fewer than a fixed interval stores
    assert con.execute("select count(*) from tree_snapshots where reason = 'publish'").fetchone()[0] == 0
    assert con.execute("select count(*), max(n_leaves) from current_tree").fetchone() == (1, len(eco.ids))
    # a restart resumes from current_tree, the newest tree: nothing was inserted after it
    current = con.execute("select newick from current_tree").fetchone()[0]
    writer.close()
    again = IndexWriter(_config(tmp_path / "c.duckdb", eco, tree_every=every))
    assert again.index.newick() == current
    again.close()


def test_inserts_run_on_one_thread_and_publishing_on_every_core(eco, tmp_path):
    # A per-insert transaction is single-row statements (faster on one DuckDB thread); a
    # publish writes whole tables (all cores). The writer switches between the two.
    writer = _index_all(tmp_path / "c.duckdb", eco, 3)
    setting = "select current_setting('threads')"
    assert writer.catalog.con.execute(setting).fetchone()[0] == 1
    writer.publish()
    everything = duckdb.connect().execute(setting).fetchone()[0]  # DuckDB's default here
    assert writer.catalog.con.execute(setting).fetchone()[0] == everything
    writer.apply(simulated_outcome(writer, eco, 3))
    assert writer.catalog.con.execute(setting).fetchone()[0] == 1
    writer.close()
