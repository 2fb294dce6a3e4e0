"""The reader's side of the catalog: a read-only view any process may open at any time.

``open_read_only(path)`` returns a ``CatalogReader``: the named queries of
``queries.CatalogQueries`` and the guarded ``query(sql)`` behind `phylolm sql`, over a
connection that cannot write, touch files, attach databases or load extensions. While a job
holds the catalog (``locks.is_job_running``) it reads what that job publishes
(``<catalog>.published/``: Parquet parts behind views, file access limited to that folder),
so a reader never holds DuckDB's file lock when the job's writer opens the file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from indexer.adapters.catalog.locks import is_job_running
from indexer.adapters.catalog.queries import CatalogQueries
from indexer.adapters.catalog.published import connect_published, is_published
from indexer.adapters.catalog.store import catalog_file, is_lock_error, snapshot_path
from indexer.errors import PhylolmError

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}
_SANDBOX = {"enable_external_access": False, "lock_configuration": True}


def connect_read_only(path: str | Path) -> tuple[duckdb.DuckDBPyConnection, Path]:
    """The sandboxed connection under every reader, and what it reads: the catalog itself, or
    the published catalog (``snapshot_path``) while a job holds the catalog (or when the
    catalog is locked by a writer)."""
    path = catalog_file(path)
    published = snapshot_path(path)
    candidates = [path, published]
    if is_job_running(path):
        candidates.reverse()
    if not path.exists() and not is_published(published):
        raise PhylolmError(f"no catalog at {path}; run `phylolm init` first (or pass --catalog)")
    last: Exception | None = None
    for p in candidates:
        if p == published:
            if not is_published(p):
                continue
            try:
                return connect_published(p, _SANDBOX), p
            except (OSError, duckdb.Error) as e:
                raise PhylolmError(f"cannot read the published catalog {p}: {str(e).splitlines()[0]}") from None
        if not p.exists():
            continue
        try:
            return duckdb.connect(str(p), read_only=True, config=_SANDBOX), p
        except duckdb.Error as e:
            last = e
            if not is_lock_error(e):
                raise PhylolmError(f"cannot read {p}: {str(e).splitlines()[0]}") from None
    raise PhylolmError(f"catalog {path} is being written and has nothing published yet ({last})")


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


class CatalogReader(CatalogQueries):
    """A read-only view of the catalog (see the module). ``path`` is the catalog asked for,
    ``source`` what is actually read (the catalog, or the published folder). Close it, or use it
    as a context manager: on the catalog itself it holds DuckDB's file lock while open."""

    def __init__(self, path: str | Path):
        self.path = catalog_file(path)
        self.con, self.source = connect_read_only(self.path)

    def _execute(self, sql: str, args: Sequence = (), retry: bool = True) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, list(args))
        except duckdb.Error as e:  # e.g. a table an older catalog lacks: one line, no traceback
            if retry and isinstance(e, duckdb.IOException) and self.source == snapshot_path(self.path):
                # a publish retired a part these views name: the newer manifest has its rows
                self.con.close()
                self.con, self.source = connect_read_only(self.path)
                return self._execute(sql, args, retry=False)
            raise PhylolmError(f"SQL error: {' '.join(str(e).split())[:300]}") from None

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run a user's SELECT or EXPLAIN (anything else is refused before it runs):
        (column names, rows)."""
        check_read_only(self.con, sql)
        cur = self._execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()


def open_read_only(path: str | Path) -> CatalogReader:
    """A read-only view of the catalog at ``path`` (or of its published snapshot)."""
    return CatalogReader(path)


def run_query(path: str | Path, query: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only query against the catalog (or its published snapshot): `phylolm sql`."""
    with open_read_only(path) as reader:
        return reader.query(query)
