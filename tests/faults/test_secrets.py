"""Secrets: a Hub token given through the environment is used (gated models are fetched with
it) and appears nowhere else — not in the DEBUG log, stdout or stderr of any command, the
catalog or what it publishes (their bytes, and every row read back through SQL), the exported
files, the download and probe caches, or the reasons and error messages recorded when the Hub
refuses it.

The token is a canary; the project's Hub endpoint accepts it for gated repositories (a second
endpoint refuses it, to produce errors). Every command is the real ``phylolm`` entry point in
its own process; the job's logging is set to DEBUG into a file before the entry point runs
(with ``HF_DEBUG=1``, so ``huggingface_hub`` logs every request it sends too). Then every byte
written under the test's folder is searched.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from indexer.testbed.hub import faults as F
from indexer.testbed.hub import HubServer
from tests.helpers.cli import BASE_ENV, run_cli
from tests.helpers.catalog_checks import connect, statuses

CANARY = "hf_secret_canary_7f3a9c1e5b2d4f6a8c0e"
NEEDLES = (CANARY.encode(), b"secret_canary_7f3a", CANARY[::-1].encode())

# The real entry point, with the root logger at DEBUG into a file first (the CLI's own
# logging.basicConfig then adds nothing: the root logger already has a handler).
_WITH_DEBUG_LOG = ("import logging, sys\n"
                   "logging.basicConfig(filename=sys.argv[1], level=logging.DEBUG,\n"
                   "                    format='%(asctime)s %(levelname)s %(name)s: %(message)s')\n"
                   "from indexer.cli import main\n"
                   "sys.argv = ['phylolm', *sys.argv[2:]]\n"
                   "main()\n")


def _every_row(source: Path) -> str:
    """Every row of every table and view of a catalog file or published folder, as text."""
    con = connect(source)
    try:
        names = [t for (t,) in con.execute("select table_name from information_schema.tables "
                                           "where table_schema = 'main'").fetchall()]
        return "\n".join(repr(con.execute(f'select * from "{t}"').fetchall()) for t in names)  # names: its own
    finally:
        con.close()


def _phylolm(log: Path, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITH_DEBUG_LOG, str(log), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_token_never_leaves_the_environment(tmp_path):
    hub = tmp_path / "hub"
    r = run_cli("simulate", "--models", "5", "--seed", "8", "--genes", "8", "--samples", "8", "--out", str(hub))
    assert r.returncode == 0, r.stderr
    repos = sorted(p for p in hub.glob("*/*") if p.is_dir())
    gated = [f"{p.parent.name}/{p.name}" for p in repos[:2]]
    for p in repos[:2]:
        side = json.loads((p / ".hub.json").read_text())
        (p / ".hub.json").write_text(json.dumps({**side, "gated": True}))
    broken = f"{repos[2].parent.name}/{repos[2].name}"

    env = {**BASE_ENV, "HF_TOKEN": CANARY, "HF_DEBUG": "1", "PHYLOLM_CACHE_DIR": str(tmp_path / "cache")}
    catalog = tmp_path / "c.duckdb"
    log = tmp_path / "phylolm.log"
    outputs: list[str] = []
    job = ["--catalog", str(catalog), "--backend", "simulated", "--genes", "8", "--samples", "8"]

    # 1. A backfill against a Hub that accepts the token; one model is deleted before download.
    plan = F.FaultPlan(F.vanish(broken))
    with HubServer(hub, tokens={CANARY}, faults=plan) as url:
        r = _phylolm(log, "backfill", "--hub", url, *job, cwd=tmp_path, env=env)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr[-2000:]
        r = _phylolm(log, "hub", "list", "--hub", url, "--json", cwd=tmp_path, env=env)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0 and len(json.loads(r.stdout)) == 5, r.stderr[-2000:]
    got = statuses(catalog)
    assert all(got[m][0] == "indexed" for m in gated), got  # the token was used: gated models fetched
    assert got[broken][0] == "failed" and got[broken][1], got[broken]

    # 2. A Hub that refuses the token: errors and recorded reasons that must not echo it.
    (tmp_path / "new").mkdir()
    with HubServer(hub, tokens={"hf_another_token"}) as url:
        r = _phylolm(log, "probe", gated[0], "--hub", url, "--catalog", str(tmp_path / "new" / "c2.duckdb"),
                     "--backend", "simulated", "--genes", "8", "--samples", "8", cwd=tmp_path,
                     env={**env, "PHYLOLM_CACHE_DIR": str(tmp_path / "new" / "cache")})  # nothing cached
        outputs += [r.stdout, r.stderr]
        assert r.returncode != 0
        refused = statuses(tmp_path / "new" / "c2.duckdb")[gated[0]]
        assert refused[0] in ("failed", "skipped") and refused[1], refused
        r = _phylolm(log, "hub", "list", "--hub", url + "/not-a-hub", cwd=tmp_path, env=env)
        outputs += [r.stdout, r.stderr]
        assert r.returncode != 0 and r.stderr.strip()

    # 3. Reading, exporting, reporting with the token still in the environment.
    for args in (["export", str(tmp_path / "published"), "--catalog", str(catalog)],
                 ["status", "--catalog", str(catalog), "--json"],
                 ["sql", "select * from models", "--catalog", str(catalog), "--json"],
                 ["estimate", "--catalog", str(catalog)],
                 ["nearest", "nosuch/model", "--catalog", str(catalog)]):
        r = _phylolm(log, *args, cwd=tmp_path, env=env)
        outputs += [r.stdout, r.stderr]
        assert "Traceback" not in r.stderr, (args, r.stderr[-2000:])
    assert (tmp_path / "published" / "report.html").is_file()

    # The log really is at DEBUG and saw the authenticated requests.
    text = log.read_text()
    assert " DEBUG " in text and "authenticated: True" in text, text[:2000]

    # Zero hits anywhere: every file under the test folder, every output, every recorded reason.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20 and catalog in files and catalog.with_name(catalog.name + ".published") / "manifest.json" in files
    hits = [str(p) for p in files if any(n in p.read_bytes() for n in NEEDLES)]
    # The catalogs and the published parts compress what they store, so their bytes alone could
    # hide a token: every row of every table, read back through SQL, is searched too.
    for source in (catalog, catalog.with_name(catalog.name + ".published"), tmp_path / "new" / "c2.duckdb"):
        text = _every_row(source)
        assert gated[0] in text, source  # the rows really were read
        hits += [str(source)] if any(n.decode() in text for n in NEEDLES) else []
    hits += [o[:200] for o in outputs if any(n.decode() in o for n in NEEDLES)]
    hits += [str(v) for v in list(got.values()) + [refused] if any(n.decode() in str(v) for n in NEEDLES)]
    assert hits == [], hits
