"""The catalog: one DuckDB file holding models, probes, alleles, distances, trees, scores.

An adapter (the domain core never sees it). One process writes; DuckDB locks the file for
it, so other processes read the read-only snapshot the writer publishes after each update
(``<catalog>.snapshot.duckdb``, replaced atomically). Appends go through Arrow tables in one
statement per batch, never row by row. Every update of one model is one transaction.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from indexer.errors import PhylolmError
from indexer.core.genomes import Genome
from schemas.migrations import MIGRATIONS, SCHEMA_VERSION
from schemas.records import AlleleCounts, Estimate, ModelRecord, ModelStatus, ProbeParams, ProbeRecord, Score

MAX_ATTEMPTS = 3  # a revision whose probe failed this often is not retried

# Statuses after which a model revision is not listed again: indexed, skipped by policy, or
# failed MAX_ATTEMPTS times (a failure may be transient: download, engine, Hub).
DONE_SQL = f"(status in ('indexed', 'skipped') or (status = 'failed' and attempts >= {MAX_ATTEMPTS}))"

TABLES = ("models", "genomes", "genes", "probes", "alleles", "distances", "tree_snapshots", "scores", "estimates")
READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def resolve_path(path: str | Path | None) -> Path:
    """The catalog file: the given path, else the settings' (config file, PHYLOLM_CATALOG,
    ``./phylolm.duckdb``)."""
    if path is not None:
        return Path(path)
    from indexer.app.settings import load_settings

    return load_settings()[0].catalog


def snapshot_path(path: Path) -> Path:
    return path.with_name(path.name + ".snapshot.duckdb")


def writer_lock_path(path: Path) -> Path:
    """``<catalog>.lock``: flocked by the one job (watch, backfill, probe) writing the catalog."""
    return path.with_name(path.name + ".lock")


def is_write_locked(path: Path) -> bool:
    """Whether a job holds the catalog's writer lock (in any process, this one included:
    flock conflicts between open file descriptions, not processes)."""
    lock = writer_lock_path(path)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


def _schema_sql() -> str:
    return resources.files("schemas").joinpath("catalog.sql").read_text("utf-8")


def _is_lock_error(e: Exception) -> bool:
    return "lock" in str(e).lower()


class Catalog:
    """A writable connection to the catalog file (the single writer).

    ``Catalog(path)`` opens an existing catalog, upgrading an older schema in place;
    ``Catalog(path, create=True)`` also creates a new one.
    """

    def __init__(self, path: str | Path | None = None, *, create: bool = False, wait_s: float = 0.0):
        self.path = resolve_path(path)
        self._depth = 0
        if not create and not self.path.exists():
            raise PhylolmError(f"no catalog at {self.path}; run `phylolm init` first (or pass --catalog)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = self._connect(wait_s)
        except duckdb.IOException as e:
            if _is_lock_error(e):
                raise PhylolmError(
                    f"catalog {self.path} is held by another writer (a running watch?); "
                    f"only one process may write it — query the published snapshot with `phylolm sql`"
                ) from None
            raise PhylolmError(f"cannot open catalog {self.path}: {e}") from None
        except duckdb.Error as e:
            raise PhylolmError(f"{self.path} is not a DuckDB catalog ({str(e).splitlines()[0]})") from None
        self._migrate()

    def _connect(self, wait_s: float) -> duckdb.DuckDBPyConnection:
        # A reader that opened the file just before a job took the writer lock holds DuckDB's
        # file lock for the length of its query: the job waits that out rather than dying.
        deadline = time.monotonic() + wait_s
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as e:
                if not _is_lock_error(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ---- schema ---------------------------------------------------------------------
    def schema_version(self) -> int | None:
        has_meta = self.con.execute(
            "select count(*) from information_schema.tables where table_name = 'meta'").fetchall()[0][0]
        if not has_meta:
            return None
        row = _first(self.con.execute("select value from meta where key = 'schema_version'"))
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
                n = self.con.execute("select count(*) from information_schema.tables").fetchall()[0][0]
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
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction; nested uses join the outermost (an update is all or nothing)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.con
            finally:
                self._depth -= 1
            return
        self.con.execute("begin transaction")
        self._depth = 1
        try:
            yield self.con
        except BaseException:
            self.con.execute("rollback")
            raise
        finally:
            self._depth = 0
        self.con.execute("commit")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- meta -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = _first(self.con.execute("select value from meta where key = ?", [key]))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("insert or replace into meta values (?, ?)", [key, value])

    # ---- models -----------------------------------------------------------------------
    def upsert_models(self, records: Sequence[ModelRecord]) -> None:
        """Insert or update models (metadata and status), in one batch."""
        if not records:
            return
        now = datetime.now(timezone.utc)
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
        })
        self.con.register("_models_batch", batch)
        try:
            # A failed probe counts one attempt of that revision; a new revision starts again.
            self.con.execute("""
                insert or replace into models (id, revision, created_at, author, base_models,
                    base_model_relation, license, pipeline_tag, size_bytes, status, reason, attempts,
                    updated_at, downloads, likes, priority, weight_hashes, copy_of, gguf_file)
                select b.id, b.revision, b.created_at, b.author, b.base_models, b.base_model_relation,
                    b.license, b.pipeline_tag, b.size_bytes, b.status, b.reason,
                    coalesce(case when m.revision = b.revision then m.attempts end, 0)
                        + case when b.status = 'failed' then 1 else 0 end,
                    b.updated_at, b.downloads, b.likes, b.priority,
                    -- hashes read once for a revision are kept when a later record lacks them
                    coalesce(b.weight_hashes, case when m.revision = b.revision then m.weight_hashes end),
                    b.copy_of, b.gguf_file
                from _models_batch b left join models m on m.id = b.id""")
        finally:
            self.con.unregister("_models_batch")

    def set_status(self, model_id: str, status: ModelStatus, reason: str | None = None) -> None:
        self.con.execute("update models set status = ?, reason = ?, updated_at = now() where id = ?",
                         [status.value, reason, model_id])

    def get_model(self, model_id: str) -> ModelRecord | None:
        rows = self._model_rows("where id = ?", [model_id])
        return rows[0] if rows else None

    def require_model(self, model_id: str) -> ModelRecord:
        m = self.get_model(model_id)
        if m is None:
            raise PhylolmError(f"unknown model {model_id!r}: not in catalog {self.path}")
        return m

    def models(self, status: ModelStatus | None = None) -> list[ModelRecord]:
        if status is None:
            return self._model_rows("", [])
        return self._model_rows("where status = ?", [status.value])

    def _model_rows(self, where: str, args: list) -> list[ModelRecord]:
        cur = self.con.execute(
            f"""select id, revision, created_at, author, base_models, base_model_relation, license,
                       pipeline_tag, size_bytes, status, reason, downloads, likes, priority, weight_hashes,
                       copy_of, gguf_file from models {where}
                order by created_at nulls last, id""", args)
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(cols, row))
            d["base_models"] = tuple(d["base_models"] or ())
            d["weight_hashes"] = tuple(d["weight_hashes"] or ())
            out.append(ModelRecord(**d))
        return out

    # ---- genomes ----------------------------------------------------------------------
    def register_genome(self, genome: Genome) -> None:
        """Record a genome and its genes (idempotent: keyed by content hash)."""
        if _first(self.con.execute("select 1 from genomes where hash = ?", [genome.hash])):
            return
        with self.transaction():
            self.con.execute("insert into genomes (hash, name, n_genes, source, license) values (?, ?, ?, ?, ?)",
                             [genome.hash, genome.name, len(genome), genome.source, genome.license])
            batch = pa.table({"genome_hash": [genome.hash] * len(genome),
                              "gene": pa.array(range(len(genome)), pa.int32()),
                              "text": list(genome.genes)})
            self._append("genes", batch)

    def _append(self, table: str, batch: pa.Table, *, replace: bool = False) -> None:
        """One INSERT of a whole Arrow batch (``replace``: INSERT OR REPLACE on the key)."""
        name = f"_batch_{table}"
        verb = "insert or replace" if replace else "insert"
        self.con.register(name, batch)
        try:
            self.con.execute(f"{verb} into {table} ({', '.join(batch.column_names)}) select * from {name}")
        finally:
            self.con.unregister(name)

    # ---- probes and alleles ---------------------------------------------------------
    def has_probe(self, probe_id: str) -> bool:
        return _first(self.con.execute("select 1 from probes where probe_id = ?", [probe_id])) is not None

    def add_probe(self, record: ProbeRecord) -> bool:
        """Store a probe and its alleles (one transaction). Returns False, writing nothing,
        when the same probe is already stored: a re-probe is a no-op."""
        if self.has_probe(record.probe_id):
            return False
        p = record.params
        genes, alleles, counts = [], [], []
        for g, per_gene in enumerate(record.alleles.counts):
            for a, c in per_gene.items():
                genes.append(g)
                alleles.append(a)
                counts.append(c)
        with self.transaction():
            self.con.execute(
                """insert into probes (probe_id, model_id, revision, genome_hash, params_hash, backend,
                       backend_version, n_samples, temperature, top_p, max_tokens, seed, seconds, started_at,
                       gguf_file) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [record.probe_id, record.model_id, record.revision, record.genome_hash, p.digest(),
                 record.backend, record.backend_version, p.n_samples, p.temperature, p.top_p,
                 p.max_tokens, p.seed, record.seconds, record.started_at, record.gguf_file])
            self._append("alleles", pa.table({
                "probe": [record.probe_id] * len(genes), "gene": pa.array(genes, pa.int32()),
                "allele": alleles, "count": pa.array(counts, pa.int32())}))
        return True

    def probe_for(self, model_id: str, revision: str, genome_hash: str, params: ProbeParams) -> str | None:
        """The id of a stored probe of this model revision with this genome and parameters."""
        row = _first(self.con.execute(
            """select probe_id from probes where model_id = ? and revision = ? and genome_hash = ?
               and params_hash = ? order by started_at desc limit 1""",
            [model_id, revision, genome_hash, params.digest()]))
        return row[0] if row else None

    def load_alleles(self, probe_ids: Sequence[str], n_genes: int) -> dict[str, AlleleCounts]:
        """Allele counts of the given probes, keyed by probe id (one query)."""
        if not probe_ids:
            return {}
        self.con.register("_want", pa.table({"probe": list(probe_ids)}))
        try:
            rows = self.con.execute(
                """select a.probe, p.genome_hash, p.n_samples, a.gene, a.allele, a.count
                   from alleles a join _want w on a.probe = w.probe join probes p on p.probe_id = a.probe
                   order by a.probe, a.gene""").fetchall()
        finally:
            self.con.unregister("_want")
        per: dict[str, tuple[str, int, list[dict[str, int]]]] = {}
        for probe, gh, n, gene, allele, count in rows:
            if probe not in per:
                per[probe] = (gh, n, [dict() for _ in range(n_genes)])
            per[probe][2][gene][allele] = count
        return {k: AlleleCounts(genome_hash=gh, n_samples=n, counts=tuple(c)) for k, (gh, n, c) in per.items()}

    # ---- distances ---------------------------------------------------------------------
    def add_distances(self, genome_hash: str, model_id: str, others: Sequence[str],
                      similarity: np.ndarray, distance: np.ndarray) -> None:
        """Store one new model's row of the matrix (each pair once, as model_a < model_b)."""
        if len(others) == 0:
            return
        a = [min(model_id, o) for o in others]
        b = [max(model_id, o) for o in others]
        self._append("distance_pairs", pa.table({
            "genome_hash": [genome_hash] * len(others), "model_a": a, "model_b": b,
            "similarity": pa.array(np.asarray(similarity, dtype=float)),
            "distance": pa.array(np.asarray(distance, dtype=float))}), replace=True)

    def nearest(self, model_id: str, k: int, genome_hash: str | None = None) -> list[tuple[str, float, float]]:
        """The k nearest models by distance: (model, distance, similarity)."""
        q = "select model_b, distance, similarity from distances where model_a = ?"
        args: list = [model_id]
        if genome_hash:
            q += " and genome_hash = ?"
            args.append(genome_hash)
        return [tuple(r) for r in self.con.execute(q + " order by distance, model_b limit ?", args + [k]).fetchall()]

    # ---- trees --------------------------------------------------------------------------
    def add_tree_snapshot(self, genome_hash: str, newick: str, method: str, reason: str,
                          n_leaves: int, inserted_model: str | None = None, stats: dict | None = None) -> int:
        row = _first(self.con.execute(
            """insert into tree_snapshots (genome_hash, method, reason, inserted_model, n_leaves, newick, stats)
               values (?, ?, ?, ?, ?, ?, ?) returning snapshot_id""",
            [genome_hash, method, reason, inserted_model, n_leaves, newick,
             json.dumps(stats) if stats is not None else None]))
        return int(row[0])

    def latest_tree(self, genome_hash: str | None = None, method: str = "incremental") -> tuple[int, str] | None:
        q = "select snapshot_id, newick from tree_snapshots where method = ?"
        args: list = [method]
        if genome_hash:
            q += " and genome_hash = ?"
            args.append(genome_hash)
        row = _first(self.con.execute(q + " order by snapshot_id desc limit 1", args))
        return (int(row[0]), row[1]) if row else None

    # ---- scores and estimates ----------------------------------------------------------
    def import_scores(self, scores: Sequence[Score]) -> int:
        if not scores:
            return 0
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

    # ---- publishing -------------------------------------------------------------------
    def publish_snapshot(self) -> Path:
        """Copy the committed catalog to ``<catalog>.snapshot.duckdb`` (atomic replace), the
        file that other processes query while this one holds the write lock."""
        target = snapshot_path(self.path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        db = self.con.execute("select current_database()").fetchall()[0][0]
        self.con.execute(f"attach '{_sql_str(tmp)}' as _snap")
        try:
            self.con.execute(f"copy from database {_ident(db)} to _snap")
        finally:
            self.con.execute("detach _snap")
        os.replace(tmp, target)
        return target

    def record_poll(self, poll_id: str, started_at: datetime, finished_at: datetime, complete: bool,
                    error: str | None, new_models: int = 0, taken: int = 0, queued: int = 0) -> None:
        self.con.execute("insert or replace into polls values (?, ?, ?, ?, ?, ?, ?, ?)",
                         [poll_id, started_at, finished_at, complete, error, new_models, taken, queued])

    def status_counts(self) -> dict:
        by_status = dict(self.con.execute("select status, count(*) from models group by status").fetchall())
        counts = {t: self.con.execute(f"select count(*) from {t}").fetchall()[0][0]
                  for t in ("probes", "alleles", "distance_pairs", "tree_snapshots", "scores", "estimates")}
        return {"models": by_status, **counts}


def _first(cur: duckdb.DuckDBPyConnection) -> tuple | None:
    """The first row of a result, consuming the rest (DuckDB 2 refuses new work on a
    connection that still has an unfinished result)."""
    rows = cur.fetchall()
    return rows[0] if rows else None


def _sql_str(p: Path | str) -> str:
    return str(p).replace("'", "''")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---- read-only access from any process ---------------------------------------------------

def open_read_only(path: str | Path | None) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """A read-only connection that cannot touch files, attach databases or load extensions.

    Opens the catalog itself, or — while a job holds its writer lock — the snapshot that job
    publishes, so a reader never holds DuckDB's file lock when the job opens the file.
    Returns the connection and the file it reads.
    """
    path = resolve_path(path)
    config = {"enable_external_access": False, "lock_configuration": True}
    candidates = [path, snapshot_path(path)]
    if is_write_locked(path):
        candidates.reverse()
    if not path.exists() and not snapshot_path(path).exists():
        raise PhylolmError(f"no catalog at {path}; run `phylolm init` first (or pass --catalog)")
    last: Exception | None = None
    for p in candidates:
        if not p.exists():
            continue
        try:
            return duckdb.connect(str(p), read_only=True, config=config), p
        except duckdb.Error as e:
            last = e
            if not _is_lock_error(e):
                raise PhylolmError(f"cannot read {p}: {str(e).splitlines()[0]}") from None
    raise PhylolmError(f"catalog {path} is being written and has no published snapshot yet ({last})")


def refresh_snapshot(path: Path) -> None:
    """Publish the snapshot if it is missing or older than the catalog. A job calls this once it
    holds the writer lock, so readers have a snapshot to go to from the job's first moment."""
    snap = snapshot_path(path)
    if not path.exists() or (snap.exists() and snap.stat().st_mtime >= path.stat().st_mtime):
        return
    with Catalog(path, wait_s=30.0) as cat:
        cat.publish_snapshot()


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but SELECT/EXPLAIN, before it runs."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise PhylolmError(f"SQL error: {str(e).splitlines()[0]}") from None
    if not statements:
        raise PhylolmError("empty query")
    for st in statements:
        kind = st.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise PhylolmError(
                f"refused: `phylolm sql` is read-only and this is a {kind} statement "
                f"(only SELECT and EXPLAIN queries run)")


def run_query(path: str | Path | None, query: str) -> tuple[list[str], list[tuple]]:
    """Run a read-only query against the catalog (or its published snapshot)."""
    con, _ = open_read_only(path)
    try:
        check_read_only(con, query)
        try:
            cur = con.execute(query)
        except duckdb.Error as e:
            raise PhylolmError(f"SQL error: {' '.join(str(e).split())[:300]}") from None
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()

