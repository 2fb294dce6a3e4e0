"""The catalog's named read queries, shared by the writer and the read-only view.

``CatalogQueries`` holds every question the application asks of the catalog, each a method
with bound parameters, over one DuckDB connection: the writer's own (``store.Catalog``,
which reads inside its transactions) or a sandboxed read-only one (``reader.CatalogReader``).
No SQL about the catalog is written anywhere else.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from indexer.core.families import cv_groups
from indexer.errors import PhylolmError
from schemas.records import AlleleCounts, ModelRecord, ModelStatus, ProbeParams

MAX_ATTEMPTS = 3  # a revision whose probe failed this often is not retried

# Statuses after which a model revision is not listed again: indexed, skipped by policy, or
# failed MAX_ATTEMPTS times (a failure may be transient: download, engine, Hub). Private to
# the catalog: callers ask ``is_done`` or ``done_revisions``.
_DONE_SQL = f"(status in ('indexed', 'skipped') or (status = 'failed' and attempts >= {MAX_ATTEMPTS}))"

TABLES = ("models", "genomes", "genes", "probes", "alleles", "distances", "tree_snapshots", "current_tree", "scores",
          "estimates")
# The tables whose sizes `phylolm status` shows: a fixed allow-list, the only identifiers that
# are ever put into a query's text.
SIZED_TABLES = ("probes", "alleles", "distance_pairs", "tree_snapshots", "scores", "estimates")

_MODEL_COLUMNS = """id, revision, created_at, author, base_models, base_model_relation, license,
                    pipeline_tag, size_bytes, status, reason, downloads, likes, priority, weight_hashes,
                    copy_of, gguf_file, adapter_of"""
_ESTIMATES_SQL = ("select model_id, benchmark, estimate, low, high, method, snapshot, updated_at "
                  "from estimates order by model_id, benchmark, method")


class IndexLayout(NamedTuple):
    """How a catalog's index is kept: ``mode`` exact (``distances`` holds every pair) or
    sparse (each model's ``k`` nearest, kept as later models enter them), and the probes it
    is built from."""

    mode: str
    k: int | None = None
    params_hash: str | None = None
    backend: str | None = None


class CatalogQueries:
    """Named read queries over ``self.con``; ``self.path`` names the catalog in messages.

    A subclass provides the connection (closed by ``close`` or at the end of a ``with``). ``_execute`` is the one place a query runs, so the
    read-only view can turn DuckDB's errors into one-line ``PhylolmError``s.
    """

    con: duckdb.DuckDBPyConnection
    path: Path
    _has_current_tree: bool | None = None  # whether the schema has it (``_trees_sql``), asked once

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _execute(self, sql: str, args: Sequence = ()) -> duckdb.DuckDBPyConnection:
        return self.con.execute(sql, list(args))

    def _all(self, sql: str, args: Sequence = ()) -> list[tuple]:
        return self._execute(sql, args).fetchall()

    def _first(self, sql: str, args: Sequence = ()) -> tuple | None:
        """The first row, consuming the rest (DuckDB 2 refuses new work on a connection that
        still has an unfinished result)."""
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _dicts(self, sql: str, args: Sequence = ()) -> list[dict]:
        cur = self._execute(sql, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def _arrow(self, sql: str, args: Sequence = ()) -> pa.Table:
        with warnings.catch_warnings():  # DuckDB notes the extra copy of a DB-API result: small tables
            warnings.simplefilter("ignore", UserWarning)
            return self._execute(sql, args).to_arrow_table()

    # ---- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._first("select value from meta where key = ?", [key])
        return row[0] if row else None

    def generation(self) -> tuple:
        """What changes whenever any writer changes what the index or estimates are built from."""
        return tuple(self._first(
            """select (select max(snapshot_id) from tree_snapshots),
                      (select count(*) from models where status = 'indexed'),
                      (select max(probe_id) from probes), (select count(*) from probes)"""))

    # ---- models -------------------------------------------------------------------------
    def get_model(self, model_id: str) -> ModelRecord | None:
        rows = self._model_records("where id = ?", [model_id])
        return rows[0] if rows else None

    def require_model(self, model_id: str) -> ModelRecord:
        m = self.get_model(model_id)
        if m is None:
            raise PhylolmError(f"unknown model {model_id!r}: not in catalog {self.path}")
        return m

    def models(self, status: ModelStatus | None = None) -> list[ModelRecord]:
        """Models (oldest upload first), all or those with one status."""
        if status is None:
            return self._model_records("", [])
        return self._model_records("where status = ?", [status.value])

    def _model_records(self, where: str, args: list) -> list[ModelRecord]:
        # ``where`` is one of the fixed clauses above, never text from a caller.
        out = []
        for d in self._dicts(f"select {_MODEL_COLUMNS} from models {where} order by created_at nulls last, id", args):
            d["base_models"] = tuple(d["base_models"] or ())
            d["weight_hashes"] = tuple(d["weight_hashes"] or ())
            out.append(ModelRecord(**d))
        return out

    def model_rows(self) -> list[dict]:
        """Every model as a plain row (id, author, base_models, created_at, status, copy_of,
        weight_hashes), oldest upload first: what the report, the lineage check and the
        estimators' CV groups are built from."""
        return self._dicts("""select id, author, base_models, created_at, status, copy_of, weight_hashes
                              from models order by created_at nulls last, id""")

    def explorer_models(self) -> list[dict]:
        """Every model's fields the explorer page shows (id, author, base_models,
        base_model_relation, created_at, status, license, downloads, likes), oldest first."""
        return self._dicts("""select id, author, base_models, base_model_relation, created_at, status, license,
                                     downloads, likes from models order by created_at nulls last, id""")

    def models_by_status(self) -> dict[str, int]:
        return dict(self._all("select status, count(*) from models group by status order by status"))

    def indexed_ids(self) -> set[str]:
        return {r[0] for r in self._all("select id from models where status = 'indexed'")}

    def is_done(self, model_id: str, revision: str) -> bool:
        """Whether this revision needs no more work: indexed, skipped, or failed too often."""
        return self._first(f"select 1 from models where id = ? and revision = ? and {_DONE_SQL}",
                           [model_id, revision]) is not None

    def done_revisions(self) -> dict[str, str]:
        """The revision each finished model (see ``is_done``) is done at."""
        return dict(self._all(f"select id, revision from models where {_DONE_SQL}"))

    def retry_attempts(self) -> dict[str, int]:
        """The failed attempts of every model that failed but may be retried."""
        return dict(self._all("select id, attempts from models where status = 'failed' and attempts < ?",
                              [MAX_ATTEMPTS]))

    def deferred_reasons(self) -> dict[str, str | None]:
        return dict(self._all("select id, reason from models where status = 'deferred'"))

    def queued_models(self) -> list[ModelRecord]:
        """The models waiting in the queue, as the listing re-ranks them (their listing fields)."""
        cur = self._execute(
            """select id, revision, created_at, author, base_models, base_model_relation, license,
                      pipeline_tag, size_bytes, downloads, likes, priority, gguf_file from models
               where status = 'queued'""")
        cols = [d[0] for d in cur.description]
        return [ModelRecord(**{**dict(zip(cols, row)), "base_models": tuple(row[4] or ())}) for row in cur.fetchall()]

    def indexed_weight_hashes(self) -> list[tuple[str, str, list[str]]]:
        """(id, revision, weight hashes) of the indexed originals (not copies) whose hashes are
        known, oldest upload first: what a new upload may be an exact copy of."""
        return [tuple(r) for r in self._all(
            """select id, revision, weight_hashes from models where status = 'indexed' and copy_of is null
               and len(weight_hashes) > 0 order by created_at nulls last, id""")]

    # ---- genomes ------------------------------------------------------------------------
    def genomes(self) -> list[tuple[str, str, int, str | None, str | None]]:
        """(hash, name, n_genes, license, source) of the registered genomes, oldest first."""
        return self._all("select hash, name, n_genes, license, source from genomes order by created_at")

    def genome_hashes_with_prefix(self, prefix: str) -> list[str]:
        """The genomes with distances or trees whose hash starts with ``prefix``."""
        return [r[0] for r in self._all(
            "select distinct genome_hash from distance_pairs where starts_with(genome_hash, ?) "
            "union select distinct genome_hash from tree_snapshots where starts_with(genome_hash, ?)",
            [prefix, prefix])]

    def default_genome_hash(self) -> str | None:
        """The latest tree's genome, else the genome with the most distances."""
        row = self._first("select genome_hash from tree_snapshots order by snapshot_id desc limit 1")
        if row is None:
            row = self._first("select genome_hash from distance_pairs group by genome_hash "
                              "order by count(*) desc limit 1")
        return row[0] if row else None

    # ---- probes and alleles -------------------------------------------------------------
    def has_probe(self, probe_id: str) -> bool:
        return self._first("select 1 from probes where probe_id = ?", [probe_id]) is not None

    def probe_for(self, model_id: str, revision: str, genome_hash: str, params: ProbeParams) -> str | None:
        """The id of a stored probe of this model revision with this genome and parameters."""
        row = self._first(
            """select probe_id from probes where model_id = ? and revision = ? and genome_hash = ?
               and params_hash = ? order by started_at desc limit 1""",
            [model_id, revision, genome_hash, params.digest()])
        return row[0] if row else None

    def indexed_probes(self, genome_hash: str, params_hash: str, backend: str,
                       model_id: str | None = None) -> list[tuple[str, str, str]]:
        """(model_id, probe_id, backend_version) of each indexed model's probe of its current
        revision with this genome, parameters and backend (only ``model_id``'s when given),
        in the order the models were indexed."""
        where, args = ("and m.id = ?", [model_id]) if model_id is not None else ("", [])
        return [tuple(r) for r in self._all(
            f"""select m.id, p.probe_id, p.backend_version from models m
                join probes p on p.model_id = m.id and p.revision = m.revision
                where m.status = 'indexed' and p.genome_hash = ? and p.params_hash = ? and p.backend = ? {where}
                order by m.updated_at, m.id""",
            [genome_hash, params_hash, backend, *args])]

    def indexed_alleles(self, genome_hash: str, params_hash: str, backend: str,
                        n_genes: int) -> tuple[list[str], list[AlleleCounts]]:
        """The indexed models and their probes' alleles (``indexed_probes``, ``load_alleles``),
        in the order the models were indexed."""
        rows = self.indexed_probes(genome_hash, params_hash, backend)
        alleles = self.load_alleles([p for _, p, _ in rows], n_genes)
        return [m for m, _, _ in rows], [alleles[p] for _, p, _ in rows]

    def load_alleles(self, probe_ids: Sequence[str], n_genes: int) -> dict[str, AlleleCounts]:
        """Allele counts of the given probes, keyed by probe id (one query)."""
        if not probe_ids:
            return {}
        self.con.register("_want", pa.table({"probe": list(probe_ids)}))
        try:
            rows = self._all(
                """select a.probe, p.genome_hash, p.n_samples, a.gene, a.allele, a.count
                   from alleles a join _want w on a.probe = w.probe join probes p on p.probe_id = a.probe
                   order by a.probe, a.gene""")
        finally:
            self.con.unregister("_want")
        per: dict[str, tuple[str, int, list[dict[str, int]]]] = {}
        for probe, gh, n, gene, allele, count in rows:
            if probe not in per:
                per[probe] = (gh, n, [dict() for _ in range(n_genes)])
            per[probe][2][gene][allele] = count
        return {k: AlleleCounts(genome_hash=gh, n_samples=n, counts=tuple(c)) for k, (gh, n, c) in per.items()}

    def probes_last_day(self) -> tuple[int, object]:
        """(probes started in the last day, the first one's start time or None)."""
        return tuple(self._first("select count(*), min(started_at) from probes "
                                 "where started_at >= now() - interval 1 day"))

    def mean_probe_seconds_last_day(self) -> float | None:
        row = self._first("select avg(seconds) from probes where started_at >= now() - interval 1 day")
        return float(row[0]) if row and row[0] else None

    # ---- distances ----------------------------------------------------------------------
    def nearest(self, model_id: str, k: int, genome_hash: str | None = None) -> list[tuple[str, float, float]]:
        """The k nearest models by distance: (model, distance, similarity)."""
        where, args = ("and genome_hash = ?", [genome_hash]) if genome_hash else ("", [])
        return [tuple(r) for r in self._all(
            f"select model_b, distance, similarity from distances where model_a = ? {where} "
            "order by distance, model_b limit ?", [model_id, *args, k])]

    def nearest_by_model(self, k: int, genome_hash: str | None = None) -> dict[str, list[tuple[str, float]]]:
        """Every model's k nearest: model -> [(other, distance)], nearest first."""
        where, args = ("where genome_hash = ?", [genome_hash]) if genome_hash else ("", [])
        out: dict[str, list[tuple[str, float]]] = {}
        for a, b, d in self._all(
                f"""select model_a, model_b, distance from (
                        select model_a, model_b, distance, row_number() over (partition by model_a
                               order by distance, model_b) as k from distances {where}) where k <= ?""",
                [*args, k]):
            out.setdefault(a, []).append((b, float(d)))
        return out

    def distance_matrix(self, genome_hash: str | None = None) -> tuple[list[str], np.ndarray]:
        """The stored distances as (ids sorted, n x n matrix); pairs never measured are NaN."""
        where, args = ("where genome_hash = ?", [genome_hash]) if genome_hash else ("", [])
        pairs = self._all(f"select model_a, model_b, distance from distance_pairs {where}", args)
        ids = sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs})
        at = {m: i for i, m in enumerate(ids)}
        d = np.full((len(ids), len(ids)), np.nan)
        np.fill_diagonal(d, 0.0)
        for a, b, x in pairs:
            d[at[a], at[b]] = d[at[b], at[a]] = x
        return ids, d

    def complete_matrix(self) -> tuple[int | None, list[str], np.ndarray]:
        """The latest snapshot id and the distance matrix (its genome) of the models whose row
        is complete (a model still being indexed is left out). A sparse index stores each
        model's k nearest only: its matrix is computed from the alleles now (``exact_distances``,
        O(n^2) time and memory)."""
        snapshot, _, genome_hash = self.latest_snapshot()
        if self.index_layout().mode == "sparse" and genome_hash is not None:
            ids, _, d = self.exact_distances(genome_hash)
            return snapshot, ids, d
        ids, d = self.distance_matrix(genome_hash)
        complete = [i for i in range(len(ids)) if not np.isnan(d[i]).any()]
        return snapshot, [ids[i] for i in complete], d[np.ix_(complete, complete)]

    def distances_table(self, genome_hash: str | None = None) -> pa.Table:
        """(model_a, model_b, similarity, distance), both directions, as Arrow."""
        where, args = ("where genome_hash = ?", [genome_hash]) if genome_hash else ("", [])
        return self._arrow(f"select model_a, model_b, similarity, distance from distances {where} "
                           "order by model_a, model_b", args)

    def exact_distances(self, genome_hash: str, of: Sequence[str] | None = None
                        ) -> tuple[list[str], list[str], np.ndarray]:
        """Distances computed now from the stored alleles, not read from ``distance_pairs``:
        (every indexed model's id, sorted; the rows' ids; the rows) for the models ``of``
        (None: all of them, the full matrix). Loading the alleles is O(total alleles), each row
        one sparse product, O(n); the full matrix is O(n^2) time and memory. The models are
        those of the index's probes (``index_layout``: its parameters and backend)."""
        index = self.allele_index(genome_hash)
        if not len(index):
            return [], [], np.zeros((0, 0))
        wanted = index.ids if of is None else list(of)
        missing = [m for m in wanted if m not in index]
        if missing:
            raise PhylolmError(f"{missing[0]!r} is not in the index (not indexed, or a different genome)")
        at = np.array([index.row_of(m) for m in wanted], dtype=np.int64)
        return index.ids, wanted, index.distance_block(at, np.arange(len(index)))

    def allele_index(self, genome_hash: str, of: Sequence[str] | None = None):
        """The stored alleles of the index's models (``of``: only those among them) as an
        ``AlleleIndex``, rows in id order: one query read as Arrow columns and built in bulk
        (``AlleleIndex.from_arrays``), O(their alleles) time and memory."""
        import pyarrow.compute as pc

        from indexer.core.distance import AlleleIndex

        layout = self.index_layout()
        if layout.params_hash is None:
            raise PhylolmError("this catalog does not record which probes its index uses "
                               "(an exact index: its `distances` hold every pair)")
        genome = self._first("select n_genes from genomes where hash = ?", [genome_hash])
        rows = self.indexed_probes(genome_hash, layout.params_hash, layout.backend) if genome else []
        if of is not None:
            wanted = set(of)
            rows = [r for r in rows if r[0] in wanted]
        rows = sorted(rows)
        if not rows:
            return AlleleIndex(n_samples=32, values=False)
        want = pa.table({"model_id": [m for m, _, _ in rows], "probe": [p for _, p, _ in rows]})
        self.con.register("_want", want)
        try:
            samples = {int(n) for (n,) in self._all(
                "select distinct p.n_samples from probes p join _want w on p.probe_id = w.probe")}
            table = self._arrow(
                """select w.model_id, a.gene, a.allele, a.count from alleles a join _want w on a.probe = w.probe
                   order by w.model_id, a.gene""")
        finally:
            self.con.unregister("_want")
        if len(samples) != 1:
            raise PhylolmError(f"the index's probes disagree on their number of samples ({sorted(samples)})")
        lengths = dict(zip(*(c.to_pylist() for c in pc.value_counts(table["model_id"]).flatten())))
        codes = pc.dictionary_encode(table["allele"].combine_chunks())
        return AlleleIndex.from_arrays(
            [m for m, _, _ in rows], np.array([lengths.get(m, 0) for m, _, _ in rows], dtype=np.int64),
            table["gene"].to_numpy(), codes.indices.to_numpy(zero_copy_only=False), codes.dictionary.to_pylist(),
            table["count"].to_numpy(), n_genes=int(genome[0]), n_samples=samples.pop(), values=False)

    def stored_neighbours(self, genome_hash: str) -> dict[str, list[tuple[str, float]]]:
        """Every model's stored pairs (the ``distances`` view, both directions): model ->
        [(other, distance)]. In a sparse index, the neighbour graph: O(n k)."""
        out: dict[str, list[tuple[str, float]]] = {}
        for a, b, d in self._all("select model_a, model_b, distance from distances where genome_hash = ?",
                                 [genome_hash]):
            out.setdefault(a, []).append((b, float(d)))
        return out

    def distance_view(self, alleles=None) -> "DistanceView":
        """The distances between the indexed models of the newest tree's genome, read at the
        cost of what is asked (``distance_view.DistanceView``); ``alleles``: the writer's own
        ``AlleleIndex`` of a sparse index, so that exact rows need not load the alleles."""
        from indexer.adapters.catalog.distance_view import DistanceView

        return DistanceView(self, alleles)

    def nearest_exact(self, model_id: str, k: int, genome_hash: str) -> list[tuple[str, float, float]]:
        """``nearest`` computed from the alleles (``exact_distances``: one full row), not read
        from ``distances``, which in a sparse index holds each model's k nearest as found by
        the candidate search."""
        from indexer.core.distance import nearest_k

        ids, _, d = self.exact_distances(genome_hash, [model_id])
        row = d[0]
        row[ids.index(model_id)] = np.inf
        return [(ids[j], float(row[j]), float(np.exp(-row[j]))) for j in nearest_k(row, k, ids)]

    # ---- the index's layout -------------------------------------------------------------
    def index_layout(self) -> "IndexLayout":
        """How the writer indexes this catalog (the ``index_*`` keys of ``meta``); a catalog
        without them is an exact one, as every catalog was before the sparse mode."""
        meta = dict(self._all("select key, value from meta where starts_with(key, 'index_')"))
        return IndexLayout(mode=meta.get("index_mode", "exact"),
                           k=int(meta["index_k"]) if "index_k" in meta else None,
                           params_hash=meta.get("index_params_hash"), backend=meta.get("index_backend"))

    def placements_since_tree(self, genome_hash: str) -> int:
        """Tree snapshots of ``genome_hash`` after its newest full tree: the placement records
        a sparse index writes between full trees."""
        return int(self._first(
            """select count(*) from tree_snapshots where genome_hash = ? and snapshot_id >
                   coalesce((select max(snapshot_id) from tree_snapshots
                             where genome_hash = ? and newick is not null), 0)""",
            [genome_hash, genome_hash])[0])

    # ---- trees --------------------------------------------------------------------------
    def _trees_sql(self) -> str:
        """Every stored whole tree: the snapshots with a Newick (placement records carry
        none) and the ``current_tree`` rows, which a sparse index's publish replaces (an
        incremental tree as of their ``snapshot_id``). A catalog or published snapshot from
        before ``current_tree`` (schema 8) has only the former."""
        whole = "select snapshot_id, genome_hash, method, newick from tree_snapshots where newick is not null"
        if self._has_current_tree is None:
            self._has_current_tree = bool(self._first(
                "select count(*) from information_schema.tables where table_name = 'current_tree'")[0])
        if not self._has_current_tree:
            return whole
        return f"{whole} union all select snapshot_id, genome_hash, 'incremental', newick from current_tree"

    def latest_tree(self, genome_hash: str | None = None,
                    method: str | None = "incremental") -> tuple[int, str] | None:
        """(snapshot_id, newick) of the newest whole tree made by ``method`` (None: any) for
        ``genome_hash`` (None: any)."""
        clauses, args = [], []
        if method is not None:
            clauses.append("method = ?")
            args.append(method)
        if genome_hash:
            clauses.append("genome_hash = ?")
            args.append(genome_hash)
        where = " and ".join(clauses) or "true"
        row = self._first(f"select snapshot_id, newick from ({self._trees_sql()}) where {where} "
                          "order by snapshot_id desc limit 1", args)
        return (int(row[0]), row[1]) if row else None

    def latest_snapshot(self) -> tuple[int | None, str | None, str | None]:
        """(snapshot_id, newick, genome_hash) of the newest whole tree, or Nones."""
        row = self._first(f"select snapshot_id, newick, genome_hash from ({self._trees_sql()}) "
                          "order by snapshot_id desc limit 1")
        return (int(row[0]), row[1], row[2]) if row else (None, None, None)

    # ---- scores and estimates -----------------------------------------------------------
    def mean_scores(self) -> dict[tuple[str, str], float]:
        """(model, benchmark) -> the mean of its measured scores."""
        return {(m, b): float(v) for m, b, v in self._all(
            "select model_id, benchmark, avg(value) from scores group by model_id, benchmark")}

    def scores(self) -> list[dict]:
        return self._dicts("select model_id, benchmark, value, source from scores order by model_id, benchmark")

    def scores_table(self) -> pa.Table:
        """Every measured score (model_id, benchmark, value, source) as Arrow."""
        return self._arrow("select model_id, benchmark, value, source from scores order by model_id, benchmark, source")

    def cv_groups(self, ids: Sequence[str]) -> dict[str, str]:
        """The estimators' cross-validation group of each of ``ids`` (``core.families.cv_groups``)."""
        return cv_groups(self.model_rows(), ids)

    def estimates(self) -> list[dict]:
        return self._dicts(_ESTIMATES_SQL)

    def estimates_table(self) -> pa.Table:
        return self._arrow(_ESTIMATES_SQL)

    def models_table(self) -> pa.Table:
        """The whole models table as Arrow."""
        return self._arrow("select * from models order by id")

    # ---- status -------------------------------------------------------------------------
    def table_sizes(self) -> dict[str, int]:
        """Rows in each of ``SIZED_TABLES``."""
        return {t: self._first(f"select count(*) from {t}")[0] for t in SIZED_TABLES}  # t: allow-listed

    def last_polls(self) -> tuple[object, tuple[object, str | None] | None]:
        """(finish time of the last complete poll or None, (finish time, error) of the last
        failed poll or None)."""
        done = self._first("select max(finished_at) from polls where complete")[0]
        failed = self._first("select finished_at, error from polls where not complete "
                             "order by finished_at desc limit 1")
        return done, (tuple(failed) if failed else None)

    def poll_outcome(self, poll_id: str) -> tuple[bool, str | None] | None:
        """(complete, error) of one recorded poll, or None when it recorded nothing."""
        row = self._first("select complete, error from polls where poll_id = ?", [poll_id])
        return (row[0], row[1]) if row else None
