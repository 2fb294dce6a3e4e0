"""The Beam pipelines end to end: real runner, real Hub client against the project's loopback
endpoint, real DuckDB file, the simulated backend (a simulated ecosystem stands in for GPUs
and thousands of models; everything else is the production path)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.hub_repos import publish, repos_by_upload

SIM_MODELS = 24


ECOSYSTEM = dict(models=SIM_MODELS, seed=3, genes=32, samples=16)  # what the `ecosystem` fixture simulates


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _sql(catalog: Path, q: str, cwd: Path):
    return _json(run_cli("sql", q, "--catalog", str(catalog), "--json", cwd=cwd))


def _consistent(catalog: Path, cwd: Path, n: int) -> None:
    """Every indexed model counted exactly once, everywhere."""
    assert _sql(catalog, "select count(*) n from models where status = 'indexed'", cwd) == [{"n": n}]
    assert _sql(catalog, "select count(*) n from probes", cwd) == [{"n": n}]
    assert _sql(catalog, "select count(distinct probe) n from alleles", cwd) == [{"n": n}]
    assert _sql(catalog, "select count(*) n from distance_pairs", cwd) == [{"n": n * (n - 1) // 2}]
    last = _sql(catalog, "select n_leaves, newick from tree_snapshots order by snapshot_id desc limit 1", cwd)
    assert last[0]["n_leaves"] == n
    from indexer.core.tree import parse_newick
    assert sorted(parse_newick(last[0]["newick"]).leaf_names) == sorted(
        r["id"] for r in _sql(catalog, "select id from models where status = 'indexed'", cwd))
    assert _sql(catalog, "select count(*) n from tree_snapshots", cwd) == [{"n": n}]


def _backfill(hub: Path, catalog: Path, cwd: Path, *extra: str, timeout=600):
    return run_cli("backfill", "--hub", str(hub), "--catalog", str(catalog), "--backend", "simulated",
                   "--genes", "32", "--samples", "16", *extra, cwd=cwd, timeout=timeout)


def test_backfill_indexes_everything_once(ecosystem, tmp_path):
    catalog = tmp_path / "c.duckdb"
    r = _backfill(ecosystem, catalog, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"[{SIM_MODELS}/{SIM_MODELS}]" in r.stdout
    _consistent(catalog, tmp_path, SIM_MODELS)
    # again: nothing new, nothing counted twice
    r = _backfill(ecosystem, catalog, tmp_path)
    assert r.returncode == 0 and "0 model(s) to index" in r.stdout
    _consistent(catalog, tmp_path, SIM_MODELS)
    # the tree's quality against the simulation's truth (full numbers: the benchmark)
    from indexer.core.tree import parse_newick, robinson_foulds
    r = run_cli("tree", "--catalog", str(catalog), "--format", "newick", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tree = parse_newick(r.stdout.strip())
    assert robinson_foulds(tree, parse_newick((ecosystem / "truth.nwk").read_text())) < 0.6


def test_backfill_filters_and_limit(ecosystem, tmp_path):
    catalog = tmp_path / "c.duckdb"
    r = _backfill(ecosystem, catalog, tmp_path, "--limit", "5")
    assert r.returncode == 0, r.stderr
    first = _sql(catalog, "select id, created_at from models order by created_at", tmp_path)
    assert len(first) == 5
    r = _backfill(ecosystem, catalog, tmp_path, "--limit", "3")
    rows = _sql(catalog, "select id, created_at from models order by created_at", tmp_path)
    assert len(rows) == 8 and rows[:5] == first  # upload order: the next three oldest
    bad = _backfill(ecosystem, catalog, tmp_path, "--since", "yesterday")
    assert bad.returncode == 2 and "not a date" in bad.stderr and "Traceback" not in bad.stderr


def test_multi_process_runner_gives_the_same_index(ecosystem, tmp_path):
    catalog = tmp_path / "c.duckdb"
    r = _backfill(ecosystem, catalog, tmp_path, "--limit", "10",
                  "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert r.returncode == 0, r.stderr
    _consistent(catalog, tmp_path, 10)
    ref = tmp_path / "ref.duckdb"
    assert _backfill(ecosystem, ref, tmp_path, "--limit", "10").returncode == 0
    q = "select model_a, model_b, round(similarity, 12) s from distance_pairs order by 1, 2"
    assert _sql(catalog, q, tmp_path) == _sql(ref, q, tmp_path)


def test_watch_once_then_streaming_watch_sees_new_uploads(ecosystem, tmp_path):
    served = tmp_path / "served"
    repos = repos_by_upload(ecosystem)
    publish(repos[:4], served)
    catalog = tmp_path / "c.duckdb"
    # The simulated uploads are dated years back: the first poll's window must reach them.
    args = ["--hub", str(served), "--catalog", str(catalog), "--backend", "simulated", "--genes", "32",
            "--samples", "16", "--first-window", "200000"]
    r = run_cli("watch", "--once", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _consistent(catalog, tmp_path, 4)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    proc = subprocess.Popen([sys.executable, "-m", "indexer", "watch", *args, "--interval", "1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        # a second writer on the same catalog is refused at once
        time.sleep(3)
        second = run_cli("watch", "--once", *args, cwd=tmp_path)
        assert second.returncode == 2 and "already writing" in second.stderr
        publish(repos[4:7], served)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = _sql(catalog, "select count(*) n from models where status = 'indexed'", tmp_path)
            if rows[0]["n"] == 7:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        else:
            pytest.fail("streaming watch did not index the new uploads")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    _consistent(catalog, tmp_path, 7)


@pytest.mark.faults
def test_sigkill_mid_backfill_then_resume(ecosystem, tmp_path):
    """Kill -9 the job while it writes; the restart finishes with nothing lost or doubled."""
    catalog = tmp_path / "c.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    cmd = [sys.executable, "-m", "indexer", "backfill", "--hub", str(ecosystem), "--catalog", str(catalog),
           "--backend", "simulated", "--genes", "32", "--samples", "16"]
    for kill_after in (6, 14):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        seen = 0
        for line in proc.stdout:
            if line.startswith("[") and "indexed" in line:
                seen += 1
                if seen >= kill_after - (6 if kill_after == 14 else 0):
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    _consistent(catalog, tmp_path, SIM_MODELS)


def test_estimates_refresh_on_insert(ecosystem, tmp_path):
    """Scores known for some models → every unscored model gets an estimate with an interval,
    naming the tree snapshot it was computed at, within the same update that indexed it."""
    import numpy as np

    catalog = tmp_path / "c.duckdb"
    assert run_cli("init", "--catalog", str(catalog), cwd=tmp_path).returncode == 0
    ids = sorted(json.loads((p / ".hub.json").read_text())["created_at"] + " " + f"{p.parent.name}/{p.name}"
                 for o in ecosystem.iterdir() if o.is_dir() for p in o.iterdir() if p.is_dir())
    ids = [s.split(" ")[1] for s in ids]
    scored = ids[::2]  # every other model has a measured (synthetic, test-only) score
    rng = np.random.default_rng(0)
    rows = "\n".join(f"{m},arc,{rng.uniform(0.2, 0.8):.3f},test" for m in scored)
    (tmp_path / "s.csv").write_text("model_id,benchmark,value,source\n" + rows + "\n")
    assert run_cli("scores", "import", "s.csv", "--catalog", str(catalog), cwd=tmp_path).returncode == 0
    r = _backfill(ecosystem, catalog, tmp_path)
    assert r.returncode == 0, r.stderr
    est = _sql(catalog, "select e.model_id, e.estimate, e.low, e.high, e.method, e.snapshot, t.inserted_model "
                        "from estimates e join tree_snapshots t on t.snapshot_id = e.snapshot", tmp_path)
    unscored = set(ids) - set(scored)
    assert {e["model_id"] for e in est} == unscored
    for e in est:
        assert e["low"] <= e["estimate"] <= e["high"] and e["method"]


@pytest.mark.faults
def test_failed_download_is_retried_on_the_next_poll(ecosystem, tmp_path):
    """A transient failure is not final: the model is `failed` with its reason, retried by the
    next poll, and indexed once the Hub answers again (attempts are counted per revision)."""
    from indexer.adapters.catalog import Catalog
    from indexer.adapters.hub.client import RetryPolicy
    from indexer.testbed.hub.faults import FaultPlan, vanish
    from indexer.testbed.hub import HubServer
    from indexer.app.writer import IndexWriter
    from indexer.app.job import JobConfig
    from indexer.app.listing import ListStep
    from indexer.app.probing import ProbeStep
    from schemas.records import ProbeParams

    served = tmp_path / "served"
    model_id, later_id = publish(repos_by_upload(ecosystem)[:2], served)
    # the older upload is gone (404) between the listing and the download; the later one is
    # indexed, so the watermark moves past the failure, which must still be retried
    plan = FaultPlan(vanish(model_id))
    with HubServer(served, faults=plan) as url:
        config = JobConfig(catalog=tmp_path / "c.duckdb", hub=url, backend="simulated", n_genes=32,
                           params=ProbeParams(n_samples=16), cache_dir=tmp_path / "cache", hub_timeout=2)

        def poll():
            listed = ListStep(config)()
            step = ProbeStep(config)
            step.watcher.client.retry = RetryPolicy(attempts=2, base=0.01, cap=0.02)
            writer = IndexWriter(config)
            try:
                return [writer.apply(step(m)) for m in listed]
            finally:
                writer.close()
                step.close()

        first = poll()
        assert [(s.model_id, s.status) for s in first] == [(model_id, "failed"), (later_id, "indexed")]
        assert "not found" in first[0].reason
        plan.faults.clear()  # the repository is back
        second = poll()
        assert [(s.model_id, s.status) for s in second] == [(model_id, "indexed")]
        assert poll() == []  # done: not listed again
    with Catalog(config.catalog) as cat:
        assert cat.con.execute("select id, status, attempts from models order by id").fetchall() == sorted(
            [(model_id, "indexed", 1), (later_id, "indexed", 0)])


@pytest.mark.faults
def test_streaming_watch_retries_a_failure_within_the_run(ecosystem, tmp_path):
    """One long-running watch: a model whose download fails once is listed again with its
    attempt count raised, passes the first-sight filter again, and is indexed in the same run."""
    from dataclasses import replace

    from indexer.adapters.catalog import Catalog
    from indexer.testbed.hub.faults import FaultPlan, vanish
    from indexer.testbed.hub import HubServer
    from indexer.app.job import JobConfig
    from indexer.adapters.catalog import JobLock
    from pipelines.run import run_watch
    from schemas.records import ProbeParams

    served = tmp_path / "served"
    flaky = publish(repos_by_upload(ecosystem)[:3], served)[0]
    plan = FaultPlan(replace(vanish(flaky), times=1))  # one 404, then the repository is back
    catalog = tmp_path / "c.duckdb"
    with HubServer(served, faults=plan) as url, JobLock(catalog):
        config = JobConfig(catalog=catalog, hub=url, backend="simulated", n_genes=32,
                           params=ProbeParams(n_samples=16), cache_dir=tmp_path / "cache", hub_timeout=2)
        run_watch(config, interval=0.5, duration=20)  # room for two polls on a slow machine
    assert plan.fired("vanish") == 1
    with Catalog(catalog) as cat:
        rows = dict(cat.con.execute("select id, status || ':' || attempts from models").fetchall())
    assert rows[flaky] == "indexed:1" and sorted(rows.values()) == ["indexed:0", "indexed:0", "indexed:1"]


def test_writer_keeps_its_index_between_bundles_unless_another_wrote(ecosystem, tmp_path):
    """``IndexWriter.close``/``reopen`` (what a worker does between bundles): the in-memory
    index is reused when the catalog did not change meanwhile, rebuilt when another writer
    inserted a model; either way every model ends in the catalog exactly once."""
    from indexer.testbed.hub import HubServer
    from indexer.app.writer import IndexWriter
    from indexer.app.job import JobConfig
    from indexer.app.listing import ListStep
    from indexer.app.probing import ProbeStep
    from schemas.records import ProbeParams
    from tests.helpers.catalog_checks import assert_consistent

    served = tmp_path / "served"
    publish(repos_by_upload(ecosystem)[:5], served)
    with HubServer(served) as url:
        config = JobConfig(catalog=tmp_path / "c.duckdb", hub=url, backend="simulated", n_genes=32,
                           params=ProbeParams(n_samples=16), cache_dir=tmp_path / "cache")
        step = ProbeStep(config)
        outcomes = [step(m) for m in ListStep(config)()]
        step.close()
    assert len(outcomes) == 5
    first = IndexWriter(config)
    first.apply(outcomes[0])
    first.apply(outcomes[1])
    first.close()
    kept = first.index
    first.reopen()  # nobody wrote: the same index object, no rebuild
    assert first.index is kept
    first.apply(outcomes[2])
    first.close()

    other = IndexWriter(config)  # another worker's bundle
    other.apply(outcomes[3])
    other.close()

    first.reopen()  # the catalog moved on: rebuilt from it, with the other worker's model
    assert first.index is not kept and outcomes[3].model.id in first.index.ids
    first.apply(outcomes[4])
    first.close()
    assert_consistent(config.catalog, 5)
