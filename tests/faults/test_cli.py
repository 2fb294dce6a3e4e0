"""Input faults at the command line: malformed score files, unknown models, bad dates,
hostile model ids (path traversal, quotes and SQL metacharacters, very long ids, control
characters) and hostile SQL, each given to the real ``phylolm`` entry point in its own process.

Every case must end with a non-zero exit status and exactly one line on stderr (no
traceback), leave the catalog's tables as they were, and write no file anywhere under the
test's folder — the working directory, the catalog's folder, the cache, or a parent that a
``../..`` could reach.
"""
from __future__ import annotations

import json

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.catalog_checks import listing, table_counts

LONG_ID = "a/" + "x" * 10_000
INJECT = "a'; drop table models; --"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A catalog with four indexed models and the Hub they came from; the commands run in
    ``root/work/cwd`` so that ``../..`` lands inside ``root`` too, where it is watched."""
    root = tmp_path_factory.mktemp("cli")
    cwd = root / "work" / "cwd"
    cwd.mkdir(parents=True)
    hub = root / "hub"
    r = run_cli("simulate", "--models", "4", "--seed", "4", "--genes", "8", "--samples", "8", "--out", str(hub))
    assert r.returncode == 0, r.stderr
    catalog = root / "data" / "c.duckdb"
    r = run_cli("backfill", "--hub", str(hub), "--catalog", str(catalog), "--backend", "simulated", "--genes", "8",
                "--samples", "8", cwd=cwd, env={"PHYLOLM_CACHE_DIR": str(root / "cache")})
    assert r.returncode == 0, r.stderr
    files = root / "inputs"
    files.mkdir()
    header = "model_id,benchmark,value,source\n"
    csvs = {
        "missing-column.csv": "model_id,benchmark,value\nlab-00/x,arc,0.5\n",
        "not-a-number.csv": header + "lab-00/x,arc,high,paper\n",
        "out-of-range.csv": header + "lab-00/x,arc,1.5,paper\n",
        "nan.csv": header + "lab-00/x,arc,nan,paper\n",
        "infinite.csv": header + "lab-00/x,arc,-inf,paper\n",
        "short-row.csv": header + "lab-00/x,arc,0.5,paper\nlab-00/y,arc,0.5\n",
        "long-row.csv": header + "lab-00/x,arc,0.5,paper,extra\n",
        "empty.csv": "",
        "header-only.csv": header,
        "traversal-id.csv": header + "../../x,arc,0.5,paper\n",
        "injection-benchmark.csv": header + "lab-00/x,arc'); drop table models; --,0.5,paper\n",
        "long-id.csv": header + f"{LONG_ID},arc,0.5,paper\n",
        "second-row-bad.csv": header + "lab-00/x,arc,0.5,paper\nlab-00/y,arc,oops,paper\n",
    }
    for name, text in csvs.items():
        (files / name).write_text(text)
    (files / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (files / "not-a-catalog.duckdb").write_bytes(b"this is not a database\n" * 100)
    return {"root": root, "cwd": cwd, "hub": hub, "catalog": catalog, "files": files}


def _cases():
    C = "{catalog}"
    job = ["--hub", "{hub}", "--backend", "simulated", "--genes", "8", "--samples", "8", "--catalog", C]
    scores = [(f"csv-{name}", ["scores", "import", "{files}/" + name, "--catalog", C], expect) for name, expect in [
        ("missing-column.csv", "missing column"), ("not-a-number.csv", "not a number"),
        ("out-of-range.csv", "value"), ("nan.csv", "value"), ("infinite.csv", "value"),
        ("short-row.csv", ":3: wrong number of fields"), ("long-row.csv", "wrong number of fields"),
        ("empty.csv", "missing column"), ("header-only.csv", "no rows"), ("binary.csv", "not UTF-8"),
        ("traversal-id.csv", "not a valid model id"), ("injection-benchmark.csv", "benchmark"),
        ("long-id.csv", "model_id"), ("second-row-bad.csv", ":3: value"), ("no-such-file.csv", "no such file"),
    ]]
    unknown = [
        ("nearest-unknown", ["nearest", "nosuch/model", "--catalog", C], "no distances"),
        ("estimate-unknown", ["estimate", "nosuch/model", "--catalog", C], "unknown model"),
        ("sql-no-catalog", ["sql", "select 1", "--catalog", "{root}/data/none.duckdb"], "no catalog"),
        ("sql-not-a-catalog", ["sql", "select 1", "--catalog", "{files}/not-a-catalog.duckdb"], "cannot read"),
        ("estimate-not-a-catalog", ["estimate", "--catalog", "{files}/not-a-catalog.duckdb"], "not a valid DuckDB"),
        ("backfill-unknown-backend", ["backfill", "--hub", "{hub}", "--backend", "nosuch", "--catalog", C], "unknown 'nosuch'"),
        ("watch-unknown-backend", ["watch", "--once", "--hub", "{hub}", "--backend", "nosuch", "--catalog", C], "unknown 'nosuch'"),
        ("nearest-k-zero", ["nearest", "lab-00/x", "-k", "0", "--catalog", C], "-k"),
    ]
    dates = [
        ("backfill-since-month-13", ["backfill", *job, "--since", "2024-13-45"], "not a date"),
        ("backfill-since-feb-30", ["backfill", *job, "--since", "2024-02-30"], "not a date"),
        ("backfill-since-words", ["backfill", *job, "--since", "'; drop table models; --"], "not a date"),
        ("hub-list-since-bad", ["hub", "list", "--hub", "{hub}", "--since", "2024-00-01"], "not a date"),
    ]
    ids = [
        ("probe-traversal", ["probe", "../../x", *job], "not a valid model id"),
        ("probe-absolute", ["probe", "/etc/passwd", *job], "not a valid model id"),
        ("probe-inner-traversal", ["probe", "a/../../b", *job], "not a valid model id"),
        ("probe-injection", ["probe", INJECT, *job], "not a valid model id"),
        ("probe-quotes", ["probe", 'a/"b"', *job], "not a valid model id"),
        ("probe-backslash", ["probe", "a\\..\\..\\b", *job], "not a valid model id"),
        ("probe-newline", ["probe", "a/b\nc", *job], "not a valid model id"),
        ("probe-long-id", ["probe", LONG_ID, *job], "not a valid model id"),
        ("backfill-traversal-ids", ["backfill", "lab-00/ok", "../../x", *job], "not a valid model id"),
        ("nearest-injection", ["nearest", INJECT, "--catalog", C], "no distances"),
        ("nearest-newline", ["nearest", "a/b\nc'; --", "--catalog", C], "no distances"),
        ("estimate-injection", ["estimate", INJECT, "--catalog", C], "unknown model"),
        ("estimate-long-id", ["estimate", LONG_ID, "--catalog", C], "unknown model"),
        ("nearest-long-id", ["nearest", LONG_ID, "--catalog", C], "no distances"),
    ]
    sql = [
        ("sql-drop", ["sql", "drop table models", "--catalog", C], "refused"),
        ("sql-stacked", ["sql", "select 1; drop table models", "--catalog", C], "refused"),
        ("sql-update", ["sql", "update models set status = 'failed'", "--catalog", C], "refused"),
        ("sql-copy-to-file", ["sql", "copy models to 'stolen.csv'", "--catalog", C], "refused"),
        ("sql-export-database", ["sql", "export database 'dump'", "--catalog", C], "refused"),
        ("sql-attach", ["sql", "attach 'evil.duckdb' as evil", "--catalog", C], "refused"),
        ("sql-read-file", ["sql", "select * from read_csv('/etc/passwd')", "--catalog", C], "SQL error"),
        ("sql-install", ["sql", "install httpfs", "--catalog", C], "refused"),
        ("sql-set", ["sql", "set enable_external_access = true", "--catalog", C], "refused"),
        ("sql-create", ["sql", "create table t as select 1", "--catalog", C], "refused"),
        ("sql-garbage", ["sql", "selec * fro models", "--catalog", C], "SQL error"),
    ]
    return scores + unknown + dates + ids + sql


CASES = _cases()


@pytest.mark.parametrize("name, args, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(site, name, args, expect):
    fill = {k: str(v) for k, v in site.items()}
    argv = [a.format(**fill) for a in args]
    catalog = site["catalog"]
    tables = table_counts(catalog)
    before = listing(site["root"])
    r = run_cli(*argv, cwd=site["cwd"], env={"PHYLOLM_CACHE_DIR": str(site["root"] / "cache")}, timeout=120)
    lines = r.stderr.strip("\n").splitlines()
    assert r.returncode != 0, (name, r.stdout[-500:])
    assert "Traceback" not in r.stderr and len(lines) == 1, (name, r.stderr[-2000:])
    assert lines[0].startswith("error: ") and expect in lines[0] and len(lines[0]) <= 600, (name, lines[0][:700])
    assert "unexpected" not in lines[0], lines[0]  # a handled error, not a bug caught at the top
    assert table_counts(catalog) == tables
    assert listing(site["root"]) == before, sorted(listing(site["root"]) ^ before)
    assert not (site["cwd"] / ".." / ".." / "x").exists()


def test_injection_strings_are_data_not_sql(site):
    """Ids full of SQL metacharacters, used where the catalog is queried, find nothing and
    touch nothing; the catalog answers the same afterwards."""
    catalog = site["catalog"]
    rows = lambda: json.loads(run_cli("sql", "select id, status from models order by id", "--catalog",
                                      str(catalog), "--json", cwd=site["cwd"]).stdout)
    before = rows()
    assert len(before) == 4
    for hostile in (INJECT, "x' or '1'='1", "x\" or \"1\"=\"1", "x'); select 1; --", "%' --"):
        r = run_cli("nearest", hostile, "--catalog", str(catalog), cwd=site["cwd"])
        assert r.returncode == 2 and "no distances" in r.stderr, r.stderr
    assert rows() == before
