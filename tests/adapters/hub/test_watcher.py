"""The watcher and downloader through the real huggingface_hub client and the project's endpoint."""
from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.helpers.hub_repos import make_repo
from indexer.errors import PhylolmError
from indexer.adapters.hub.client import HubClient, RetryPolicy, scrub
from indexer.testbed.hub import HubServer
from indexer.adapters.hub.watcher import ScreenPolicy, Watcher
from indexer.app.hub import open_hub
from schemas.records import ModelStatus

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, seed=0)
TOKEN = "hf_SeCrEtToKeN0123456789abcdef"


def next_watermark(records, since):
    """The watermark after a poll whose records are all applied: the newest upload seen (the
    writer moves it model by model), or ``since`` unchanged."""
    return max([r.created_at for r in records if r.created_at is not None] + ([since] if since else []),
               default=None)


@pytest.fixture
def screening_hub(tmp_path: Path) -> Path:
    """One repository per screening outcome, uploaded a day apart."""
    root = tmp_path / "hub"
    day = lambda i: T0 + timedelta(days=i)  # noqa: E731
    make_repo(root, "base/lm", created_at=day(0))
    make_repo(root, "kid/ft", created_at=day(1), base_model="base/lm", relation="finetune", seed=1)
    make_repo(root, "bad/remote-code", created_at=day(2), auto_map=True)
    make_repo(root, "bad/pickle", created_at=day(3), weights=False, extra_files={"pytorch_model.bin": b"\x80" * 64})
    make_repo(root, "bad/gated", created_at=day(4), gated=True)
    make_repo(root, "bad/too-big", created_at=day(5), n_params=50_000)
    make_repo(root, "bad/classifier", created_at=day(6), pipeline_tag="text-classification")
    make_repo(root, "bad/py-file", created_at=day(7), extra_files={"modeling_evil.py": b"import os"})
    make_repo(root, "kid/merge", created_at=day(8), base_model="base/lm", relation="merge", seed=2)
    return root


EXPECTED = {
    "base/lm": (ModelStatus.discovered, None),
    "kid/ft": (ModelStatus.discovered, None),
    "bad/remote-code": (ModelStatus.skipped, "remote code"),
    "bad/pickle": (ModelStatus.skipped, "pickle-only checkpoint"),
    "bad/gated": (ModelStatus.skipped, "gated"),
    "bad/too-big": (ModelStatus.skipped, "too large"),
    "bad/classifier": (ModelStatus.skipped, "not text-generation"),
    # .py files with a native architecture and no auto_map: nothing would run them (they are
    # never downloaded), so the model is probed (tiiuae/falcon-7b-instruct is such a repo).
    "bad/py-file": (ModelStatus.discovered, None),
    "kid/merge": (ModelStatus.discovered, None),
}


def _watcher(url: str, **kw) -> Watcher:
    client = HubClient(url, timeout=2.0, retry=FAST)
    return Watcher(client, ScreenPolicy(max_bytes=100_000, has_token=client.has_token), page_size=2, **kw)


