"""The published catalog: what readers query while a job holds the file, kept up by appends.

``<catalog>.published/`` holds the committed catalog as Parquet parts and ``manifest.json``,
which lists them. Replacing the manifest (``os.replace``) is the one switch readers see, so a
reader sees one publish or the next, never half of one. A publish writes only what changed
since the one before:

* ``probes``, ``alleles``, ``distance_pairs``, ``tree_snapshots`` only grow (the writer only
  INSERTs into them, never UPDATEs): the rows past the last published rowid. The row counts
  check it; a table that does not add up (rows deleted and written again, a migration that
  rewrote it) is written whole again. An UPDATE in place would not be seen: none is made.
* ``models`` and ``estimates`` change rows in place, each stamped ``updated_at``: the rows
  updated since; a reader sees the newest version of each key.
* The small tables (``meta``, ``genomes``, ``genes``, ``polls``, ``scores``) and
  ``current_tree`` (one Newick per genome, replaced at each publish): whole, and only when
  their content hash changed.

Parts merge like a binary counter: two parts of one level become one of the next (up to
``MAX_MERGE_ROWS``), so a table keeps few parts and a row is rewritten a bounded number of
times; a publish costs O(rows changed) amortised, where a copy of the database cost
O(catalog). Files a merge retired stay ``RETIRE_S`` seconds for readers that opened the
manifest before (a reader whose file went away reopens the newer one). ``views.sql``
defines the same tables for a plain DuckDB session started in the folder
(``duckdb -init views.sql``).
"""
from __future__ import annotations

import functools
import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

FORMAT = 1
MANIFEST = "manifest.json"
RETIRE_S = 600.0
# Parts this large are not merged further: a row is rewritten at most about
# log2(MAX_MERGE_ROWS / rows a publish adds) times, and a table of R rows keeps about
# R / MAX_MERGE_ROWS parts plus O(log) small ones.
MAX_MERGE_ROWS = 4_000_000
# table -> the key whose newest version a reader sees ("latest" tables), or the kind
APPEND_TABLES = ("probes", "alleles", "distance_pairs", "tree_snapshots")
LATEST_TABLES = {"models": ("id",), "estimates": ("model_id", "benchmark", "method")}
WHOLE_TABLES = ("meta", "genomes", "genes", "polls", "scores", "current_tree")
PUBLISHED_TABLES = (*WHOLE_TABLES, *APPEND_TABLES, *LATEST_TABLES)


def published_dir(catalog: Path) -> Path:
    """``<catalog>.published/``: the folder readers query while a job holds the catalog."""
    return catalog.with_name(catalog.name + ".published")


