"""The DuckDB catalog: schema, migrations, batched appends, single writer, snapshots, read-only SQL."""
import subprocess
import sys
from datetime import datetime, timezone

import duckdb
import numpy as np
import pytest

from indexer.adapters.catalog import TABLES, Catalog, check_read_only, connect_read_only, run_query, snapshot_path
from indexer.errors import PhylolmError
from indexer.adapters.genome_files import builtin
from schemas.migrations import SCHEMA_VERSION
from schemas.records import AlleleCounts, ModelRecord, ModelStatus, ProbeParams, ProbeRecord, Score, probe_key


def _probe(model="org/a", n=4, genes=3):
    g = builtin("math").subset(genes)
    params = ProbeParams(n_samples=n)
    counts = tuple({"ab": n - 1, "": 1} for _ in range(genes))
    return g, ProbeRecord(
        probe_id=probe_key(model, "main", g.hash, params, "simulated"), model_id=model, revision="main",
        genome_hash=g.hash, backend="simulated", backend_version="test", params=params,
        alleles=AlleleCounts(genome_hash=g.hash, n_samples=n, counts=counts), seconds=0.1,
        started_at=datetime.now(timezone.utc))


def test_init_creates_every_table(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        names = {r[0] for r in cat.con.execute("select table_name from information_schema.tables").fetchall()}
        assert set(TABLES) <= names
        assert cat.schema_version() == SCHEMA_VERSION


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(PhylolmError, match="phylolm init"):
        Catalog(tmp_path / "absent.duckdb")


def test_memory_limit_bounds_the_connection_and_a_bad_one_is_refused(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True, memory_limit="512MB") as cat:
        assert cat.con.execute("select current_setting('memory_limit')").fetchone()[0] == "488.2 MiB"
    with pytest.raises(PhylolmError, match="memory limit 'lots'"):
        Catalog(tmp_path / "c.duckdb", memory_limit="lots")
    with Catalog(tmp_path / "c.duckdb") as cat:  # the file is unharmed
        assert cat.schema_version() == SCHEMA_VERSION


def test_older_catalog_is_upgraded(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    # Version 1 as it was first released: no relation/size on models, no stats on snapshots.
    con.execute("create table meta (key varchar primary key, value varchar not null)")
    con.execute("insert into meta values ('schema_version', '1')")
    con.execute("""create table models (id varchar primary key, revision varchar not null default 'main',
        created_at timestamptz, author varchar, base_models varchar[] not null default [], license varchar,
        pipeline_tag varchar, status varchar not null default 'discovered', reason varchar,
        updated_at timestamptz not null default now())""")
    con.execute("insert into models (id, author) values ('old/model', 'old')")
    con.execute("""create table tree_snapshots (snapshot_id integer primary key, created_at timestamptz,
        genome_hash varchar not null, method varchar not null, reason varchar not null,
        inserted_model varchar, n_leaves integer not null, newick varchar not null)""")
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION
        m = cat.get_model("old/model")
        assert m.author == "old" and m.size_bytes is None and m.base_model_relation is None
        assert cat.con.execute("select attempts from models").fetchall() == [(0,)]
        cols = {r[0] for r in cat.con.execute("describe tree_snapshots").fetchall()}
        assert "stats" in cols


def test_v3_catalog_gains_the_queue_and_polls(tmp_path):
    """v3 -> v4: models gain downloads, likes and priority; the `queue` view and the `polls`
    table appear; existing rows keep their values."""
    path = tmp_path / "v3.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    # Back to version 3 as released: without the v4 columns, view and table.
    con.execute("drop view queue")
    con.execute("drop table polls")
    for col in ("downloads", "likes", "priority"):
        con.execute(f"alter table models drop column {col}")
    con.execute("update meta set value = '3' where key = 'schema_version'")
    con.execute("insert into models (id, author, status, attempts) values ('old/model', 'old', 'failed', 2)")
    con.close()
    from datetime import datetime, timezone

    from schemas.records import ModelRecord, ModelStatus

    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION >= 4
        assert cat.con.execute("select author, status, attempts, priority from models").fetchall() == [
            ("old", "failed", 2, None)]
        when = datetime(2025, 1, 1, tzinfo=timezone.utc)
        cat.upsert_models([ModelRecord(id=f"q/m{i}", created_at=when, status=ModelStatus.queued, downloads=10 * i,
                                       likes=i, priority=float(i)) for i in range(3)])
        assert cat.con.execute("select rank, id from queue order by rank").fetchall() == [
            (1, "q/m2"), (2, "q/m1"), (3, "q/m0")]
        assert cat.get_model("q/m1").downloads == 10
        cat.record_poll("1.0", when, when, False, "listing models: 503")
        assert cat.con.execute("select complete, error from polls").fetchall() == [(False, "listing models: 503")]


def test_v4_catalog_gains_weight_hashes_and_copy_of(tmp_path):
    """v4 -> v5: models gain weight_hashes, copy_of (exact copies) and gguf_file, probes
    gain gguf_file; existing rows keep
    their values, and a later record without hashes keeps the ones read for its revision."""
    from schemas.records import ModelRecord, ModelStatus

    path = tmp_path / "v4.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    for col in ("weight_hashes", "copy_of", "gguf_file", "adapter_of"):
        con.execute(f"alter table models drop column {col}")
    con.execute("alter table probes drop column gguf_file")
    con.execute("update meta set value = '4' where key = 'schema_version'")
    con.execute("insert into models (id, revision, status, likes) values ('old/model', 'r1', 'indexed', 7)")
    con.close()
    sha = "ab" * 32
    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION >= 5
        assert cat.con.execute("select status, likes, weight_hashes, copy_of from models").fetchall() == [
            ("indexed", 7, None, None)]
        cat.upsert_models([ModelRecord(id="new/copy", revision="r2", status=ModelStatus.indexed,
                                       weight_hashes=(sha,), copy_of="old/model")])
        cat.upsert_models([ModelRecord(id="new/copy", revision="r2", status=ModelStatus.indexed, copy_of="old/model")])
        got = cat.get_model("new/copy")
        assert got.weight_hashes == (sha,) and got.copy_of == "old/model"
        assert "gguf_file" in {r[0] for r in cat.con.execute("describe probes").fetchall()}


def test_v5_catalog_gains_adapter_of(tmp_path):
    """v5 -> v6: models gain adapter_of (the base a PEFT adapter was probed on); existing rows
    keep their values and read back with none."""
    from schemas.records import ModelRecord, ModelStatus

    path = tmp_path / "v5.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    con.execute("alter table models drop column adapter_of")
    con.execute("update meta set value = '5' where key = 'schema_version'")
    con.execute("insert into models (id, revision, status, gguf_file) values ('old/model', 'r1', 'indexed', 'm.gguf')")
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION >= 6
        old = cat.get_model("old/model")
        assert (old.status, old.gguf_file, old.adapter_of) == (ModelStatus.indexed, "m.gguf", None)
        cat.upsert_models([ModelRecord(id="new/lora", revision="r2", status=ModelStatus.indexed,
                                       base_models=("old/model",), base_model_relation="adapter",
                                       adapter_of="old/model@r1")])
        assert cat.get_model("new/lora").adapter_of == "old/model@r1"


def test_v6_catalog_gains_placement_records(tmp_path):
    """v6 -> v7: a tree snapshot may carry no Newick (the sparse index's placement records);
    the stored trees stay, and readers of "the latest tree" skip the records."""
    path = tmp_path / "v6.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    con.execute("alter table tree_snapshots alter column newick set not null")
    con.execute("drop table alleles")  # as v6 made it, with its key
    con.execute("create table alleles (probe varchar not null, gene integer not null, allele varchar not null, "
                "count integer not null, primary key (probe, gene, allele))")
    con.execute("insert into alleles values ('p1', 0, 'x', 3), ('p1', 1, 'y', 2)")
    con.execute("update meta set value = '6' where key = 'schema_version'")
    con.execute("insert into tree_snapshots (genome_hash, method, reason, n_leaves, newick) "
                "values ('g', 'incremental', 'insert', 3, '(a,b,c);')")
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION >= 7
        first = cat.latest_tree("g")
        record = cat.add_tree_snapshot("g", None, "incremental", "insert", 4, "d", {"placement": {"sister": ["a"]}})
        assert record > first[0] and cat.latest_tree("g") == first == (first[0], "(a,b,c);")
        assert cat.latest_snapshot()[:2] == first and cat.placements_since_tree("g") == 1
        assert cat.index_layout().mode == "exact"  # a catalog from before the sparse mode
        # the alleles are kept, without the key index
        assert cat.con.execute("select * from alleles order by gene").fetchall() == [("p1", 0, "x", 3), ("p1", 1, "y", 2)]
        assert cat.con.execute("select count(*) from duckdb_constraints() where table_name = 'alleles' "
                               "and constraint_type = 'PRIMARY KEY'").fetchone()[0] == 0


def test_v7_catalog_gains_current_tree_and_the_newest_tree_is_the_newer_of_the_two(tmp_path):
    """v7 -> v8: ``current_tree`` (one row per genome, replaced at each publish of a sparse
    index) is added; the newest tree is the newer, by snapshot id, of it and the newest
    whole tree in tree_snapshots."""
    path = tmp_path / "v7.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    con.execute("drop table current_tree")
    con.execute("update meta set value = '7' where key = 'schema_version'")
    con.execute("insert into tree_snapshots (genome_hash, method, reason, n_leaves, newick) "
                "values ('g', 'incremental', 'insert', 3, '(a,b,c);')")
    con.close()
    with Catalog(path) as cat:
        assert cat.schema_version() == SCHEMA_VERSION >= 8
        whole = cat.latest_tree("g")
        assert cat.latest_snapshot() == (whole[0], "(a,b,c);", "g")
        record = cat.add_tree_snapshot("g", None, "incremental", "insert", 4, "d", {"placement": {"sister": ["a"]}})
        assert cat.set_current_tree("g", "(a,b,(c,d));", 4) == record
        assert cat.latest_tree("g") == (record, "(a,b,(c,d));") == cat.latest_snapshot()[:2]
        assert cat.latest_tree("g", method="nj") is None  # current_tree is the incremental tree
        assert cat.set_current_tree("g", "((a,b),c,d);", 4) == record  # replaced, not added
        assert cat.con.execute("select count(*), any_value(newick) from current_tree").fetchone() == (1, "((a,b),c,d);")
        later = cat.add_tree_snapshot("g", "(a,(b,c),d);", "incremental", "insert", 4)
        assert cat.latest_snapshot()[:2] == (later, "(a,(b,c),d);")


def test_newer_catalog_is_refused(tmp_path):
    path = tmp_path / "future.duckdb"
    Catalog(path, create=True).close()
    con = duckdb.connect(str(path))
    con.execute("update meta set value = '999' where key = 'schema_version'")
    con.close()
    with pytest.raises(PhylolmError, match="newer than this phylolm"):
        Catalog(path)


def test_foreign_duckdb_file_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table sales (x int)")
    con.close()
    with pytest.raises(PhylolmError, match="not a phylolm catalog"):
        Catalog(path)


def test_probe_roundtrip_and_reprobe_is_noop(tmp_path):
    g, rec = _probe()
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        cat.register_genome(g)
        cat.register_genome(g)  # idempotent
        assert cat.add_probe(rec) is True
        assert cat.add_probe(rec) is False
        assert cat.con.execute("select count(*) from alleles").fetchall()[0][0] == 6
        back = cat.load_alleles([rec.probe_id], len(g))[rec.probe_id]
        assert back == rec.alleles
        assert cat.probe_for("org/a", "main", g.hash, rec.params) == rec.probe_id
        assert cat.probe_for("org/a", "main", g.hash, ProbeParams(n_samples=5)) is None


def test_models_distances_and_nearest(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        cat.upsert_models([ModelRecord(id=f"o/m{i}", base_models=("o/m0",) if i else ()) for i in range(3)])
        cat.set_status("o/m1", ModelStatus.skipped, "remote code")
        assert cat.get_model("o/m1").status is ModelStatus.skipped
        assert cat.get_model("o/m2").base_models == ("o/m0",)
        cat.add_distances("h", "o/m2", ["o/m0", "o/m1"], np.array([0.9, 0.5]), -np.log([0.9, 0.5]))
        near = cat.nearest("o/m0", 5)
        assert near[0][0] == "o/m2" and near[0][1] == pytest.approx(-np.log(0.9))
        assert cat.nearest("o/m2", 1)[0][0] == "o/m0"
        with pytest.raises(PhylolmError, match="unknown model"):
            cat.require_model("o/nope")


def test_scores_and_snapshot_ids(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        assert cat.import_scores([Score(model_id="a/b", benchmark="arc", value=0.5, source="x")]) == 1
        s1 = cat.add_tree_snapshot("h", "(a,b);", "incremental", "insert", 2, "b")
        s2 = cat.add_tree_snapshot("h", "(a,b,c);", "incremental", "insert", 3, "c")
        assert s2 > s1 and cat.latest_tree("h") == (s2, "(a,b,c);")


def test_transaction_rolls_back(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        with pytest.raises(RuntimeError):
            with cat.transaction():
                cat.upsert_models([ModelRecord(id="a/b")])
                raise RuntimeError("crash mid-update")
        assert cat.get_model("a/b") is None


@pytest.mark.parametrize("query", [
    "drop table models", "delete from models", "insert into scores values ('a','b',1,'c')",
    "copy models to 'out.csv'", "attach 'x.duckdb' as x", "install httpfs", "load json",
    "select 1; drop table models", "create table t as select 1", "pragma enable_profiling",
    "set enable_external_access = true", "checkpoint",
])
def test_sql_refuses_anything_but_queries(tmp_path, query):
    path = tmp_path / "c.duckdb"
    Catalog(path, create=True).close()
    with pytest.raises(PhylolmError, match="refused|SQL error"):
        run_query(path, query)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.duckdb").exists()
    assert run_query(path, "select count(*) from models")[1] == [(0,)]


def test_read_only_connection_cannot_read_files(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path, create=True).close()
    con, _ = connect_read_only(path)
    check_read_only(con, "select * from read_csv('/etc/passwd')")  # a SELECT: passes the filter
    with pytest.raises(duckdb.Error):  # ...but the connection has no file access
        con.execute("select * from read_csv('/etc/passwd')")


@pytest.mark.integration
def test_other_process_reads_snapshot_while_writer_holds_the_file(tmp_path):
    path = tmp_path / "c.duckdb"
    cat = Catalog(path, create=True)
    cat.upsert_models([ModelRecord(id="a/first")])
    cat.publish_snapshot()
    cat.upsert_models([ModelRecord(id="a/second")])  # not yet published
    code = ("import sys; from indexer.adapters.catalog import run_query; "
            "print(run_query(sys.argv[1], 'select id from models order by id')[1])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('a/first',)]"
    # a second writer is refused clearly
    code2 = "import sys; from indexer.adapters.catalog import Catalog; Catalog(sys.argv[1])"
    out2 = subprocess.run([sys.executable, "-c", code2, str(path)], capture_output=True, text=True, timeout=60)
    assert out2.returncode != 0 and "held by another writer" in out2.stderr
    cat.close()
    assert snapshot_path(path).exists()


def test_readers_go_to_the_snapshot_while_a_job_holds_the_writer_lock(tmp_path):
    from indexer.adapters.catalog import JobLock

    path = tmp_path / "c.duckdb"
    with Catalog(path, create=True) as cat:
        cat.upsert_models([ModelRecord(id="a/first")])
    con, read = connect_read_only(path)
    con.close()
    assert read == path  # no job: the catalog itself, always current
    with JobLock(path):  # taking it publishes the snapshot
        assert snapshot_path(path).exists()
        con, read = connect_read_only(path)
        con.close()
        assert read == snapshot_path(path)
        # so the job's writer never finds the file held by a reader
        with Catalog(path) as cat:
            cat.upsert_models([ModelRecord(id="a/second")])


@pytest.mark.integration
def test_writer_waits_out_a_reader_that_opened_first(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path, create=True).close()
    # another process holds a read-only connection (DuckDB's file lock) for a moment
    code = ("import sys, time, duckdb; con = duckdb.connect(sys.argv[1], read_only=True); "
            "print('open', flush=True); time.sleep(3); con.close()")
    reader = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(PhylolmError, match="held by another writer"):
            Catalog(path)  # no patience: refused at once with the clear message
        with Catalog(path, wait_s=60) as cat:  # the job's writer waits the reader out
            cat.upsert_models([ModelRecord(id="a/after-reader")])
    finally:
        reader.wait(timeout=60)
    assert reader.returncode == 0


def test_failed_attempts_count_per_revision(tmp_path):
    from indexer.adapters.catalog import MAX_ATTEMPTS
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        done = lambda: len(cat.done_revisions())
        for i in range(MAX_ATTEMPTS):
            assert done() == 0
            cat.upsert_models([ModelRecord(id="a/b", revision="r1", status=ModelStatus.failed, reason="boom")])
        assert done() == 1  # failed often enough: not retried
        cat.upsert_models([ModelRecord(id="a/b", revision="r2", status=ModelStatus.failed, reason="boom")])
        assert cat.con.execute("select attempts from models").fetchall() == [(1,)]  # a new revision starts over
        assert done() == 0


def test_a_few_models_upserted_by_key_equal_a_batch(tmp_path):
    """``upsert_models`` takes a few models one by one (the writer's path) and more in one
    batch (a listing's): the same records give the same rows either way, attempts and kept
    weight hashes included."""
    from indexer.adapters.catalog.store import ROW_UPSERT_MAX

    t0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
    steps = [
        [ModelRecord(id=f"o/m{i:02d}", revision="r1", created_at=t0, author="o", base_models=["o/base"],
                     base_model_relation="finetune", size_bytes=10 * i, downloads=i, likes=1, priority=0.5,
                     weight_hashes=["h1", "h2"] if i % 2 else [], status=ModelStatus.discovered)
         for i in range(ROW_UPSERT_MAX + 4)],
        # a failure of the same revision (one attempt; hashes kept though the record lacks them),
        # and a new revision of another (attempts start over, hashes dropped)
        [ModelRecord(id="o/m01", revision="r1", status=ModelStatus.failed, reason="boom"),
         ModelRecord(id="o/m03", revision="r2", status=ModelStatus.failed, reason="boom")],
        [ModelRecord(id="o/m01", revision="r1", status=ModelStatus.failed, reason="again"),
         ModelRecord(id="o/m05", revision="r1", status=ModelStatus.indexed, gguf_file="x.gguf", copy_of="o/m02")],
    ]
    tables = []
    for how in ("rows", "batch"):
        with Catalog(tmp_path / f"{how}.duckdb", create=True) as cat:
            for records in steps:
                if how == "rows":
                    for r in records:
                        cat.upsert_models([r])
                else:  # padded past ROW_UPSERT_MAX with untouched records: one batch statement
                    pad = [ModelRecord(id=f"z/pad{j:02d}", status=ModelStatus.discovered)
                           for j in range(ROW_UPSERT_MAX + 1)]
                    cat.upsert_models(records + pad)
            tables.append(cat.con.execute(
                "select * exclude (updated_at) from models where id not like 'z/%' order by id").fetchall())
    assert tables[0] == tables[1]
    by_id = {r[0]: r for r in tables[0]}
    cols = ["id", "revision", "created_at", "author", "base_models", "base_model_relation", "license",
            "pipeline_tag", "size_bytes", "status", "reason", "attempts"]
    m01, m03 = dict(zip(cols, by_id["o/m01"])), dict(zip(cols, by_id["o/m03"]))
    assert (m01["attempts"], m01["status"], m01["reason"]) == (2, "failed", "again")
    assert (m03["attempts"], m03["revision"]) == (1, "r2")
    assert by_id["o/m01"][-4] == ["h1", "h2"] and by_id["o/m03"][-4] is None  # weight_hashes