def test_screening_from_metadata_in_upload_order(screening_hub: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(screening_hub) as url:
        watcher = _watcher(url)
        records = list(watcher.list_new_models(None))
    assert [r.id for r in records] == list(EXPECTED)  # oldest first
    for r in records:
        status, reason = EXPECTED[r.id]
        assert r.status == status, (r.id, r.reason)
        assert (r.reason is None) if reason is None else r.reason.startswith(reason), (r.id, r.reason)
    by_id = {r.id: r for r in records}
    assert by_id["kid/ft"].base_models == ("base/lm",) and by_id["kid/ft"].base_model_relation == "finetune"
    assert by_id["kid/merge"].base_model_relation == "merge" and by_id["base/lm"].license == "apache-2.0"
    assert by_id["base/lm"].size_bytes == 64 * 4 and by_id["bad/too-big"].size_bytes == 200_000
    assert all(len(r.revision) == 40 for r in records)
    assert watcher.report.pages == 5 and watcher.report.error is None


def test_watermark_limit_and_same_instant_uploads(screening_hub: Path) -> None:
    with HubServer(screening_hub) as url:
        watcher = _watcher(url)
        since = T0 + timedelta(days=6)
        assert [r.id for r in watcher.list_new_models(since)] == ["bad/classifier", "bad/py-file", "kid/merge"]
        # Listing stopped at the watermark instead of paging to the end.
        assert watcher.report.items < len(EXPECTED)
        assert [r.id for r in watcher.list_new_models(since, skip_ids=["bad/classifier"])] == [
            "bad/py-file", "kid/merge"]
        assert [r.id for r in watcher.list_new_models(None, limit=2)] == ["base/lm", "kid/ft"]
        assert [r.id for r in watcher.list_new_models(None, author="kid")] == ["kid/ft", "kid/merge"]
        assert [r.id for r in watcher.list_new_models(None, search="merge")] == ["kid/merge"]
        records = list(watcher.list_new_models(since))
        mark = next_watermark(records, since)
        assert mark == T0 + timedelta(days=8)
        # A new upload after the watermark is the only thing the next poll sees.
        make_repo(screening_hub, "late/one", created_at=T0 + timedelta(days=9))
        assert [r.id for r in watcher.list_new_models(mark, skip_ids=["kid/merge"])] == ["late/one"]


def test_fetch_downloads_only_safe_files_at_the_listed_revision(screening_hub: Path, tmp_path: Path) -> None:
    (screening_hub / "kid/ft/training_args.bin").write_bytes(b"\x80pickle")
    (screening_hub / "kid/ft/helper.py").write_text("raise SystemExit")
    with HubServer(screening_hub) as url:
        client = HubClient(url, timeout=2.0, retry=FAST)
        watcher = Watcher(client, ScreenPolicy(max_bytes=100_000), page_size=50)
        record = next(r for r in watcher.list_new_models(None) if r.id == "base/lm")
        got, folder = watcher.fetch(record, tmp_path / "cache")
        assert got == record and folder is not None and folder.name == record.revision
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        weights = load_file(str(folder / "model.safetensors"))
        assert weights["w"].shape == (64,)
        # The direct API refuses code and pickle even for a repository the screen would skip.
        path = client.download("kid/ft", "main", tmp_path / "cache2")
        assert not list(path.glob("*.py")) and not list(path.glob("*.bin"))
        # Budget enforced again from the file sizes at download time.
        small = Watcher(client, ScreenPolicy(max_bytes=100))
        again, folder = small.fetch(record, tmp_path / "cache3")
        assert folder is None and again.status == ModelStatus.skipped and "exceeds the budget" in again.reason


def test_fetch_after_deletion_or_change_is_a_recorded_failure(screening_hub: Path, tmp_path: Path) -> None:
    with HubServer(screening_hub) as url:
        watcher = _watcher(url)
        records = {r.id: r for r in watcher.list_new_models(None)}
        shutil.rmtree(screening_hub / "kid/ft")  # deleted between listing and download
        got, folder = watcher.fetch(records["kid/ft"], tmp_path / "c")
        assert folder is None and got.status == ModelStatus.failed and "not found" in got.reason
        (screening_hub / "kid/merge/config.json").write_text('{"architectures": ["LlamaForCausalLM"], "x": 1}')
        got, folder = watcher.fetch(records["kid/merge"], tmp_path / "c")
        assert folder is None and got.status == ModelStatus.failed and "no longer exists" in got.reason
        # The watch goes on: the others still download.
        got, folder = watcher.fetch(records["base/lm"], tmp_path / "c")
        assert folder is not None and got.status == ModelStatus.discovered


def test_token_from_environment_is_used_and_never_leaks(screening_hub: Path, tmp_path: Path, monkeypatch,
                                                        caplog) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    with HubServer(screening_hub, tokens={TOKEN}) as url:
        client = HubClient(url, timeout=2.0, retry=FAST)
        assert client.has_token and TOKEN not in repr(client)
        watcher = Watcher(client, ScreenPolicy(max_bytes=100_000, has_token=True), page_size=3)
        records = {r.id: r for r in watcher.list_new_models(None)}
        assert records["bad/gated"].status == ModelStatus.discovered  # a token opens gated models
        got, folder = watcher.fetch(records["bad/gated"], tmp_path / "c")
        assert folder is not None and (folder / "model.safetensors").is_file()
    # A token the Hub refuses: the failure is recorded, the token is not in it.
    with HubServer(screening_hub, tokens={"hf_someoneElsesToken999"}) as url:
        watcher = Watcher(HubClient(url, timeout=2.0, retry=FAST), ScreenPolicy(max_bytes=100_000, has_token=True))
        records = {r.id: r for r in watcher.list_new_models(None)}
        got, folder = watcher.fetch(records["bad/gated"], tmp_path / "d")
        assert folder is None and got.status == ModelStatus.skipped
    dumped = " ".join(r.model_dump_json() for r in records.values()) + got.model_dump_json()
    assert TOKEN not in dumped and TOKEN not in caplog.text
    assert scrub(f"failed with Authorization: Bearer {TOKEN} at x") == "failed with Authorization: Bearer *** at x"
    assert TOKEN not in scrub(f"echo {TOKEN}")


def test_open_hub_resolves_urls_folders_and_errors(screening_hub: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/mirror/")
    with open_hub(None) as url:
        assert url == "http://127.0.0.1:9/mirror"
    with open_hub("https://example.org/hub/") as url:
        assert url == "https://example.org/hub"
    with open_hub(screening_hub) as url:
        assert url.startswith("http://127.0.0.1:")
        assert len(list(_watcher(url).list_new_models(None))) == len(EXPECTED)
    with pytest.raises(PhylolmError, match="neither an http"):
        with open_hub(tmp_path / "missing"):
            pass


def test_backlog_larger_than_one_poll_drains_in_order_without_loss(screening_hub: Path) -> None:
    with HubServer(screening_hub) as url:
        watcher = _watcher(url, max_items=4)
        since, seen, polls = None, [], 0
        while True:
            batch = list(watcher.list_new_models(since, skip_ids=[r.id for r in seen if r.created_at == since]))
            if not batch:
                break
            polls += 1
            seen += batch
            since = next_watermark(batch, since)
        assert [r.id for r in seen] == list(EXPECTED) and polls == 3