def is_published(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _file_list(paths) -> str:
    """A SQL list literal of file paths, for ``read_parquet``."""
    return "[" + ", ".join(_quote(p) for p in paths) + "]"


def _load_manifest(folder: Path) -> dict | None:
    try:
        m = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


# ---------------------------------------------------------------------------------------
# the writer's side
# ---------------------------------------------------------------------------------------
class _Publish:
    """One publish: the writer's connection, the folder, the manifest before and after."""

    def __init__(self, con: duckdb.DuckDBPyConnection, folder: Path, schema_version: int):
        self.con, self.folder = con, folder
        old = _load_manifest(folder)
        if old is not None and old.get("schema_version") != schema_version:
            old = None  # another schema: every table whole
        self.old = old or {"tables": {}, "retired": [], "generation": 0}
        self.gen = int(self.old.get("generation", 0)) + 1
        self.schema_version = schema_version
        self.written = 0  # rows written into new parts, merges included

    def columns(self) -> dict[str, list[list[str]]]:
        """table -> [[column, type], ...] of every published table, in the catalog's order."""
        out: dict[str, list[list[str]]] = {}
        for table, c, t in self.con.execute(
                "select table_name, column_name, data_type from information_schema.columns "
                "where table_schema = 'main' order by table_name, ordinal_position").fetchall():
            out.setdefault(table, []).append([c, t])
        return out

    def _copy(self, select: str, args: list, name: str) -> int:
        """COPY ``select`` to the part ``name`` (a temporary file, then ``os.replace``)."""
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        (n,) = self.con.execute(f"copy ({select}) to {_quote(str(tmp))} (format parquet, compression zstd)",
                                args).fetchone()
        os.replace(tmp, target)
        self.written += int(n)
        return int(n)

    def _part_name(self, table: str, level: int) -> str:
        return f"parts/{table}/g{self.gen:08d}-l{level:02d}.parquet"

    def table(self, table: str, cols: list[list[str]]) -> dict:
        prev = self.old["tables"].get(table)
        col_sql = ", ".join(_ident(c) for c, _ in cols)
        if prev is not None and prev.get("columns") != cols:
            prev = None  # a column was added: rewrite whole
        t = _ident(table)  # the table names are this module's own
        if table in WHOLE_TABLES:
            n, fp = self.con.execute(f"select count(*), coalesce(bit_xor(hash(x)), 0) from {t} x").fetchone()
            fingerprint = f"{n}:{fp}"
            if prev is not None and prev.get("fingerprint") == fingerprint:
                return prev
            return self._whole(table, cols, fingerprint=fingerprint)
        if table in APPEND_TABLES:
            (n_now,) = self.con.execute(f"select count(*) from {t}").fetchone()
            if prev is not None:  # rowid filters skip whole row groups: this reads only the new rows
                new, max_rowid = self.con.execute(f"select count(*), max(rowid) from {t} where rowid > ?",
                                                  [prev["max_rowid"]]).fetchone()
                if prev["rows"] + new != n_now:
                    prev = None  # not append-only since: whole again
            if prev is None:
                (max_rowid,) = self.con.execute(f"select coalesce(max(rowid), -1) from {t}").fetchone()
                return self._whole(table, cols, max_rowid=max_rowid)
            if not new:
                return prev
            return self._delta(table, cols, prev, f"select {col_sql} from {t} where rowid > ?", [prev["max_rowid"]],
                               rows=n_now, max_rowid=max_rowid)
        # a "latest" table: rows changed since the watermark, the newest version of a key wins
        n_now, mark = self.con.execute(f"select count(*), max(updated_at) from {t}").fetchone()
        mark = mark.isoformat() if mark is not None else None
        if prev is not None and (n_now < prev["rows"] or prev.get("watermark") is None):
            prev = None
        if prev is None:
            return self._whole(table, cols, watermark=mark)
        if mark == prev["watermark"] and n_now == prev["rows"]:
            return prev
        # >=: a row stamped at the previous watermark but committed after it is not missed
        # (the duplicates it brings are resolved by the newest-wins view)
        return self._delta(table, cols, prev, f"select {col_sql} from {t} where updated_at >= ?::timestamptz",
                           [prev["watermark"]], rows=n_now, watermark=mark)

    def _whole(self, table: str, cols, **extra) -> dict:
        """``table`` written whole as one part of the top level (never merged)."""
        name = self._part_name(table, 30)
        rows = self._copy(f"select {', '.join(_ident(c) for c, _ in cols)} from {_ident(table)}", [], name)
        return {"columns": cols, "rows": rows, **extra, "parts": [{"file": name, "level": 30, "rows": rows}]}

    def _delta(self, table: str, cols, prev: dict, select: str, args: list, **extra) -> dict:
        """The rows of ``select`` as a new level-0 part after ``prev``'s parts, merged as due."""
        name = self._part_name(table, 0)
        rows = self._copy(select, args, name)
        parts = self._merged(table, cols, [*prev["parts"], {"file": name, "level": 0, "rows": rows}])
        return {"columns": cols, **extra, "parts": parts}

    def _merged(self, table: str, cols, parts: list[dict]) -> list[dict]:
        """Merge the trailing parts while the last two share a level (a binary counter) and
        together stay within ``MAX_MERGE_ROWS``."""
        while (len(parts) >= 2 and parts[-1]["level"] == parts[-2]["level"]
               and parts[-1]["rows"] + parts[-2]["rows"] <= MAX_MERGE_ROWS):
            a, b = parts[-2], parts[-1]
            level = a["level"] + 1
            name = self._part_name(table, level)
            rows = self._copy(_read_sql(table, cols, _file_list(str(self.folder / p["file"]) for p in (a, b))),
                              [], name)
            parts = [*parts[:-2], {"file": name, "level": level, "rows": rows}]
        return parts

    def run(self) -> dict:
        tables = {}
        self.con.execute("begin transaction")  # one consistent state of the catalog for every table
        try:
            columns = self.columns()
            for table in PUBLISHED_TABLES:
                tables[table] = self.table(table, columns[table])
        finally:
            self.con.execute("rollback")  # it only read
        now = time.time()
        live = {p["file"] for t in tables.values() for p in t["parts"]}
        before = {p["file"] for t in self.old["tables"].values() for p in t["parts"]}
        retired = [r for r in self.old.get("retired", []) if r["file"] not in live and now - r["at"] < RETIRE_S]
        retired += [{"file": f, "at": now} for f in sorted(before - live)]
        manifest = {"format": FORMAT, "schema_version": self.schema_version, "generation": self.gen,
                    "published_at": datetime.now(timezone.utc).isoformat(), "tables": tables, "retired": retired}
        tmp = self.folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), "utf-8")
        os.replace(tmp, self.folder / MANIFEST)
        _write_views_sql(self.folder, tables)
        self._sweep(live | {r["file"] for r in retired})
        return manifest

    def _sweep(self, keep: set[str]) -> None:
        """Delete the part files no manifest still names (retired past their time, or left
        by a publish killed before its manifest)."""
        parts = self.folder / "parts"
        if not parts.is_dir():
            return
        for p in parts.rglob("*.parquet"):
            if p.relative_to(self.folder).as_posix() not in keep:
                p.unlink(missing_ok=True)


