"""The writer's side of the catalog: ``Catalog``, the one connection that writes the file.

It opens (creating or upgrading the schema), runs each update in one transaction, appends
through Arrow tables in one statement per batch (never row by row; a few models are upserted
by their key, which is cheaper than a batch's join), and publishes what other
processes read while it holds the file (``<catalog>.published/``, by appends: ``published``).
Everything it can read is in ``queries.CatalogQueries``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from itertools import chain
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from indexer.adapters.catalog.published import MANIFEST, published_dir, publish as publish_by_appends
from indexer.adapters.catalog.queries import CatalogQueries
from indexer.core.genomes import Genome
from indexer.errors import PhylolmError
from schemas.migrations import MIGRATIONS, SCHEMA_VERSION
from schemas.records import Estimate, ModelRecord, ModelStatus, ProbeRecord, Score

ROW_UPSERT_MAX = 16  # up to this many models are upserted one by one (``Catalog.upsert_models``)
# the models columns a one-model upsert sets from the record alone (attempts and
# weight_hashes also depend on the row it replaces: ``Catalog._upsert_model``)
_PLAIN_COLUMNS = ("revision", "created_at", "author", "base_models", "base_model_relation", "license",
                  "pipeline_tag", "size_bytes", "status", "reason", "updated_at", "downloads", "likes",
                  "priority", "copy_of", "gguf_file", "adapter_of")


def snapshot_path(path: Path) -> Path:
    """``<catalog>.published/``: the published catalog that readers query while a job holds
    the file (Parquet parts and their manifest, ``published``)."""
    return published_dir(path)


def catalog_file(path: str | Path) -> Path:
    """The catalog file a caller named. The application resolves it from the settings; the
    adapter never guesses (no working-directory default)."""
    if path is None:
        raise TypeError("a catalog path is required (the application resolves it from its settings)")
    return Path(path)


def _schema_sql() -> str:
    return resources.files("schemas").joinpath("catalog.sql").read_text("utf-8")


def is_lock_error(e: Exception) -> bool:
    """Whether a DuckDB error says another process holds the file."""
    return "lock" in str(e).lower()


class Catalog(CatalogQueries):
    """A writable connection to the catalog file (the single writer).

    ``Catalog(path)`` opens an existing catalog, upgrading an older schema in place;
    ``Catalog(path, create=True)`` also creates a new one. ``con`` is the connection itself,
    for tests that inspect the schema; the application goes through the named methods.
    ``memory_limit`` (DuckDB's, e.g. ``"4GB"``; None: DuckDB's own, 80 % of the RAM) bounds
    the memory of the connection's database; work past it fails, it does not slow down.
    """

    def __init__(self, path: str | Path, *, create: bool = False, wait_s: float = 0.0,
                 memory_limit: str | None = None):
        self.path = catalog_file(path)
        self._depth = 0
        self.last_publish_rows = 0  # rows the last publish_snapshot wrote (its parts and merges)
        self._mean_scores: dict | None = None  # kept between inserts: only import_scores changes them
        self._columns: dict[str, list[str]] = {}  # a table's columns in order (``_append``)
        self._one_thread = False  # see ``one_thread``
        if not create and not self.path.exists():
            raise PhylolmError(f"no catalog at {self.path}; run `phylolm init` first (or pass --catalog)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = self._connect(wait_s)
        except duckdb.IOException as e:
            if is_lock_error(e):
                raise PhylolmError(
                    f"catalog {self.path} is held by another writer (a running watch?); "
                    f"only one process may write it — query the published snapshot with `phylolm sql`"
                ) from None
            raise PhylolmError(f"cannot open catalog {self.path}: {e}") from None
        except duckdb.Error as e:
            raise PhylolmError(f"{self.path} is not a DuckDB catalog ({str(e).splitlines()[0]})") from None
        if memory_limit:
            # SET, not connect(config=...): this process could then open no other connection
            # to the file (a reader's) with another configuration
            try:
                quoted = memory_limit.replace("'", "")  # a value, never SQL: no quote survives
                self.con.execute(f"set memory_limit = '{quoted}'")
            except duckdb.Error as e:
                self.con.close()
                raise PhylolmError(f"catalog memory limit {memory_limit!r}: {str(e).splitlines()[0]}") from None
        self._migrate()

    def _connect(self, wait_s: float) -> duckdb.DuckDBPyConnection:
        # A reader that opened the file just before a job took the job lock holds DuckDB's
        # file lock for the length of its query: the job waits that out rather than dying.
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as e:
                if not is_lock_error(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ---- schema ---------------------------------------------------------------------
    def schema_version(self) -> int | None:
        has_meta = self._first("select count(*) from information_schema.tables where table_name = 'meta'")[0]
        if not has_meta:
            return None
        row = self._first("select value from meta where key = 'schema_version'")
        return int(row[0]) if row else None

    def _migrate(self) -> None:
        version = self.schema_version()
        if version is not None and version > SCHEMA_VERSION:
            self.con.close()
            raise PhylolmError(
                f"catalog {self.path} has schema version {version}, newer than this phylolm "
                f"understands ({SCHEMA_VERSION}); upgrade phylolm-indexer to open it")
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            if version is None:
                # A table-less file is a new catalog; anything else unversioned is not ours.
                n = self._first("select count(*) from information_schema.tables")[0]
                if n:
                    raise PhylolmError(f"{self.path} is a DuckDB file but not a phylolm catalog")
                self.con.execute(_schema_sql())
            else:
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in MIGRATIONS[v]:
                        self.con.execute(stmt)
                self.con.execute(_schema_sql())  # views are re-created, new tables added
            self.con.execute("insert or replace into meta values ('schema_version', ?)", [str(SCHEMA_VERSION)])

    @contextmanager
    def transaction(self) -> Iterator["Catalog"]:
        """One transaction; nested uses join the outermost (an update is all or nothing)."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.con.execute("begin transaction")
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.con.execute("rollback")
            self._mean_scores = None  # what the transaction wrote is gone
            raise
        finally:
            self._depth = 0
        self.con.execute("commit")

    def one_thread(self, on: bool) -> None:
        """Run this connection's statements on one thread (``on``) or on DuckDB's default, all
        cores. An insert's transaction is a dozen statements of a row or a few thousand, and
        they run about 10 % faster on one thread (a second's scheduling costs more than it
        brings: 9.7-10.8 against 11.2-11.6 ms a transaction at 20,000 models, measured side
        by side); publishing, loading and merging read and write whole tables and use every
        core. A SET costs about 0.3 ms, so this switches only when the mode changes: the
        writer sets it before each insert and clears it before each publish or load."""
        if on != self._one_thread:
            self.con.execute("set threads = 1" if on else "reset threads")
            self._one_thread = on

    # ---- meta -------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("insert or replace into meta values (?, ?)", [key, value])

    def raise_meta(self, key: str, value: str) -> None:
        """Set ``key`` to ``value`` if that is greater (as text) than what it holds, or if it
        holds nothing: one conditional UPDATE when the key exists (the common case, half the
        cost of an INSERT OR REPLACE)."""
        changed = self.con.execute("update meta set value = ? where key = ? and value < ?",
                                   [value, key, value]).fetchone()[0]
        if not changed and self.get_meta(key) is None:
            self.set_meta(key, value)

    # ---- models -----------------------------------------------------------------------
    def upsert_models(self, records: Sequence[ModelRecord]) -> None:
        """Insert or update models (metadata and status): a few one by one (the writer's
        one model an insert), more in one batch (a listing's)."""
        if not records:
            return
        now = datetime.now(timezone.utc)
        if len(records) <= ROW_UPSERT_MAX:
            for r in records:
                self._upsert_model(r, now)
            return
        batch = pa.table({
            "id": [r.id for r in records],
            "revision": [r.revision for r in records],
            "created_at": pa.array([r.created_at for r in records], pa.timestamp("us", tz="UTC")),
            "author": [r.author for r in records],
            "base_models": pa.array([list(r.base_models) for r in records], pa.list_(pa.string())),
            "base_model_relation": [r.base_model_relation for r in records],
            "license": [r.license for r in records],
            "pipeline_tag": [r.pipeline_tag for r in records],
            "size_bytes": pa.array([r.size_bytes for r in records], pa.int64()),
            "status": [r.status.value for r in records],
            "reason": [r.reason for r in records],
            "updated_at": pa.array([now] * len(records), pa.timestamp("us", tz="UTC")),
            "downloads": pa.array([r.downloads for r in records], pa.int64()),
            "likes": pa.array([r.likes for r in records], pa.int64()),
            "priority": pa.array([r.priority for r in records], pa.float64()),
            "weight_hashes": pa.array([list(r.weight_hashes) or None for r in records], pa.list_(pa.string())),
            "copy_of": pa.array([r.copy_of for r in records], pa.string()),
            "gguf_file": pa.array([r.gguf_file for r in records], pa.string()),
            "adapter_of": pa.array([r.adapter_of for r in records], pa.string()),
        })
        self.con.register("_models_batch", batch)
        try:
            # A failed probe counts one attempt of that revision; a new revision starts again.
            self.con.execute("""
                insert or replace into models (id, revision, created_at, author, base_models,
                    base_model_relation, license, pipeline_tag, size_bytes, status, reason, attempts,
                    updated_at, downloads, likes, priority, weight_hashes, copy_of, gguf_file, adapter_of)
                select b.id, b.revision, b.created_at, b.author, b.base_models, b.base_model_relation,
                    b.license, b.pipeline_tag, b.size_bytes, b.status, b.reason,
                    coalesce(case when m.revision = b.revision then m.attempts end, 0)
                        + case when b.status = 'failed' then 1 else 0 end,
                    b.updated_at, b.downloads, b.likes, b.priority,
                    -- hashes read once for a revision are kept when a later record lacks them
                    coalesce(b.weight_hashes, case when m.revision = b.revision then m.weight_hashes end),
                    b.copy_of, b.gguf_file, b.adapter_of
                from _models_batch b left join models m on m.id = b.id""")
        finally:
            self.con.unregister("_models_batch")

    def _upsert_model(self, r: ModelRecord, now: datetime) -> None:
        """One model by its key: one UPDATE computing the kept values from the row it
        replaces (SQL's right-hand sides read the old row), and an INSERT when no row was
        there. A third of the time of the batch's INSERT OR REPLACE over a join, which scans
        the models table, and no lookup before it (a listed model's row is there already)."""
        failed = 1 if r.status == ModelStatus.failed else 0
        hashes = list(r.weight_hashes) or None
        values = [r.revision, r.created_at, r.author, list(r.base_models), r.base_model_relation, r.license,
                  r.pipeline_tag, r.size_bytes, r.status.value, r.reason, now, r.downloads, r.likes,
                  r.priority, r.copy_of, r.gguf_file, r.adapter_of]
        # A failed probe counts one attempt of that revision; a new revision starts again;
        # hashes read once for a revision are kept when a later record lacks them.
        changed = self.con.execute(
            f"update models set {', '.join(f'{c} = ?' for c in _PLAIN_COLUMNS)}, "
            "attempts = case when revision = ? then attempts else 0 end + ?, "
            "weight_hashes = coalesce(?::varchar[], case when revision = ? then weight_hashes end) where id = ?",
            [*values, r.revision, failed, hashes, r.revision, r.id]).fetchone()[0]
        if not changed:
            self.con.execute(f"insert into models (id, {', '.join(_PLAIN_COLUMNS)}, attempts, weight_hashes) "
                             f"values ({', '.join('?' * (len(_PLAIN_COLUMNS) + 3))})", [r.id, *values, failed, hashes])

    def set_status(self, model_id: str, status: ModelStatus, reason: str | None = None) -> None:
        self.con.execute("update models set status = ?, reason = ?, updated_at = now() where id = ?",
                         [status.value, reason, model_id])

    # ---- genomes ----------------------------------------------------------------------
    def register_genome(self, genome: Genome) -> None:
        """Record a genome and its genes (idempotent: keyed by content hash)."""
        if self._first("select 1 from genomes where hash = ?", [genome.hash]):
            return
        with self.transaction():
            self.con.execute("insert into genomes (hash, name, n_genes, source, license) values (?, ?, ?, ?, ?)",
                             [genome.hash, genome.name, len(genome), genome.source, genome.license])
            batch = pa.table({"genome_hash": [genome.hash] * len(genome),
                              "gene": pa.array(range(len(genome)), pa.int32()),
                              "text": list(genome.genes)})
            self._append("genes", batch)

    def _append(self, table: str, batch: pa.Table, *, replace: bool = False) -> None:
        """One INSERT of a whole Arrow batch (``replace``: INSERT OR REPLACE on the key).
        ``table`` and the batch's column names are this module's own, never a caller's text."""
        if not replace:
            if table not in self._columns:
                self._columns[table] = list(self.con.table(table).columns)
            if batch.column_names == self._columns[table]:
                # the table's own column order: one call, not register + insert + unregister
                # (0.6 ms less on each of an insert's two batches, measured here)
                self.con.from_arrow(batch).insert_into(table)
                return
        name = f"_batch_{table}"
        verb = "insert or replace" if replace else "insert"
        self.con.register(name, batch)
        try:
            self.con.execute(f"{verb} into {table} ({', '.join(batch.column_names)}) select * from {name}")
        finally:
            self.con.unregister(name)

    # ---- probes and alleles ---------------------------------------------------------
    def add_probe(self, record: ProbeRecord) -> bool:
        """Store a probe and its alleles (one transaction). Returns False, writing nothing,
        when the same probe is already stored: a re-probe is a no-op."""
        if self.has_probe(record.probe_id):  # a point lookup: ON CONFLICT costs 3 times more here
            return False
        p = record.params
        per_gene = record.alleles.counts
        # the columns flattened in C (chain, repeat), not by appends per allele: ~2,200 a probe
        genes = np.repeat(np.arange(len(per_gene), dtype=np.int32), [len(c) for c in per_gene])
        alleles = list(chain.from_iterable(per_gene))
        counts = np.fromiter(chain.from_iterable(c.values() for c in per_gene), np.int32, len(alleles))
        with self.transaction():
            self.con.execute(
                """insert into probes (probe_id, model_id, revision, genome_hash, params_hash, backend,
                       backend_version, n_samples, temperature, top_p, max_tokens, seed, seconds, started_at,
                       gguf_file) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [record.probe_id, record.model_id, record.revision, record.genome_hash, p.digest(),
                 record.backend, record.backend_version, p.n_samples, p.temperature, p.top_p,
                 p.max_tokens, p.seed, record.seconds, record.started_at, record.gguf_file])
            self._append("alleles", pa.table({
                "probe": pa.repeat(pa.scalar(record.probe_id), len(alleles)), "gene": pa.array(genes),
                "allele": pa.array(alleles, pa.string()), "count": pa.array(counts)}))
        return True

    # ---- distances ---------------------------------------------------------------------
    def add_distances(self, genome_hash: str, model_id: str, others: Sequence[str],
                      similarity: np.ndarray, distance: np.ndarray) -> None:
        """Store one new model's row of the matrix (each pair once, as model_a < model_b).
        A plain INSERT: a pair is written once, never updated (publishing appends what was
        inserted since, ``published``), and a pair written twice is an error, not an update."""
        if len(others) == 0:
            return
        a = [min(model_id, o) for o in others]
        b = [max(model_id, o) for o in others]
        self._append("distance_pairs", pa.table({
            "genome_hash": [genome_hash] * len(others), "model_a": a, "model_b": b,
            "similarity": pa.array(np.asarray(similarity, dtype=float)),
            "distance": pa.array(np.asarray(distance, dtype=float))}))

    # ---- trees --------------------------------------------------------------------------
    def add_tree_snapshot(self, genome_hash: str, newick: str, method: str, reason: str,
                          n_leaves: int, inserted_model: str | None = None, stats: dict | None = None) -> int:
        row = self._first(
            """insert into tree_snapshots (genome_hash, method, reason, inserted_model, n_leaves, newick, stats)
               values (?, ?, ?, ?, ?, ?, ?) returning snapshot_id""",
            [genome_hash, method, reason, inserted_model, n_leaves, newick,
             json.dumps(stats) if stats is not None else None])
        return int(row[0])

    def set_current_tree(self, genome_hash: str, newick: str, n_leaves: int) -> int:
        """Replace ``genome_hash``'s ``current_tree`` with ``newick``, as of the newest tree
        snapshot (whose id it returns): one row per genome, so publishing the tree costs
        O(n) each time and nothing that adds up over publishes."""
        (snapshot,) = self._first("select coalesce(max(snapshot_id), 0) from tree_snapshots")
        self.con.execute("insert or replace into current_tree (genome_hash, snapshot_id, n_leaves, newick, updated_at) "
                         "values (?, ?, ?, ?, now())", [genome_hash, snapshot, n_leaves, newick])
        return int(snapshot)

    # ---- scores and estimates ----------------------------------------------------------
    def mean_scores(self) -> dict[tuple[str, str], float]:
        """``CatalogQueries.mean_scores``, read once and kept until scores are imported: the
        writer asks for them on every insert, and this process is the catalog's only writer."""
        if self._mean_scores is None:
            self._mean_scores = super().mean_scores()
        return dict(self._mean_scores)

    def import_scores(self, scores: Sequence[Score]) -> int:
        if not scores:
            return 0
        self._mean_scores = None
        with self.transaction():
            self._append("scores", pa.table({
                "model_id": [s.model_id for s in scores], "benchmark": [s.benchmark for s in scores],
                "value": pa.array([s.value for s in scores], pa.float64()),
                "source": [s.source for s in scores]}), replace=True)
        return len(scores)

    def replace_estimates(self, estimates: Sequence[Estimate]) -> None:
        if not estimates:
            return
        now = datetime.now(timezone.utc)
        self._append("estimates", pa.table({
            "model_id": [e.model_id for e in estimates], "benchmark": [e.benchmark for e in estimates],
            "estimate": pa.array([e.estimate for e in estimates], pa.float64()),
            "low": pa.array([e.low for e in estimates], pa.float64()),
            "high": pa.array([e.high for e in estimates], pa.float64()),
            "method": [e.method for e in estimates],
            "snapshot": pa.array([e.snapshot for e in estimates], pa.int32()),
            "updated_at": pa.array([now] * len(estimates), pa.timestamp("us", tz="UTC"))}), replace=True)

    # ---- polls --------------------------------------------------------------------------
    def record_poll(self, poll_id: str, started_at: datetime, finished_at: datetime, complete: bool,
                    error: str | None, new_models: int = 0, taken: int = 0, queued: int = 0) -> None:
        self.con.execute("insert or replace into polls values (?, ?, ?, ?, ?, ?, ?, ?)",
                         [poll_id, started_at, finished_at, complete, error, new_models, taken, queued])

    # ---- publishing -------------------------------------------------------------------
    def publish_snapshot(self) -> Path:
        """Bring ``<catalog>.published/`` up to the committed catalog, writing only what
        changed since the last publish (``published``); readers switch at once to the new
        state. Returns the folder."""
        folder, self.last_publish_rows = publish_by_appends(self.con, self.path, SCHEMA_VERSION)
        return folder


def refresh_snapshot(path: Path) -> None:
    """Publish if nothing is published yet or the catalog changed after the last publish. A
    job calls this once it holds the job lock, so readers have something to read from the
    job's first moment."""
    manifest = published_dir(path) / MANIFEST
    if not path.exists() or (manifest.exists() and manifest.stat().st_mtime >= path.stat().st_mtime):
        return
    with Catalog(path, wait_s=30.0) as cat:
        cat.publish_snapshot()
