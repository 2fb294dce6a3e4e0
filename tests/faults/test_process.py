"""Process faults: the writer killed (SIGKILL, for real) at each stage of an update, then
restarted; second writers refused while a watch runs; readers served the published snapshot.

Kills use the writer's failpoints (``PHYLOLM_FAILPOINT=<stage>:<n>``: the process SIGKILLs
itself at the n-th hit of ``before_write``, ``mid_write`` — inside the catalog transaction —,
``after_write`` — committed, not yet published — or ``mid_publish`` — snapshot written, export
not). Every job is the real ``phylolm`` entry point in its own process, on Beam's in-process
runner, against the project's Hub endpoint over a simulated ecosystem (the simulated backend
stands in for GPUs; everything else is the production path).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.adapters.catalog import connect_read_only, snapshot_path
from tests.helpers.cli import BASE_ENV, run_cli
from tests.helpers.hub_repos import publish, repos_by_upload
from tests.helpers.catalog_checks import assert_consistent, consistency, query

N_MODELS = 5
JOB = ["--backend", "simulated", "--genes", "16", "--samples", "8"]
FIRST_WINDOW_H = 200_000  # hours: the simulated uploads are dated years back


ECOSYSTEM = dict(models=N_MODELS, seed=11, genes=16, samples=8)  # what the `ecosystem` fixture simulates


def _watch_once(hub: Path, catalog: Path, cwd: Path, failpoint: str | None = None, **kw):
    # The simulated uploads are dated in the past: the first poll looks back far enough.
    env = {"PHYLOLM_CACHE_DIR": str(cwd / "cache"), "PHYLOLM_FIRST_WINDOW_HOURS": str(FIRST_WINDOW_H)}
    if failpoint:
        env["PHYLOLM_FAILPOINT"] = failpoint
    return run_cli("watch", "--once", "--hub", str(hub), "--catalog", str(catalog), "--publish-dir",
                   str(cwd / "published"), *JOB, cwd=cwd, env=env, **kw)


@pytest.mark.parametrize("stage, nth, committed", [
    ("before_write", 3, 2),   # probed, nothing written: the 3rd model is not in the catalog
    ("mid_write", 3, 2),      # inside the transaction: rolled back as a whole
    ("mid_write", 1, 0),      # the very first update of an empty catalog
    ("after_write", 3, 3),    # committed, not published: the snapshot lags one update
    ("mid_publish", 3, 3),    # snapshot written, export not
])
def test_sigkill_at_each_stage_then_restart(ecosystem, tmp_path, stage, nth, committed):
    catalog = tmp_path / "c.duckdb"
    killed = _watch_once(ecosystem, catalog, tmp_path, f"{stage}:{nth}")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])

    # What the kill left: whole updates only, consistent, exactly `committed` of them.
    if committed:
        assert_consistent(catalog, committed)
        assert query(catalog, "select count(*) from models")[0][0] == committed  # no half-written row
        published = committed if stage == "mid_publish" else committed - 1 if stage == "after_write" else committed
        assert_consistent(snapshot_path(catalog), published)
    # The dead writer's lock file is still there; it must not block the restart.
    assert catalog.with_name(catalog.name + ".lock").exists()

    restarted = _watch_once(ecosystem, catalog, tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    # Nothing lost, nothing doubled: every model once, one tree snapshot per model.
    assert_consistent(catalog, N_MODELS)
    ids = sorted(f"{r.parent.name}/{r.name}" for r in repos_by_upload(ecosystem))
    assert sorted(m for (m,) in query(catalog, "select id from models where status = 'indexed'")) == ids
    # Only the models not committed before the kill were written by the restart.
    assert restarted.stdout.count("indexed ") == N_MODELS - committed, restarted.stdout
    # The published snapshot and export caught up.
    assert_consistent(snapshot_path(catalog), N_MODELS)
    from indexer.core.tree import parse_newick
    tree = parse_newick((tmp_path / "published" / "tree.nwk").read_text())
    assert sorted(tree.leaf_names) == ids


_COUNTS_SQL = ("select (select count(*) from models where status = 'indexed') n, (select count(*) from probes) p, "
               "(select count(*) from distance_pairs) d, "
               "(select n_leaves from tree_snapshots order by snapshot_id desc limit 1) t")


def test_readers_and_second_writers_while_a_watch_writes(ecosystem, tmp_path):
    """While a streaming watch indexes uploads as they appear: readers in other processes
    (in-process connections and `phylolm sql`) always see a whole published update; every other
    writer (a second backfill, probe, scores import, estimate) is refused with one clear line."""
    served = tmp_path / "served"
    repos = repos_by_upload(ecosystem)
    publish(repos[:2], served)
    catalog = tmp_path / "c.duckdb"
    env = {**BASE_ENV, "PHYLOLM_CACHE_DIR": str(tmp_path / "cache"), "PHYLOLM_FIRST_WINDOW_HOURS": str(FIRST_WINDOW_H)}
    proc = subprocess.Popen([sys.executable, "-m", "indexer", "watch", "--hub", str(served), "--catalog", str(catalog),
                             *JOB, "--interval", "0.5"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    reads: list[tuple[int, Path]] = []

    def read_once() -> int:
        try:
            con, path = connect_read_only(catalog)
        except Exception as e:  # before the first publish there is nothing to read yet
            assert "no catalog" in str(e) or "nothing published yet" in str(e), e
            return -1
        try:
            n, problems = consistency(con)
        finally:
            con.close()
        assert not problems, (n, path, problems)
        reads.append((n, path))
        return n

    try:
        deadline = time.monotonic() + 120
        while read_once() < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)

        # Second writers, each refused at once with one line and no traceback.
        scores = tmp_path / "scores.csv"
        scores.write_text("model_id,benchmark,value,source\nlab-00/x,arc,0.5,test\n")
        for args in (["backfill", "--hub", str(served), *JOB], ["probe", repos[0].parent.name + "/" + repos[0].name,
                     "--hub", str(served), *JOB], ["scores", "import", str(scores)], ["estimate"]):
            r = run_cli(*args, "--catalog", str(catalog), cwd=tmp_path, env={"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")})
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)
            assert "already writing" in lines[0] or "only one process may write" in lines[0], lines[0]

        # Readers while new uploads arrive one by one.
        cli_reads = []
        for repo in repos[2:]:
            publish([repo], served)
            r = run_cli("sql", _COUNTS_SQL, "--catalog", str(catalog), "--json", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            row = json.loads(r.stdout)[0]
            assert row["p"] == row["n"] and row["d"] == row["n"] * (row["n"] - 1) // 2 and row["t"] == row["n"], row
            cli_reads.append(row["n"])
            for _ in range(5):
                read_once()
                time.sleep(0.1)
        while read_once() < N_MODELS:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    seen = [n for n, _ in reads]
    assert seen == sorted(seen), seen  # a reader never goes back in time
    assert any(p == snapshot_path(catalog) for _, p in reads)  # the writer held the catalog: snapshot served
    assert cli_reads == sorted(cli_reads) and len(reads) > 10
    assert_consistent(catalog, N_MODELS)
    assert query(catalog, "select count(*) from scores")[0][0] == 0  # the refused import wrote nothing
