"""Checks shared by the suites that run whole jobs (the fault suites, the watch and upload
tests): what the catalog holds, whether it is consistent, and what a command left on disk."""
from __future__ import annotations

import os
from pathlib import Path

import duckdb


def query(catalog: Path, sql: str, args: list | None = None) -> list[tuple]:
    """Rows of ``sql`` read straight from ``catalog`` (no writer may be running)."""
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return con.execute(sql, args or []).fetchall()
    finally:
        con.close()


def statuses(catalog: Path) -> dict[str, tuple[str, str | None]]:
    """model id -> (status, reason)."""
    return {m: (s, r) for m, s, r in query(catalog, "select id, status, reason from models")}


def table_counts(con_or_path) -> dict[str, int]:
    """Rows per table of the catalog (a path, or an open connection)."""
    con = duckdb.connect(str(con_or_path), read_only=True) if isinstance(con_or_path, Path) else con_or_path
    try:
        tables = [t for (t,) in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' "
            "and table_type = 'BASE TABLE' order by 1").fetchall()]
        return {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
    finally:
        if isinstance(con_or_path, Path):
            con.close()


def consistency(con) -> tuple[int, list[str]]:
    """(n indexed, problems) of an open catalog connection: every indexed model counted
    exactly once in models, probes, alleles, distance pairs and the latest tree; one tree
    snapshot per indexed model (an update never doubled)."""
    from indexer.core.tree import parse_newick

    problems = []
    ids = sorted(m for (m,) in con.execute("select id from models where status = 'indexed'").fetchall())
    n = len(ids)
    (n_probes,) = con.execute("select count(*) from probes p join models m on m.id = p.model_id "
                              "where m.status = 'indexed'").fetchone()
    (n_all_probes,) = con.execute("select count(*) from probes").fetchone()
    (n_allele_sets,) = con.execute("select count(distinct probe) from alleles").fetchone()
    (n_pairs,) = con.execute("select count(*) from distance_pairs").fetchone()
    (n_trees,) = con.execute("select count(*) from tree_snapshots").fetchone()
    (dup,) = con.execute("select count(*) - count(distinct id) from models").fetchone()
    if n_probes != n or n_all_probes != n:
        problems.append(f"{n} indexed but {n_probes}/{n_all_probes} probes")
    if n_allele_sets != n:
        problems.append(f"{n} indexed but alleles of {n_allele_sets} probes")
    if n_pairs != n * (n - 1) // 2:
        problems.append(f"{n} indexed but {n_pairs} distance pairs")
    if n_trees != n:
        problems.append(f"{n} indexed but {n_trees} tree snapshots")
    if dup:
        problems.append(f"{dup} duplicated model rows")
    last = con.execute("select n_leaves, newick from tree_snapshots order by snapshot_id desc limit 1").fetchall()
    if n and (not last or last[0][0] != n or sorted(parse_newick(last[0][1]).leaf_names) != ids):
        problems.append("the latest tree's leaves are not the indexed models")
    return n, problems


def connect(catalog: Path):
    """A catalog file, or a published folder (``<catalog>.published``), read-only."""
    if catalog.is_dir():
        from indexer.adapters.catalog import connect_published

        return connect_published(catalog, {})
    return duckdb.connect(str(catalog), read_only=True)


def assert_consistent(catalog: Path, n: int | None = None) -> int:
    con = connect(catalog)
    try:
        got, problems = consistency(con)
    finally:
        con.close()
    assert not problems, problems
    if n is not None:
        assert got == n, f"{got} models indexed, expected {n}"
    return got


def listing(*roots: Path) -> set[str]:
    """Every path under ``roots`` (files and folders), for before/after comparisons."""
    seen = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                seen.add(os.path.join(dirpath, name))
    return seen
