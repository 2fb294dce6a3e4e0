"""Hub fault injection: the real huggingface_hub client against the project's endpoint in
fault mode. For every fault the poll ends (no exception, no hang), the watch goes on, and every
model ends with a recorded status and reason — or, when the listing itself cannot be had, the
poll records nothing and the next poll (fault gone) records everything: nothing is lost.

Timeouts and backoff are tiny so that the suite runs in seconds. Waiting is real except where a
test records the waits to check ``Retry-After`` (said there).
"""
from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.helpers.hub_repos import make_repo
from indexer.testbed.hub import faults as F
from indexer.adapters.hub.client import HubClient, RetryPolicy
from indexer.testbed.hub import HubServer
from indexer.adapters.hub.watcher import ScreenPolicy, Watcher
from schemas.records import ModelStatus

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
LISTING = r"^/api/models$"
INFO = r"^/api/models/[^/]+/[^/]+(/revision/[^/]+)?$"
RESOLVE = r"/resolve/"
TREE = r"/tree/"
IDS = ["a/m0", "a/m1", "b/m2", "b/m3", "c/m4", "c/m5"]


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    for i, rid in enumerate(IDS):
        make_repo(root, rid, created_at=T0 + timedelta(hours=i), seed=i)
    return root


def _client(url: str, *, timeout: float = 0.5, attempts: int = 4, sleep=None) -> HubClient:
    kw = {"sleep": sleep} if sleep else {}
    return HubClient(url, timeout=timeout, retry=RetryPolicy(attempts=attempts, base=0.02, cap=0.1, seed=1), **kw)


def _poll(url: str, since=None, **kw) -> tuple[Watcher, list]:
    client_kw = {k: kw.pop(k) for k in ("timeout", "attempts", "sleep") if k in kw}
    watcher = Watcher(_client(url, **client_kw), ScreenPolicy(max_bytes=10_000), page_size=2, **kw)
    return watcher, list(watcher.list_new_models(since))


def _all_discovered(records: list) -> None:
    assert [r.id for r in records] == IDS
    assert all(r.status == ModelStatus.discovered for r in records), [(r.id, r.reason) for r in records]


# -- listing: transient faults are retried, the poll is complete -----------------------------

@pytest.mark.parametrize("fault", [
    F.http_error(500, LISTING, times=2),
    F.http_error(502, LISTING, times=1, skip=1),
    F.http_error(503, LISTING, times=3),
    F.http_error(504, LISTING, times=1, skip=2),
    F.connection_reset(LISTING, times=1, skip=1),
    F.connection_reset(LISTING, times=2),
    F.stall(2.0, LISTING, times=1, skip=1),
    F.malformed_json(LISTING, times=1),
    F.malformed_json(LISTING, times=2, skip=1),
], ids=lambda f: f"{f.kind}-{f.status if f.kind == 'status' else ''}-x{f.times}-skip{f.skip}")
def test_transient_listing_faults_are_retried(hub: Path, fault: F.Fault) -> None:
    plan = F.FaultPlan(fault)
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url, timeout=0.3)
    assert plan.fired() == fault.times
    assert watcher.report.retries == fault.times and watcher.report.error is None
    _all_discovered(records)


def test_rate_limit_honours_retry_after(hub: Path) -> None:
    waits: list[float] = []  # records the waits instead of sleeping 3 s (the waits are what is checked)
    plan = F.FaultPlan(F.rate_limit(3, LISTING, times=2, skip=1))
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url, sleep=waits.append)
    assert plan.fired("rate_limit") == 2 and len(waits) == 2 and all(w >= 3 for w in waits)
    _all_discovered(records)


def test_persistent_listing_outage_records_nothing_then_recovers(hub: Path) -> None:
    plan = F.FaultPlan(F.http_error(503, LISTING, times=-1, skip=1))
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url, attempts=3)
        assert records == [] and "503" in watcher.report.error  # page 2 never came: nothing yielded
        plan.faults.clear()  # the Hub is back
        watcher, records = _poll(url)
    _all_discovered(records)


def test_persistent_timeouts_end_the_poll_not_the_job(hub: Path) -> None:
    plan = F.FaultPlan(F.stall(3.0, LISTING, times=-1))
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url, timeout=0.2, attempts=2)
        assert records == [] and "gave up after 2 attempts" in watcher.report.error
        plan.faults.clear()
        _, records = _poll(url)
    _all_discovered(records)


