"""The foundation's commands, run as a user runs them (a subprocess of the real entry point)."""
import json
import re

import pytest
import typer.main
from typer.testing import CliRunner

from indexer.cli import app


def _section(help_text: str, title: str) -> list[str]:
    """The lines of one section of a help page (``Options:``, ``Commands:``), up to the next
    line that is not indented."""
    lines = help_text.splitlines()
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    return lines[start:end]


def _visible_commands(group, path=()):
    """(path, command) of every command and group a user can call, groups' commands included."""
    for name, cmd in sorted(group.commands.items()):
        if not cmd.hidden:
            yield path + (name,), cmd
            if hasattr(cmd, "commands"):
                yield from _visible_commands(cmd, path + (name,))


def test_help_lists_commands(cli):
    """The top-level help (the real entry point) lists exactly the registered commands, each
    with the start of its own help; every command's help (in process: 25 pages) names each
    argument it takes in its usage line and lists each option it declares."""
    root = typer.main.get_command(app)
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    listed = dict(line.split(None, 1) for line in _section(r.stdout, "Commands") if line.strip())
    assert set(listed) == {name for name, cmd in root.commands.items() if not cmd.hidden}
    for name, summary in listed.items():
        assert " ".join(root.commands[name].help.split()).startswith(summary.removesuffix("...")), name

    runner = CliRunner()
    for path, cmd in _visible_commands(root):
        page = runner.invoke(app, [*path, "--help"])
        assert page.exit_code == 0, (path, page.output)
        usage = page.output.splitlines()[0]
        assert usage.startswith(f"Usage: phylolm {' '.join(path)} "), usage
        options = "\n".join(_section(page.output, "Options"))
        for param in cmd.params:
            if param.param_type_name == "argument":
                assert re.search(rf"\b{param.name}\b", usage), (path, param.name, usage)
            elif not param.hidden:
                for flag in param.opts + param.secondary_opts:
                    assert re.search(rf"(^|[ ,/]){re.escape(flag)}\b", options, re.M), (path, flag)


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
