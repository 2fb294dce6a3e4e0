"""The catalog: one DuckDB file holding models, probes, alleles, distances, trees, scores.

An adapter (the domain core never sees it), and the one gateway to that file: every query
and write is a method here, with bound parameters.

* ``store.Catalog`` -- the single writer: schema and migrations, one transaction per update,
  Arrow batch appends, publishing (``<catalog>.published/``).
* ``reader.CatalogReader`` (``open_read_only``) -- the read-only view any process may open:
  the named queries, and the guarded ``query`` behind `phylolm sql` (``run_query``).
* ``published`` -- the published catalog readers query while a job writes: Parquet parts
  appended per publish behind views, a manifest as the switch.
* ``queries.CatalogQueries`` -- the named read queries both of them have.
* ``locks`` -- ``JobLock`` (one job per catalog), ``is_job_running``, ``writer_turn`` (one
  writing bundle at a time): what each lock guards is said there.

Callers pass the catalog's path; resolving it from the settings is the application's job.
"""
from indexer.adapters.catalog.locks import JobLock, is_job_running, writer_turn
from indexer.adapters.catalog.published import connect_published, is_published
from indexer.adapters.catalog.queries import MAX_ATTEMPTS, TABLES, CatalogQueries
from indexer.adapters.catalog.reader import (CatalogReader, check_read_only, connect_read_only, open_read_only,
                                             run_query)
from indexer.adapters.catalog.store import Catalog, snapshot_path

__all__ = [
    "Catalog", "CatalogQueries", "CatalogReader", "JobLock", "MAX_ATTEMPTS", "TABLES", "check_read_only",
    "connect_published", "connect_read_only", "is_job_running", "is_published", "open_read_only", "run_query",
    "snapshot_path", "writer_turn",
]