def test_looping_pagination_is_detected(hub: Path) -> None:
    plan = F.FaultPlan(F.looping_link())
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url)
        assert records == [] and watcher.report.loop_detected and "loops" in watcher.report.error
        assert watcher.report.pages <= 3
        plan.faults.clear()
        _, records = _poll(url)
    _all_discovered(records)


def test_huge_listing_is_bounded(hub: Path) -> None:
    plan = F.FaultPlan(F.huge_listing(1_000_000, times=-1))
    with HubServer(hub, faults=plan) as url:
        # With a watermark: the listing never reaches it within max_pages -> nothing recorded.
        watcher, records = _poll(url, since=T0, max_pages=20, max_items=30)
        assert records == [] and watcher.report.pages == 20 and "did not reach the watermark" in watcher.report.error
        # Without one: the 30 oldest of what 20 pages showed, each with a recorded status.
        watcher, records = _poll(url, max_pages=20, max_items=30)
        assert len(records) == 30 and watcher.report.truncated and watcher.report.error is None
        assert all(r.status == ModelStatus.failed and "not found" in r.reason for r in records)


# -- metadata of the wrong shape ---------------------------------------------------------------

@pytest.mark.parametrize("fault, expect", [
    (F.wrong_types(("createdAt",), LISTING, times=-1), "malformed"),
    (F.wrong_types(("siblings",), LISTING, times=-1), "malformed"),
    (F.wrong_types(("safetensors", "tags", "gated", "config"), LISTING, times=-1), "malformed"),
    (F.wrong_types(("cardData", "pipeline_tag", "author", "sha"), LISTING, times=-1), "any"),
    (F.missing_fields(("createdAt",), LISTING, times=-1), "malformed"),
    (F.missing_fields(("siblings", "safetensors"), LISTING, times=-1), "discovered"),
    (F.missing_fields(("safetensors",), LISTING, times=-1), "discovered"),
], ids=lambda v: "-".join(v.fields) + f"-{v.kind}" if isinstance(v, F.Fault) else v)
def test_malformed_metadata_is_a_recorded_failure(hub: Path, fault: F.Fault, expect: str) -> None:
    with HubServer(hub, faults=F.FaultPlan(fault)) as url:
        watcher, records = _poll(url)
    assert watcher.report.error is None
    assert sorted(r.id for r in records) == sorted(IDS)  # every model has a record
    for r in records:
        if expect == "discovered":  # the watcher fetched the missing metadata from model info
            assert r.status == ModelStatus.discovered, r.reason
        elif expect == "malformed":
            assert r.status == ModelStatus.failed and r.reason.startswith("malformed Hub metadata"), r.reason
        else:
            assert r.status in set(ModelStatus) and (r.status == ModelStatus.discovered or r.reason)


def test_item_with_a_bad_id_is_left_out_and_counted(hub: Path) -> None:
    with HubServer(hub, faults=F.FaultPlan(F.wrong_types(("id",), LISTING, times=1))) as url:
        watcher, records = _poll(url)
    assert len(watcher.report.invalid_items) == 2  # the first page's two items
    assert [r.id for r in records] == IDS[:4]


def test_model_info_faults_during_screening(hub: Path) -> None:
    # The listing lacks sizes, so screening asks model info, which fails in several ways.
    plan = F.FaultPlan(F.missing_fields(("safetensors", "siblings"), LISTING, times=-1),
                       F.http_error(500, INFO, times=1), F.connection_reset(INFO, times=1, skip=1),
                       F.malformed_json(INFO, times=1, skip=2), F.stall(2.0, INFO, times=1, skip=3),
                       F.rate_limit(0, INFO, times=1, skip=4))
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url, timeout=0.3)
    assert plan.fired() >= 6
    _all_discovered(records)
    # Wrong-typed model info: a failure with its reason, the others go on.
    plan = F.FaultPlan(F.missing_fields(("safetensors", "siblings"), LISTING, times=-1),
                       F.wrong_types(("siblings",), INFO, times=1))
    with HubServer(hub, faults=plan) as url:
        watcher, records = _poll(url)
    assert records[0].status == ModelStatus.failed and "malformed" in records[0].reason
    assert all(r.status == ModelStatus.discovered for r in records[1:])


# -- downloads -------------------------------------------------------------------------------

