"""The foundation's commands, run as a user runs them (a subprocess of the real entry point)."""
import json

import pytest


def test_help_lists_commands(cli):
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("init", "status", "genomes", "sql", "scores"):
        assert cmd in r.stdout


def test_init_then_sql_lists_every_table(cli, tmp_path):
    assert cli("init", "--catalog", "c.duckdb").returncode == 0
    r = cli("sql", "select table_name from information_schema.tables", "--catalog", "c.duckdb", "--json")
    assert r.returncode == 0, r.stderr
    names = {row["table_name"] for row in json.loads(r.stdout)}
    assert {"models", "genomes", "genes", "probes", "alleles", "distances", "tree_snapshots",
            "scores", "estimates"} <= names


def test_sql_drop_is_refused_and_table_survives(cli):
    cli("init", "--catalog", "c.duckdb")
    r = cli("sql", "drop table models", "--catalog", "c.duckdb")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "read-only" in r.stderr and "Traceback" not in r.stderr
    r = cli("sql", "select count(*) as n from models", "--catalog", "c.duckdb", "--json")
    assert json.loads(r.stdout) == [{"n": 0}]


def test_catalog_from_environment(cli):
    env = {"PHYLOLM_CATALOG": "env.duckdb"}
    assert cli("init", env=env).returncode == 0
    r = cli("status", "--json", env=env)
    report = json.loads(r.stdout)
    assert report["catalog"] == "env.duckdb" and report["settings"]["catalog"]["source"] == "env"


def test_settings_precedence_file_env_cli(cli, tmp_path):
    (tmp_path / "phylolm.toml").write_text('catalog = "file.duckdb"\nsamples = 8\ninterval = 60\n')
    cli("init", "--catalog", "file.duckdb")
    r = cli("status", "--json", env={"PHYLOLM_SAMPLES": "16"})
    s = json.loads(r.stdout)["settings"]
    assert s["catalog"] == {"value": "file.duckdb", "source": "file"}
    assert s["samples"] == {"value": 16, "source": "env"}
    assert s["interval"] == {"value": 60.0, "source": "file"}


@pytest.mark.parametrize("args, needle", [
    (("status", "--catalog", "missing.duckdb"), "phylolm init"),
    (("sql", "select 1", "--catalog", "missing.duckdb"), "phylolm init"),
    (("sql", "selec nonsense", "--catalog", "c.duckdb"), "SQL error"),
    (("scores", "import", "nope.csv", "--catalog", "c.duckdb"), "no such file"),
    (("genomes", "--register", "nope.jsonl", "--catalog", "c.duckdb"), "no genome named"),
])
def test_bad_input_is_one_clear_line(cli, args, needle):
    cli("init", "--catalog", "c.duckdb")
    r = cli(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("body, needle", [
    ("model_id,benchmark\na/b,arc\n", "missing column"),
    ("model_id,benchmark,value,source\na/b,arc,high,x\n", "not a number"),
    ("model_id,benchmark,value,source\na/b,arc,1.5,x\n", "less than or equal to 1"),
    ("model_id,benchmark,value,source\n../../etc,arc,0.5,x\n", "not a valid model id"),
    ("model_id,benchmark,value,source\na/b,arc,0.5\n", "wrong number of fields"),
    ("model_id,benchmark,value,source\n", "no rows"),
])
def test_malformed_scores_change_nothing(cli, tmp_path, body, needle):
    cli("init", "--catalog", "c.duckdb")
    (tmp_path / "s.csv").write_text(body)
    r = cli("scores", "import", "s.csv", "--catalog", "c.duckdb")
    assert r.returncode != 0 and needle in r.stderr, r.stderr
    assert json.loads(cli("sql", "select count(*) n from scores", "--catalog", "c.duckdb", "--json").stdout) == [{"n": 0}]


def test_scores_import(cli, tmp_path):
    cli("init", "--catalog", "c.duckdb")
    (tmp_path / "s.csv").write_text("model_id,benchmark,value,source\na/b,ARC,0.5,me\na/b,mmlu,0.25,me\n")
    r = cli("scores", "import", "s.csv", "--catalog", "c.duckdb", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["imported"] == 2
    rows = json.loads(cli("sql", "select benchmark, value from scores order by 1", "--catalog", "c.duckdb",
                          "--json").stdout)
    assert rows == [{"benchmark": "arc", "value": 0.5}, {"benchmark": "mmlu", "value": 0.25}]
