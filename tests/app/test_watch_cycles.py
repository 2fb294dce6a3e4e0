"""The watch as a scheduled job meets the real Hub's volume: a bounded first poll, a probe budget
per cycle with a ranked queue that loses nothing across cycles and restarts, outages that a
scheduler sees (exit status 3, the polls table, `phylolm status`), and the `auto` backend.

Real parts throughout: the project's Hub server behaving the real way, the real
huggingface_hub client, a real DuckDB catalog, Beam's in-process runner, the CLI in a
subprocess; the simulated backend stands in for a GPU.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from indexer.adapters.catalog import Catalog
from indexer.testbed.hub import faults as F
from indexer.adapters.hub.client import RetryPolicy
from indexer.testbed.hub import HubServer
from indexer.app.job import JobConfig
from indexer.adapters.catalog import JobLock
from schemas.records import ModelRecord, ModelStatus, ProbeParams
from tests.helpers.cli import run_cli
from tests.helpers.catalog_checks import query
from tests.helpers.hub_repos import repos_by_upload

GENES, SAMPLES = 8, 8
JOB = ["--backend", "simulated", "--genes", str(GENES), "--samples", str(SAMPLES)]


def _simulate(out: Path, n: int, seed: int) -> list[Path]:
    r = run_cli("simulate", "--models", str(n), "--seed", str(seed), "--genes", str(GENES),
                "--samples", str(SAMPLES), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return repos_by_upload(out)


def _redate(repos: list[Path], times: list[datetime], **extra: list) -> dict[str, dict]:
    """Give the repositories new upload times (and downloads/likes); returns id -> sidecar."""
    out = {}
    for i, (repo, when) in enumerate(zip(repos, times)):
        side = json.loads((repo / ".hub.json").read_text())
        side["created_at"] = when.isoformat()
        side.update({k: v[i] for k, v in extra.items()})
        (repo / ".hub.json").write_text(json.dumps(side))
        out[f"{repo.parent.name}/{repo.name}"] = side
    return out


# -- 3. a safe first run -----------------------------------------------------------------------

def test_first_watch_once_touches_only_the_window(tmp_path: Path) -> None:
    """A Hub with a year of uploads and an empty catalog: the first `watch --once` lists and
    records only the last 24 hours, and says so."""
    repos = _simulate(tmp_path / "hub", 40, seed=2)
    now = datetime.now(timezone.utc)
    # One upload every ~9 days over a year; the three newest within the last day.
    times = [now - timedelta(days=365 - 9 * i) for i in range(37)] + [now - timedelta(hours=h) for h in (20, 9, 1)]
    dated = _redate(repos, times)
    recent = sorted(m for m, side in dated.items() if side["created_at"] >= (now - timedelta(hours=24)).isoformat())
    assert len(recent) == 3
    catalog = tmp_path / "c.duckdb"
    server = HubServer(tmp_path / "hub", page_size=5)
    url = server.start()
    try:
        r = run_cli("watch", "--once", "--hub", url, "--catalog", str(catalog), *JOB, cwd=tmp_path,
                    env={"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")})
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr[-2000:]
    assert "first poll looks back 24 h" in r.stderr
    assert sorted(m for (m,) in query(catalog, "select id from models")) == recent
    assert query(catalog, "select count(*) from models where status = 'indexed'") == [(3,)]
    # The listing stopped at the window: one page of five, not the year's 40 models.
    assert server.stats["listing_requests"] == 1 and server.stats["listing_items"] == 5
    assert query(catalog, "select complete, new_models from polls") == [(True, 3)]


# -- 4. keeping up with the volume -------------------------------------------------------------

@pytest.fixture(scope="module")
def busy_day(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """2,000 uploads over the last day, with downloads and likes (all distinct priorities)."""
    root = tmp_path_factory.mktemp("day") / "hub"
    repos = _simulate(root, 2000, seed=5)
    now = datetime.now(timezone.utc)
    rng = np.random.default_rng(7)
    times = [now - timedelta(hours=23) + timedelta(seconds=40 * i) for i in range(len(repos))]
    downloads = rng.permutation(20_000)[: len(repos)].tolist()
    likes = rng.integers(0, 50, len(repos)).tolist()
    return root, _redate(repos, times, downloads=downloads, likes=likes)


def _expected_priority(side: dict) -> float:
    # The weights the test runs with: downloads=1,likes=2 (see indexer.app.probe_queue).
    return round(math.log10(1 + side["downloads"]) + 2 * math.log10(1 + side["likes"]), 9)


def test_a_day_of_2000_uploads_with_a_budget_of_50_probes_a_cycle(busy_day, tmp_path: Path) -> None:
    from pipelines.run import run_watch

    root, sides = busy_day
    catalog = tmp_path / "c.duckdb"
    ranked = sorted(sides, key=lambda m: (-_expected_priority(sides[m]), -datetime.fromisoformat(
        sides[m]["created_at"]).timestamp(), m))
    with HubServer(root) as url:
        config = JobConfig(catalog=catalog, hub=url, backend="simulated", n_genes=GENES,
                           params=ProbeParams(n_samples=SAMPLES), cache_dir=tmp_path / "cache",
                           first_window_hours=24, probe_budget=50, priority="downloads=1,likes=2", use_queue=True)
        with JobLock(catalog):
            run_watch(config, interval=60, once=True)
        indexed = {m for (m,) in query(catalog, "select id from models where status = 'indexed'")}
        queue = query(catalog, "select rank, id from queue order by rank")
        assert indexed == set(ranked[:50])  # the top-ranked 50
        assert [m for _, m in queue] == ranked[50:] and [r for r, _ in queue] == list(range(1, 1951))
        assert query(catalog, "select complete, new_models, taken, queued from polls") == [(True, 2000, 50, 1950)]
        # Cycle 2 takes the queue's first 50; nothing new was uploaded meanwhile.
        with JobLock(catalog):
            run_watch(config, interval=60, once=True)
        second = {m for (m,) in query(catalog, "select id from models where status = 'indexed'")} - indexed
        assert second == set(ranked[50:100])
        # A restart (a new process: the CLI, as cron runs it) takes the next 50.
        r = run_cli("watch", "--once", "--hub", url, "--catalog", str(catalog), *JOB, "--probe-budget", "50",
                    "--priority", "downloads=1,likes=2", cwd=tmp_path, env={"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")})
        assert r.returncode == 0, r.stderr[-2000:]
        status = json.loads(run_cli("status", "--catalog", str(catalog), "--json", cwd=tmp_path).stdout)
    by_status = dict(query(catalog, "select status, count(*) from models group by status"))
    assert by_status == {"indexed": 150, "queued": 1850}  # nothing lost, nothing twice
    assert {m for (m,) in query(catalog, "select id from models where status = 'indexed'")} == set(ranked[:150])
    assert query(catalog, "select count(*), count(distinct model_id) from probes") == [(150, 150)]
    assert query(catalog, "select count(*) from tree_snapshots") == [(150,)]
    assert status["backlog"]["queued"] == 1850 and status["backlog"]["probed_last_day"] == 150
    assert status["backlog"]["models_per_hour"] > 0 and status["backlog"]["hours_to_clear"] > 0
    assert status["polls"]["last_complete"] is not None and status["polls"]["last_failed"] is None


def test_newest_first_queue_order(busy_day, tmp_path: Path) -> None:
    """The same day, `newest` order: a cycle takes the newest uploads, whatever their rank."""
    from indexer.app.listing import ListStep

    root, sides = busy_day
    with HubServer(root) as url:
        step = ListStep(JobConfig(catalog=tmp_path / "c.duckdb", hub=url, first_window_hours=24, probe_budget=10,
                                  queue_order="newest", use_queue=True, cache_dir=tmp_path / "cache"))
        records = step()
    newest = sorted(sides, key=lambda m: sides[m]["created_at"], reverse=True)[:10]
    taken = [r.id for r in records if r.status == ModelStatus.discovered]
    assert taken == newest[::-1]  # recorded in upload order, whatever the rank
    assert sum(r.status == ModelStatus.queued for r in records) == 1990
    times = [r.created_at for r in records]
    assert times == sorted(times)
    assert step.last_poll.complete and (step.last_poll.taken, step.last_poll.queued) == (10, 1990)


# -- 5. outages are visible to the scheduler ---------------------------------------------------

def test_watch_once_with_no_hub_exits_3_and_status_shows_it(tmp_path: Path) -> None:
    repos = _simulate(tmp_path / "hub", 3, seed=4)
    _redate(repos, [datetime.now(timezone.utc) - timedelta(hours=h) for h in (3, 2, 1)])
    catalog = tmp_path / "c.duckdb"
    env = {"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")}
    dead = "http://127.0.0.1:9"  # nothing listens there: every request is refused
    r = run_cli("watch", "--once", "--hub", dead, "--catalog", str(catalog), *JOB, cwd=tmp_path, env=env)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Hub listing did not complete") and "(exit 3)" in last
    assert "Traceback" not in r.stderr
    status = json.loads(run_cli("status", "--catalog", str(catalog), "--json", cwd=tmp_path).stdout)
    assert status["polls"]["last_failed"] is not None and status["polls"]["last_complete"] is None
    assert "listing models" in status["polls"]["last_error"]
    # The Hub is back: exit 0, the models are indexed, and status shows both times.
    with HubServer(tmp_path / "hub") as url:
        r = run_cli("watch", "--once", "--hub", url, "--catalog", str(catalog), *JOB, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    status = json.loads(run_cli("status", "--catalog", str(catalog), "--json", cwd=tmp_path).stdout)
    assert status["polls"]["last_complete"] > status["polls"]["last_failed"]
    assert status["models"] == {"indexed": 3}
    text = run_cli("status", "--catalog", str(catalog), cwd=tmp_path).stdout
    assert "last complete poll 20" in text and "last failed poll 20" in text


def test_the_streaming_watch_retries_a_failed_listing_with_backoff(tmp_path: Path, caplog) -> None:
    """The poll whose listing fails is recorded as failed and retried with backoff, from its
    cursor, within the same interval; the next try completes."""
    from pipelines.transforms import ListNewModelsFn
    from indexer.app.job import PollReport

    repos = _simulate(tmp_path / "hub", 6, seed=6)
    _redate(repos, [datetime.now(timezone.utc) - timedelta(hours=6 - i) for i in range(6)])
    plan = F.FaultPlan(F.http_error(503, r"^/api/models$", times=2, skip=1))  # page 2 fails twice
    with HubServer(tmp_path / "hub", faults=plan, page_size=2) as url:
        fn = ListNewModelsFn(JobConfig(catalog=tmp_path / "c.duckdb", hub=url, first_window_hours=24,
                                       cache_dir=tmp_path / "cache"), retry_within=4, retry_base=0.5)
        fn.setup()
        fn.step.client.retry = RetryPolicy(attempts=2, base=0.01, cap=0.02, seed=0)
        out = list(fn.process(1.0))
    polls = [o for o in out if isinstance(o, PollReport)]
    models = [o for o in out if isinstance(o, ModelRecord)]
    assert [p.complete for p in polls] == [False, True] and "503" in polls[0].error
    assert len(models) == 6 and all(m.status == ModelStatus.discovered for m in models)
    assert "retrying in" in caplog.text


# -- 6. backend auto -------------------------------------------------------------------------

def test_backend_auto_is_chosen_and_explained(tmp_path: Path, monkeypatch) -> None:
    from indexer.adapters.probers import base

    monkeypatch.setattr(base, "gpu_present", lambda: (False, "no GPU found"))
    assert base.resolve_backend("auto") == ("transformers", "auto: no GPU found")
    monkeypatch.setattr(base, "gpu_present", lambda: (True, "an NVIDIA GPU is present"))
    monkeypatch.setattr(base, "vllm_present", lambda: (False, "vLLM is not installed"))
    assert base.resolve_backend("auto") == ("transformers", "auto: vLLM is not installed")
    monkeypatch.setattr(base, "vllm_present", lambda: (True, "vLLM is installed"))
    assert base.resolve_backend("auto") == ("vllm", "auto: an NVIDIA GPU is present and vLLM is installed")
    assert base.resolve_backend("simulated") == ("simulated", "chosen explicitly")
    # status says which one this machine gets and why (the default setting is auto)
    Catalog(tmp_path / "c.duckdb", create=True).close()
    status = json.loads(run_cli("status", "--catalog", str(tmp_path / "c.duckdb"), "--json", cwd=tmp_path).stdout)
    assert status["backend"]["setting"] == "auto" and status["settings"]["backend"]["source"] == "default"
    assert status["backend"]["chosen"] in ("vllm", "transformers") and status["backend"]["why"].startswith("auto: ")