def _listed(url: str) -> tuple[Watcher, dict]:
    watcher, records = _poll(url)
    return watcher, {r.id: r for r in records}


@pytest.mark.parametrize("fault", [
    F.http_error(503, RESOLVE, method="GET", times=1),
    F.http_error(500, INFO, times=1),
    F.connection_reset(RESOLVE, method="GET", times=1),
    F.connection_reset(TREE, times=1),
    F.stall(2.0, RESOLVE, method="HEAD", times=1),
    F.rate_limit(0, RESOLVE, method="GET", times=1),
    F.malformed_json(INFO, times=1),
    F.malformed_json(TREE, times=1),
], ids=lambda f: f"{f.kind}-{f.path.strip('/^$')[:12]}-{f.method}")
def test_transient_download_faults_are_retried(hub: Path, tmp_path: Path, fault: F.Fault) -> None:
    plan = F.FaultPlan()
    with HubServer(hub, faults=plan) as url:
        watcher, records = _listed(url)
        watcher.client.timeout = 0.3
        plan.faults.append(fault)
        got, folder = watcher.fetch(records["b/m2"], tmp_path / "cache")
    assert plan.fired() == 1
    assert folder is not None and got.status == ModelStatus.discovered, got.reason
    assert (folder / "model.safetensors").read_bytes() == (hub / "b/m2/model.safetensors").read_bytes()


def test_persistent_download_failure_is_recorded(hub: Path, tmp_path: Path) -> None:
    plan = F.FaultPlan()
    with HubServer(hub, faults=plan) as url:
        watcher, records = _listed(url)
        plan.faults.append(F.http_error(502, RESOLVE, method="GET", times=-1))
        got, folder = watcher.fetch(records["a/m1"], tmp_path / "cache")
        assert folder is None and got.status == ModelStatus.failed and "502" in got.reason
        plan.faults.clear()
        got, folder = watcher.fetch(records["a/m1"], tmp_path / "cache")
        assert folder is not None and got.status == ModelStatus.discovered


def test_deleted_between_listing_and_download(hub: Path, tmp_path: Path) -> None:
    plan = F.FaultPlan()
    with HubServer(hub, faults=plan) as url:
        watcher, records = _listed(url)
        shutil.rmtree(hub / "c/m4")  # really deleted
        plan.faults.append(F.vanish("c/m5"))  # or reported gone by the Hub
        for rid in ("c/m4", "c/m5"):
            got, folder = watcher.fetch(records[rid], tmp_path / "cache")
            assert folder is None and got.status == ModelStatus.failed and "not found" in got.reason
        got, folder = watcher.fetch(records["a/m0"], tmp_path / "cache")
        assert folder is not None


def test_revision_changing_mid_download_is_detected(hub: Path, tmp_path: Path) -> None:
    plan = F.FaultPlan()
    with HubServer(hub, faults=plan) as url:
        watcher, records = _listed(url)
        plan.faults.append(F.mutate_revision("b/m3", skip=1))
        got, folder = watcher.fetch(records["b/m3"], tmp_path / "cache")
        assert plan.fired("mutate_revision") == 1
        assert folder is None and got.status == ModelStatus.failed and "changed during download" in got.reason
        # The next poll sees the new revision, and it downloads cleanly.
        _, again = _listed(url)
        assert again["b/m3"].revision != records["b/m3"].revision
        got, folder = watcher.fetch(again["b/m3"], tmp_path / "cache")
        assert folder is not None and folder.name == again["b/m3"].revision


def test_bytes_not_matching_the_listed_hash_are_refused(hub: Path, tmp_path: Path) -> None:
    """A Hub serving other bytes than its listing says (here: the weights rewritten in place,
    same size, modification time put back, so the server's hash cache goes stale and keeps
    announcing the old sha256) is caught by the client's hash check after download."""
    with HubServer(hub) as url:
        watcher, records = _listed(url)
        weights = hub / "a/m0/model.safetensors"
        st = weights.stat()
        with open(weights, "r+b") as fh:
            fh.seek(st.st_size - 1)
            last = fh.read(1)
            fh.seek(st.st_size - 1)
            fh.write(bytes([last[0] ^ 0xFF]))
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
        got, folder = watcher.fetch(records["a/m0"], tmp_path / "cache")
    assert folder is None and got.status == ModelStatus.failed
    assert "does not match the revision's hash" in got.reason
