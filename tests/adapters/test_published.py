"""The published catalog (``<catalog>.published/``), kept by appends: a real DuckDB catalog
written by the real ``IndexWriter`` (simulated alleles: no model runs here), published
between inserts, and read back through the reader's sandboxed connection.

What readers see equals the committed catalog, table by table; a publish writes only what
changed (the new model's rows, the models and estimates it touched, the small tables whose
content changed); parts merge so a table keeps O(log n) of them; a table that stopped being
append-only is written whole again; readers of an older manifest keep working; a publish
killed before its manifest leaves nothing readers see and its files are swept.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import pytest

from indexer.adapters.catalog import JobLock, connect_published, open_read_only, snapshot_path
from indexer.adapters.catalog import published as published_mod
from indexer.adapters.catalog.published import PUBLISHED_TABLES
from indexer.app.job import JobConfig
from indexer.app.writer import IndexWriter
from indexer.core.simulate import simulate_probes
from schemas.records import ModelStatus, ProbeParams
from tests.helpers.outcomes import simulated_outcome


@pytest.fixture(scope="module")
def eco():
    return simulate_probes(40, seed=5, n_genes=16, n_samples=8)


@contextmanager
def _writing(path, eco, mode="exact") -> Iterator[IndexWriter]:
    writer = IndexWriter(JobConfig(catalog=path, backend="simulated", n_genes=eco.n_genes,
                                   params=ProbeParams(n_samples=eco.n_samples), index_mode=mode, index_k=4,
                                   tree_every=5))
    try:
        yield writer
    finally:
        writer.close()


def _add(writer: IndexWriter, eco, models, publish: bool = True) -> None:
    """Insert the simulated ``models`` (indices into ``eco``), publishing after each."""
    for i in models:
        writer.apply(simulated_outcome(writer, eco, i))
        if publish:
            writer.publish()


def _rows(con, table: str) -> list[tuple]:
    return sorted(con.execute(f"select * from {table}").fetchall(), key=repr)  # our own table names


def _assert_same(writer: IndexWriter) -> None:
    con = connect_published(snapshot_path(writer.catalog.path), {})
    try:
        for table in (*PUBLISHED_TABLES, "distances", "queue"):
            assert _rows(con, table) == _rows(writer.catalog.con, table), table
    finally:
        con.close()


def _manifest(path) -> dict:
    return json.loads((snapshot_path(path) / "manifest.json").read_text())


@pytest.mark.parametrize("mode", ["exact", "sparse"])
def test_published_equals_the_catalog_after_every_publish(eco, tmp_path, mode):
    with JobLock(tmp_path / "c.duckdb"), _writing(tmp_path / "c.duckdb", eco, mode) as writer:
        for i in range(12):
            _add(writer, eco, [i])
            _assert_same(writer)
            with open_read_only(tmp_path / "c.duckdb") as reader:  # a job holds the file: the snapshot
                assert reader.latest_snapshot() == writer.catalog.latest_snapshot()
                assert reader.latest_snapshot()[1] == writer.index.newick()  # every model, between whole trees too
        writer.catalog.set_status(eco.ids[0], ModelStatus.failed, "re-checked")  # a row changed in place
        writer.publish()
        _assert_same(writer)


def test_a_publish_writes_only_what_changed(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, range(20), publish=False)
        writer.publish()
        first = writer.catalog.last_publish_rows
        before = _manifest(path)["tables"]
        _add(writer, eco, [20])
        after = _manifest(path)["tables"]
        con = writer.catalog.con
        new_alleles = con.execute("select count(*) from alleles a join probes p on p.probe_id = a.probe "
                                  "where p.model_id = ?", [eco.ids[20]]).fetchone()[0]
        # the append-only tables gained one part with exactly the new model's rows
        newest = {t: after[t]["parts"][-1]["rows"] for t in ("alleles", "probes", "distance_pairs", "tree_snapshots")}
        assert newest == {"alleles": new_alleles, "probes": 1, "distance_pairs": 20, "tree_snapshots": 1}
        # the parts of the first publish are still those files: nothing was rewritten
        assert after["alleles"]["parts"][0] == before["alleles"]["parts"][0]
        # models: the new one, and the one stamped at the last watermark (taken again on
        # purpose: a row stamped then but committed later is not missed); not the other 19
        assert after["models"]["parts"][-1]["rows"] <= 2
        # unchanged small tables keep their files
        assert after["genes"]["parts"] == before["genes"]["parts"]
        # far less than the first, whole publish (which wrote every row)
        assert writer.catalog.last_publish_rows < first / 10, (writer.catalog.last_publish_rows, first)


def test_parts_merge_like_a_binary_counter(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, [0])  # the whole base
        n = 31
        _add(writer, eco, range(1, n + 1))
        tables = _manifest(path)["tables"]
        for t in ("alleles", "probes", "tree_snapshots", "models"):
            # the base plus one part per set bit of the number of deltas: 31 = 0b11111
            assert len(tables[t]["parts"]) == 1 + bin(n).count("1"), (t, tables[t]["parts"])
            assert len(tables[t]["parts"]) <= 2 + math.log2(n)
        files = {p.relative_to(snapshot_path(path)).as_posix() for p in snapshot_path(path).rglob("*.parquet")}
        live = {p["file"] for t in tables.values() for p in t["parts"]}
        retired = {r["file"] for r in _manifest(path)["retired"]}
        assert files == live | retired  # nothing else left on disk
        _assert_same(writer)


def test_parts_past_the_merge_cap_stay_as_they_are(eco, tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, [0])
        monkeypatch.setattr(published_mod, "MAX_MERGE_ROWS", 3)  # at most three probes a merged part
        _add(writer, eco, range(1, 9))
        parts = _manifest(path)["tables"]["probes"]["parts"]
        assert [p["rows"] for p in parts] == [1, 2, 2, 2, 2]  # pairs merged, never past three
        _assert_same(writer)


def test_a_table_that_stopped_being_append_only_is_written_whole(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, range(6), publish=False)
        writer.publish()
        con = writer.catalog.con
        # a pair deleted and written again (no writer path does it, a repair could)
        row = con.execute("select * from distance_pairs limit 1").fetchone()
        con.execute("delete from distance_pairs where model_a = ? and model_b = ?", [row[1], row[2]])
        con.execute("insert into distance_pairs values (?, ?, ?, ?, ?)", [*row[:4], row[4] + 1])
        writer.publish()
        parts = _manifest(path)["tables"]["distance_pairs"]["parts"]
        assert len(parts) == 1 and parts[0]["rows"] == 15  # whole again: 6 models, 15 pairs
        _assert_same(writer)
        # a pair written twice is refused, not updated in place (which a publish would not see)
        with pytest.raises(duckdb.ConstraintException):
            writer.catalog.add_distances(row[0], row[1], [row[2]], [0.5], [0.7])


def test_readers_of_an_older_manifest_keep_reading(eco, tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    with JobLock(path):  # a job holds the catalog: readers go to the published folder
        with _writing(path, eco) as writer:
            _add(writer, eco, [0])
            _add(writer, eco, [1])  # one delta part
            old = connect_published(snapshot_path(path), {})
            _add(writer, eco, [2])  # merges the two deltas: the first is retired, not deleted
            assert old.execute("select count(*) from probes").fetchone()[0] == 2  # its own state, still readable
            old.close()
            # past RETIRE_S the retired files go; a reader holding them reopens the newer manifest
            reader = open_read_only(path)
            assert reader.source == snapshot_path(path)
            reader_part = _manifest(path)["tables"]["probes"]["parts"][-1]["file"]
            monkeypatch.setattr(published_mod, "RETIRE_S", 0.0)
            _add(writer, eco, [3])
            _add(writer, eco, [4])  # merges again: retires the part the reader's views name
            assert reader.query("select count(*) from probes")[1] == [(3,)]  # the state it opened
            _add(writer, eco, [5])  # past RETIRE_S: that part is deleted
            assert not (snapshot_path(path) / reader_part).exists()
            assert reader.query("select count(*) from probes")[1] == [(6,)]  # reopened on the newer manifest
            reader.close()


def test_a_publish_killed_before_its_manifest_changes_nothing_readers_see(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, range(3), publish=False)
        writer.publish()
        _add(writer, eco, [3], publish=False)
    # the next publish dies after writing its parts, before the manifest
    code = ("import os, sys\n"
            "from indexer.adapters.catalog import Catalog, published\n"
            "published._write_views_sql = lambda *a: None\n"
            "real = os.replace\n"
            "def replace(src, dst):\n"
            "    if str(dst).endswith('manifest.json'):\n"
            "        os._exit(9)\n"
            "    real(src, dst)\n"
            "published.os.replace = replace\n"
            "Catalog(sys.argv[1]).publish_snapshot()\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 9, out.stderr
    folder = snapshot_path(path)
    con = connect_published(folder, {})
    assert con.execute("select count(*) from probes").fetchone()[0] == 3  # still the last whole publish
    con.close()
    manifest = _manifest(path)
    named = {p["file"] for t in manifest["tables"].values() for p in t["parts"]}
    orphans = {p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")} - named
    assert orphans  # the dead publish's parts
    with _writing(path, eco) as writer:
        writer.publish()
        _assert_same(writer)
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")}
        m = _manifest(path)
        assert files == {p["file"] for t in m["tables"].values() for p in t["parts"]} | {r["file"] for r in m["retired"]}


def test_the_reader_sandbox_holds_on_the_published_folder(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, [0])
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    from indexer.adapters.catalog.reader import _SANDBOX

    con = connect_published(snapshot_path(path), _SANDBOX)
    try:
        assert con.execute("select count(*) from models").fetchone()[0] == 1
        for sql in (f"select * from read_csv('{outside}')", "select * from read_csv('/etc/passwd')",
                    f"attach '{tmp_path / 'x.duckdb'}' as x", "set enable_external_access = true"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    finally:
        con.close()


def test_views_sql_opens_the_folder_in_plain_duckdb(eco, tmp_path):
    path = tmp_path / "c.duckdb"
    with _writing(path, eco) as writer:
        _add(writer, eco, range(4))
        folder = snapshot_path(path)
        cwd = os.getcwd()
        os.chdir(folder)  # the paths in views.sql are relative to the folder
        try:
            con = duckdb.connect()
            con.execute((folder / "views.sql").read_text())
            assert _rows(con, "distances") == _rows(writer.catalog.con, "distances")
            assert _rows(con, "models") == _rows(writer.catalog.con, "models")
            con.close()
        finally:
            os.chdir(cwd)
