"""The backfill on a real distributed engine: Beam's DaskRunner over a ``dask.distributed``
cluster of local worker processes (the test starts the cluster; `phylolm backfill` joins it
with --dask-scheduler, or starts its own with --dask-workers).

Real parts throughout: the `phylolm` CLI in a subprocess, Beam's DaskRunner, dask worker
processes (spawned by ``distributed.LocalCluster``, one more by `dask worker`), the project's
loopback Hub serving a simulated ecosystem, the real huggingface_hub client, DuckDB. The
simulated backend stands in for the GPUs. Nothing is mocked.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.catalog_checks import query
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.integration
distributed = pytest.importorskip("distributed")

SIM_MODELS = 16
ECOSYSTEM = dict(models=SIM_MODELS, seed=11, genes=16, samples=8)
PROBES = re.compile(r"^dask: (\d+) update\(s\) by (\d+) writer process\(es\) \(([^)]*)\); "
                    r"(\d+) model\(s\) indexed from probes in (\d+) worker process\(es\): (.*)$", re.M)


def _backfill(hub: Path, catalog: Path, cwd: Path, *extra: str):
    env = {"PHYLOLM_CACHE_DIR": str(catalog.parent / f"{catalog.stem}-cache")}  # no probe shared between runs
    return run_cli("backfill", "--hub", str(hub), "--catalog", str(catalog), "--backend", "simulated",
                   "--genes", str(ECOSYSTEM["genes"]), "--samples", str(ECOSYSTEM["samples"]), *extra,
                   cwd=cwd, env=env, timeout=900)


def _catalog(catalog: Path) -> dict:
    """What the two runners must agree on: models and statuses, each model's alleles,
    every distance, the final incremental tree, and how many times each thing was written."""
    return {
        "models": query(catalog, "select id, status from models order by id"),
        "alleles": query(catalog, "select p.model_id, a.gene, a.allele, a.count from alleles a "
                                  "join probes p on p.probe_id = a.probe order by 1, 2, 3"),
        "distances": query(catalog, "select model_a, model_b, round(similarity, 12) from distance_pairs "
                                    "order by 1, 2"),
        "tree": query(catalog, "select newick from tree_snapshots order by snapshot_id desc limit 1"),
        "writes": query(catalog, "select (select count(*) from probes), (select count(distinct model_id) "
                                 "from probes), (select count(*) from tree_snapshots), "
                                 "(select count(distinct inserted_model) from tree_snapshots)"),
    }


def _where(stdout: str) -> tuple[list[str], dict[str, int]]:
    """(writer processes, probe process -> models) from the launcher's `dask:` line."""
    m = PROBES.search(stdout)
    assert m, stdout[-2000:]
    writers = [w for w in m.group(3).split(", ") if w]
    probed = {w: int(n) for w, n in re.findall(r"(\S+:\d+) \((\d+)\)", m.group(6))}
    assert sum(probed.values()) == int(m.group(4))
    return writers, probed


def _pids(workers) -> set[int]:
    return {int(w.rsplit(":", 1)[1]) for w in workers}


@pytest.fixture(scope="module")
def reference(ecosystem, tmp_path_factory) -> dict:
    """The same backfill on Beam's in-process runner."""
    d = tmp_path_factory.mktemp("ref")
    r = _backfill(ecosystem, d / "ref.duckdb", d)
    assert r.returncode == 0, r.stderr
    got = _catalog(d / "ref.duckdb")
    assert len(got["models"]) == SIM_MODELS and {s for _, s in got["models"]} == {"indexed"}
    return got