def publish(con: duckdb.DuckDBPyConnection, catalog: Path, schema_version: int) -> tuple[Path, int]:
    """Bring ``<catalog>.published/`` up to the committed state of ``con``'s catalog, writing
    only what changed (see the module). Returns (the folder, rows written). Not thread-safe:
    the catalog's single writer calls it between transactions."""
    folder = published_dir(catalog)
    folder.mkdir(parents=True, exist_ok=True)
    job = _Publish(con, folder, schema_version)
    job.run()
    legacy = catalog.with_name(catalog.name + ".snapshot.duckdb")  # the full copy earlier versions wrote
    legacy.unlink(missing_ok=True)
    return folder, job.written


# ---------------------------------------------------------------------------------------
# the reader's side
# ---------------------------------------------------------------------------------------
def _read_sql(table: str, cols, files: str) -> str:
    """The rows of ``table`` in the parts ``files`` (a SQL list of paths), typed as the
    catalog types them; for a "latest" table only the newest version of each key (the part
    names sort by generation)."""
    typed = ", ".join(f"cast({_ident(c)} as {t}) as {_ident(c)}" for c, t in cols)
    if table not in LATEST_TABLES:
        return f"select {typed} from read_parquet({files})"
    key = ", ".join(_ident(k) for k in LATEST_TABLES[table])
    names = ", ".join(_ident(c) for c, _ in cols)
    return (f"select {typed} from (select {names}, row_number() over (partition by {key} "
            f"order by filename desc) as _version from read_parquet({files}, filename = true)) where _version = 1")


def _write_views_sql(folder: Path, tables: dict) -> None:
    lines = ["-- The published catalog as views, for a DuckDB session started in this folder:",
             "--   duckdb -init views.sql", "-- Written by each publish; the paths are relative to this folder.", ""]
    for table, t in tables.items():
        files = _file_list(p["file"] for p in t["parts"])
        lines.append(f"create or replace view {_ident(table)} as {_read_sql(table, t['columns'], files)};")
    lines += ["", _derived_views_sql(), ""]
    tmp = folder / ".views.sql.tmp"
    tmp.write_text("\n".join(lines), "utf-8")
    os.replace(tmp, folder / "views.sql")


@functools.lru_cache(maxsize=1)
def _derived_views_sql() -> str:
    """The catalog schema's own views (``distances``, ``queue``), over the published tables."""
    from importlib import resources

    sql = resources.files("schemas").joinpath("catalog.sql").read_text("utf-8")
    con = duckdb.connect()
    try:
        queries = (re.sub(r"^(\s*--[^\n]*\n)*\s*", "", st.query) for st in con.extract_statements(sql))
        return "\n".join(q.strip() + ";" for q in queries if q.upper().startswith("CREATE OR REPLACE VIEW"))
    finally:
        con.close()


def connect_published(folder: Path, config: dict) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection whose tables are views over ``folder``'s parts, with
    file access limited to that folder and then locked (``config``: the reader's sandbox)."""
    manifest = _load_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(folder / MANIFEST)
    folder = folder.resolve()
    con = duckdb.connect(":memory:")
    try:
        con.execute("set allowed_directories = ?", [[str(folder) + os.sep]])
        for table, t in manifest["tables"].items():
            files = _file_list(str(folder / p["file"]) for p in t["parts"])
            con.execute(f"create view {_ident(table)} as {_read_sql(table, t['columns'], files)}")
        for stmt in con.extract_statements(_derived_views_sql()):
            con.execute(stmt.query)
        for key, value in config.items():
            con.execute(f"set {key} = {'true' if value is True else 'false' if value is False else _quote(str(value))}")
    except BaseException:
        con.close()
        raise
    return con