@pytest.fixture
def cluster():
    """A dask cluster of two worker processes (one thread each), as a user would run one."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=40) as local, distributed.Client(local) as client:
        client.wait_for_workers(2, timeout=120)
        yield local, client


def test_backfill_on_dask_workers_gives_the_in_process_catalog(ecosystem, reference, cluster, tmp_path):
    local, client = cluster
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    catalog = tmp_path / "dask.duckdb"
    r = _backfill(ecosystem, catalog, tmp_path, "--dask-scheduler", local.scheduler_address)
    assert r.returncode == 0, r.stderr
    assert f"{SIM_MODELS} model(s) to index" in r.stdout
    got = _catalog(catalog)
    assert got == reference
    assert got["writes"] == [(SIM_MODELS, SIM_MODELS, SIM_MODELS, SIM_MODELS)]  # each model written once
    writers, probed = _where(r.stdout)
    # the probes ran in the cluster's worker processes, both of them; one of them wrote
    assert sum(probed.values()) == SIM_MODELS
    assert _pids(probed) <= worker_pids and len(probed) == 2, probed
    assert len(writers) == 1 and _pids(writers) <= worker_pids
    # again: nothing new to do, nothing written twice
    again = _backfill(ecosystem, catalog, tmp_path, "--dask-scheduler", local.scheduler_address)
    assert again.returncode == 0 and "0 model(s) to index" in again.stdout
    assert _catalog(catalog) == reference


def test_a_worker_killed_mid_backfill_loses_and_doubles_nothing(ecosystem, reference, cluster, tmp_path):
    """A third worker process kills itself (SIGKILL, no nanny to restart it) at the first probe
    it is given: dask runs that probe again on a surviving worker, and the catalog is the one
    the in-process runner builds, every model in it once."""
    local, client = cluster
    env = dict(os.environ, PHYLOLM_FAILPOINT="probe:1")
    doomed = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", local.scheduler_address,
                               "--nworkers", "1", "--nthreads", "1", "--no-nanny", "--name", "doomed"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(3, timeout=120)
        survivors = {p for a, p in client.run(os.getpid).items()} - {doomed.pid}
        catalog = tmp_path / "killed.duckdb"
        r = _backfill(ecosystem, catalog, tmp_path, "--dask-scheduler", local.scheduler_address)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 60
        while doomed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert doomed.returncode == -signal.SIGKILL  # it really died, at a probe of this backfill
        got = _catalog(catalog)
        assert got == reference
        assert got["writes"] == [(SIM_MODELS, SIM_MODELS, SIM_MODELS, SIM_MODELS)]
        writers, probed = _where(r.stdout)
        assert sum(probed.values()) == SIM_MODELS and _pids(probed) <= survivors | {doomed.pid}
        assert doomed.pid not in _pids(writers)
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=30)


def test_dask_workers_starts_its_own_cluster(ecosystem, reference, tmp_path):
    """`--dask-workers 2`: the CLI starts a local cluster of two worker processes for the job
    and stops it after; the probes ran in processes other than the launcher's."""
    catalog = tmp_path / "own.duckdb"
    r = _backfill(ecosystem, catalog, tmp_path, "--dask-workers", "2")
    assert r.returncode == 0, r.stderr
    assert "local cluster of 2 worker process(es)" in r.stdout
    assert _catalog(catalog) == reference
    writers, probed = _where(r.stdout)
    assert 1 <= len(probed) <= 2 and len(writers) == 1


def test_dask_options_are_refused_where_they_cannot_work(ecosystem, tmp_path):
    r = _backfill(ecosystem, tmp_path / "c.duckdb", tmp_path, "--dask-workers", "2", "--runner=FlinkRunner")
    assert r.returncode == 2 and "DaskRunner" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("watch", "--once", "--hub", str(ecosystem), "--catalog", str(tmp_path / "w.duckdb"),
                "--backend", "simulated", "--runner", "dask", cwd=tmp_path)
    assert r.returncode == 2 and "backfill" in r.stderr and "Traceback" not in r.stderr


def test_backfill_help_explains_the_dask_runner():
    r = run_cli("backfill", "--help", env={"COLUMNS": "200"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--dask-workers" in text and "--dask-scheduler" in text and "--runner dask" in text
