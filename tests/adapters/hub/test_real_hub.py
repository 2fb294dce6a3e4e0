"""The Hub as it really behaves, through the real huggingface_hub client and the project's
server behaving the real way: rate limits announced by RateLimit headers (429s without
Retry-After), listings resumed from their cursor, sizes of quantized repositories, the Hub's
own lineage (baseModels, base_model: tags, canonical ids), remote code judged from auto_map,
401/403/400/307 answers. Where a test waits for a rate-limit window, the wait is real and
short (windows of 1-3 s); the only timing asserted is "waited at least N seconds".
"""
from __future__ import annotations

import http.client
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import BadRequestError, GatedRepoError
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import parse_ratelimit_headers
from safetensors.numpy import save_file

from indexer.testbed.hub import faults as F
from indexer.adapters.hub.client import HubClient, HubError, RetryPolicy
from indexer.testbed.hub import HubServer
from indexer.adapters.hub.watcher import ScreenPolicy, Watcher, lineage, weights_bytes
from schemas.records import ModelStatus
from tests.helpers.hub_repos import make_repo

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05, seed=0)
LISTING = r"^/api/models$"


def _raw(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def _fresh_window(window: float) -> None:
    """Start at the beginning of a fixed window, so that a test's requests fall in one."""
    time.sleep(window - (time.time() % window) + 0.02)


def _hub(tmp_path: Path, n: int, prefix: str = "a/m") -> Path:
    root = tmp_path / "hub"
    for i in range(n):
        make_repo(root, f"{prefix}{i}", created_at=T0 + timedelta(hours=i), seed=i)
    return root


def _watcher(url: str, page_size: int = 2, **kw) -> Watcher:
    client = HubClient(url, timeout=2.0, retry=FAST)
    return Watcher(client, ScreenPolicy(max_bytes=100_000), page_size=page_size, **kw)


# -- rate limits ------------------------------------------------------------------------------

def test_every_answer_announces_the_window_and_a_429_has_no_retry_after(tmp_path: Path) -> None:
    root = _hub(tmp_path, 2)
    with HubServer(root, rate_window=3, rate_quotas={"api": 3}) as url:
        _fresh_window(3)
        seen = [_raw(url, "/api/models") for _ in range(4)]
    assert [s for s, _, _ in seen] == [200, 200, 200, 429]
    infos = [parse_ratelimit_headers(h) for _, h, _ in seen]  # huggingface_hub's own parser
    assert [i.remaining for i in infos] == [2, 1, 0, 0]
    assert all(i.resource_type == "api" and i.limit == 3 and i.window_seconds == 3 for i in infos)
    assert 1 <= infos[-1].reset_in_seconds <= 3
    assert "retry-after" not in seen[-1][1]


def test_a_429_with_t_n_waits_at_least_n_seconds_then_returns_every_model(tmp_path: Path) -> None:
    root = _hub(tmp_path, 6)
    # The Hub's 429 (RateLimit "api";r=0;t=2, no Retry-After) on the second page, twice.
    plan = F.FaultPlan(F.rate_limit(2, LISTING, times=2, skip=1, hub_headers=True))
    with HubServer(root, faults=plan) as url:
        watcher = _watcher(url)
        started = time.monotonic()
        records = list(watcher.list_new_models(None))
        elapsed = time.monotonic() - started
    assert plan.fired("rate_limit") == 2
    assert [r.id for r in records] == [f"a/m{i}" for i in range(6)]
    assert watcher.report.rate_limited == 2 and watcher.report.error is None
    assert elapsed >= 2 * 2 and watcher.report.waited >= 4


def test_window_exhaustion_and_reset_announced_by_the_server(tmp_path: Path) -> None:
    root = _hub(tmp_path, 6)
    server = HubServer(root, rate_window=3, rate_quotas={"api": 4})
    url = server.start()
    try:
        _fresh_window(3)
        for _ in range(4):
            _raw(url, "/api/models?limit=1")
        watcher = _watcher(url)
        started = time.monotonic()
        records = list(watcher.list_new_models(None))
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    announced = server.stats["announced_resets"]
    assert announced and elapsed >= announced[0]  # waited at least the t of the 429 it met
    assert [r.id for r in records] == [f"a/m{i}" for i in range(6)]


def test_pacing_keeps_a_long_listing_under_the_quota(tmp_path: Path) -> None:
    root = _hub(tmp_path, 8)
    server = HubServer(root, rate_window=1, rate_quotas={"api": 4})
    url = server.start()
    try:
        _fresh_window(1)
        watcher = _watcher(url, page_size=1)
        records = list(watcher.list_new_models(None))
    finally:
        server.stop()
    assert len(records) == 8 and watcher.report.pages == 8
    assert server.stats["rate_limited"] == 0  # never hit the wall: it waited for the resets
    assert watcher.client.pacer.waited > 0


def test_the_real_client_lists_through_the_rate_limited_server(tmp_path: Path) -> None:
    """huggingface_hub's own listing (HfApi.list_models) reads the server's 429 the way it reads
    the Hub's: it waits for the announced reset and goes on."""
    root = _hub(tmp_path, 4)
    server = HubServer(root, rate_window=2, rate_quotas={"api": 2})
    url = server.start()
    try:
        _fresh_window(2)
        ids = [m.id for m in HfApi(endpoint=url, token=False).list_models(limit=None, sort="created_at")]
    finally:
        server.stop()
    # huggingface_hub sends no page size here: the server's default page holds all four.
    assert ids == [f"a/m{i}" for i in (3, 2, 1, 0)]


# -- listings resumed from their cursor -------------------------------------------------------

def test_an_interrupted_listing_resumes_from_its_cursor(tmp_path: Path) -> None:
    root = _hub(tmp_path, 10)
    resume_file = tmp_path / "state" / "listing.json"
    since = T0 - timedelta(days=1)
    plan = F.FaultPlan(F.http_error(503, LISTING, times=-1, skip=3))  # pages 1-3 come, 4 never
    server = HubServer(root, faults=plan)
    url = server.start()
    try:
        watcher = _watcher(url, resume_path=resume_file)
        watcher.client.retry = RetryPolicy(attempts=2, base=0.01, cap=0.02, seed=0)
        assert list(watcher.list_new_models(since)) == [] and "503" in watcher.report.error
        assert watcher.resume is not None and len(watcher.resume.items) == 6 and resume_file.is_file()
        assert "cursor=" in watcher.resume.next_url
        plan.faults.clear()
        make_repo(root, "late/upload", created_at=T0 + timedelta(days=3))  # uploaded meanwhile
        before = server.stats["listing_requests"]
        # A new process (a cron run): the state file carries the cursor.
        again = _watcher(url, resume_path=resume_file)
        records = list(again.list_new_models(since))
        requests = server.stats["listing_requests"] - before
    finally:
        server.stop()
    assert [r.id for r in records] == [f"a/m{i}" for i in range(10)] + ["late/upload"]
    assert again.report.error is None and again.resume is None and not resume_file.exists()
    # The newest pages down to what was read (2), then pages 4 and 5 from the cursor (2): 4
    # requests, not the 6 of a listing from the top.
    assert requests == 4


# -- sizes -------------------------------------------------------------------------------------

def _weights(d: Path, tensors: dict, name: str = "model.safetensors") -> int:
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / name))
    return (d / name).stat().st_size


def test_sizes_of_quantized_repositories_and_root_level_weights(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    rng = np.random.default_rng(0)
    gptq = make_repo(root, "q/gptq-4bit", created_at=T0, weights=False,
                     config_extra={"quantization_config": {"quant_method": "gptq", "bits": 4}})
    gptq_bytes = _weights(gptq, {"qweight": rng.integers(0, 2**31, (64, 64), dtype=np.int32),
                                 "scales": rng.standard_normal(512).astype(np.float16)})
    bnb = make_repo(root, "q/bnb-4bit", created_at=T0 + timedelta(hours=1), weights=False,
                    config_extra={"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                          "bnb_4bit_quant_type": "nf4"}})
    bnb_bytes = _weights(bnb, {"w": rng.integers(0, 255, 8192, dtype=np.uint8),
                               "absmax": rng.standard_normal(128).astype(np.float32)})
    gguf = make_repo(root, "q/model-GGUF", created_at=T0 + timedelta(hours=2), weights=False,
                     extra_files={"model-Q4_K_M.gguf": b"GGUF" + b"\0" * 64})
    _weights(gguf, {"w": np.zeros(64, np.float32)}, "qad/model.safetensors")
    ckpt = make_repo(root, "q/with-checkpoints", created_at=T0 + timedelta(hours=3))
    _weights(ckpt, {"w": np.zeros(20_000, np.float32)}, "checkpoint-500/model.safetensors")
    with HubServer(root) as url:
        # The Hub counts logical parameters: 8 per packed I32 (4-bit), 2 per packed U8.
        listed = {m.id: m for m in HfApi(endpoint=url, token=False).list_models(expand=["safetensors", "config"])}
        assert listed["q/gptq-4bit"].safetensors.parameters == {"I32": 64 * 64 * 8, "F16": 512}
        naive = 64 * 64 * 8 * 4 + 512 * 2
        watcher = _watcher(url, page_size=10)
        watcher.policy = ScreenPolicy(max_bytes=30_000, quant_methods=frozenset({"gptq", "bitsandbytes", "gguf"}))
        records = {r.id: r for r in watcher.list_new_models(None)}
        client = watcher.client
        ckpt_info = client.model_info("q/with-checkpoints", files_metadata=True)
        folder = client.download("q/with-checkpoints", ckpt_info.sha, tmp_path / "cache")
    assert naive > 30_000  # the old rule put it over the budget
    assert records["q/gptq-4bit"].status == ModelStatus.discovered, records["q/gptq-4bit"].reason
    assert abs(records["q/gptq-4bit"].size_bytes - gptq_bytes) < 200  # the header is the difference
    assert records["q/bnb-4bit"].status == ModelStatus.discovered
    assert abs(records["q/bnb-4bit"].size_bytes - bnb_bytes) < 200
    # GGUF-only at the root (qad/ is not its weights): probed from its root GGUF file.
    assert records["q/model-GGUF"].status == ModelStatus.discovered, records["q/model-GGUF"].reason
    assert records["q/model-GGUF"].gguf_file == "model-Q4_K_M.gguf"
    assert records["q/model-GGUF"].size_bytes == 68
    # With sizes (blobs=true) the root-level files count, not a checkpoint folder's.
    assert weights_bytes(ckpt_info) == (ckpt / "model.safetensors").stat().st_size
    assert not (folder / "checkpoint-500").exists() and (folder / "model.safetensors").is_file()


# -- lineage -----------------------------------------------------------------------------------

def test_lineage_from_the_hubs_own_metadata(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    old, new = "meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B"
    make_repo(root, new, created_at=T0, sidecar_extra={"renamed_from": [old]})
    make_repo(root, "kid/adapter", created_at=T0 + timedelta(hours=1), base_model=old,
              extra_files={"adapter_config.json": b'{"peft_type": "LORA"}'})
    make_repo(root, "kid/gptq", created_at=T0 + timedelta(hours=2), base_model=new,
              config_extra={"quantization_config": {"quant_method": "gptq", "bits": 4}})
    make_repo(root, "kid/merge", created_at=T0 + timedelta(hours=3), base_model=[new, "kid/gptq"])
    make_repo(root, "kid/ft", created_at=T0 + timedelta(hours=4), base_model=old)
    make_repo(root, "kid/declared", created_at=T0 + timedelta(hours=5), base_model=new, relation="quantized")
    with HubServer(root) as url:
        api = HfApi(endpoint=url, token=False)
        info = api.model_info("kid/adapter", expand=["baseModels", "tags", "cardData"])
        records = {r.id: r for r in _watcher(url, page_size=3).list_new_models(None)}
    # What the Hub derives: canonical ids after the rename, relation inferred from the files.
    assert info.base_models == {"relation": "adapter", "models": [{"_id": info.base_models["models"][0]["_id"],
                                                                   "id": new}]}
    assert f"base_model:adapter:{new}" in info.tags and info.card_data["base_model"] == old
    expected = {"kid/adapter": ((new,), "adapter"), "kid/gptq": ((new,), "quantized"),
                "kid/merge": ((new, "kid/gptq"), "merge"), "kid/ft": ((new,), "finetune"),
                "kid/declared": ((new,), "quantized"), new: ((), None)}
    assert {k: (r.base_models, r.base_model_relation) for k, r in records.items()} == expected


def test_lineage_falls_back_on_tags_then_the_card() -> None:
    tags_only = ModelInfo(id="x/y", tags=["base_model:a/b", "base_model:quantized:a/b"],
                          cardData={"base_model": "a/old-name"})
    assert lineage(tags_only) == (("a/b",), "quantized")
    card_only = ModelInfo(id="x/y", tags=["transformers"], cardData={"base_model": ["a/b", "c/d"],
                                                                      "base_model_relation": "merge"})
    assert lineage(card_only) == (("a/b", "c/d"), "merge")
    assert lineage(ModelInfo(id="x/y", tags=[])) == ((), None)


# -- remote code -------------------------------------------------------------------------------

def test_remote_code_is_judged_from_auto_map(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    make_repo(root, "tiiuae/falcon-like", created_at=T0, config_extra={"architectures": ["FalconForCausalLM"],
                                                                        "model_type": "falcon"},
              extra_files={"configuration_falcon.py": b"raise SystemExit", "modelling_RW.py": b"import os"})
    make_repo(root, "bad/tokenizer-code", created_at=T0 + timedelta(hours=1),
              tokenizer_extra={"auto_map": {"AutoTokenizer": ["tok.MyTokenizer", None]}})
    make_repo(root, "bad/model-code", created_at=T0 + timedelta(hours=2), auto_map=True)
    with HubServer(root) as url:
        records = {r.id: r for r in _watcher(url).list_new_models(None)}
        tags = {m.id: m.tags for m in HfApi(endpoint=url, token=False).list_models(expand=["tags"])}
    assert records["tiiuae/falcon-like"].status == ModelStatus.discovered
    assert records["bad/tokenizer-code"].status == ModelStatus.skipped
    assert records["bad/tokenizer-code"].reason == "remote code"
    assert records["bad/model-code"].reason == "remote code"
    assert "custom_code" not in tags["tiiuae/falcon-like"] and "custom_code" in tags["bad/model-code"]


# -- errors and renames ------------------------------------------------------------------------

def test_errors_are_mapped_to_record_states(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "hub"
    make_repo(root, "g/locked", created_at=T0, gated=True)
    make_repo(root, "a/open", created_at=T0)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(root, tokens={"hf_onTheListToken123"}) as url:
        anon = HubClient(url, timeout=2.0, retry=FAST)
        with pytest.raises(HubError) as e:
            anon.download("g/locked", "main", tmp_path / "c1")
        assert e.value.status == ModelStatus.skipped and e.value.reason == "g/locked: gated model and no token (HF_TOKEN)"
        with pytest.raises(HubError) as e:
            anon.model_info("a/nowhere")
        assert e.value.status == ModelStatus.failed
        assert e.value.reason == "a/nowhere: repository not found (401: deleted, private, or gated and no token)"
        with pytest.raises(HubError) as e:
            list(anon.iter_listing(expand=["createdAt", "noSuchField"]))
        assert "refused" in e.value.reason and "400" in e.value.reason
        # The real client meets the same answers.
        with pytest.raises(GatedRepoError) as g:
            hf_hub_download("g/locked", "config.json", endpoint=url, token=False, cache_dir=tmp_path / "h1")
        assert g.value.response.status_code == 401
        with pytest.raises(GatedRepoError) as g:
            hf_hub_download("g/locked", "config.json", endpoint=url, token="hf_notOnTheList456",
                            cache_dir=tmp_path / "h2")
        assert g.value.response.status_code == 403
        with pytest.raises(BadRequestError):
            HfApi(endpoint=url, token=False).model_info("a/open", expand=["noSuchField"])
        monkeypatch.setenv("HF_TOKEN", "hf_notOnTheList456")
        other = HubClient(url, timeout=2.0, retry=FAST)
        with pytest.raises(HubError) as e:
            other.download("g/locked", "main", tmp_path / "c2")
        assert e.value.status == ModelStatus.skipped and "not on its access list" in e.value.reason
        with pytest.raises(HubError) as e:
            other.model_info("a/nowhere")
        assert e.value.reason == "a/nowhere: repository not found (404: deleted, private)"


def test_siblings_carry_sizes_only_with_blobs_and_the_cursor_is_time_ordered(tmp_path: Path) -> None:
    root = _hub(tmp_path, 5)
    with HubServer(root, page_size=2) as url:
        api = HfApi(endpoint=url, token=False)
        plain = api.model_info("a/m1")
        full = api.model_info("a/m1", files_metadata=True)
        listed = list(api.list_models(expand=["siblings", "createdAt"]))
        status, headers, body = _raw(url, "/api/models?limit=2")
    assert all(s.size is None for s in plain.siblings) and all(s.size is None for m in listed for s in m.siblings)
    assert {s.rfilename: s.size for s in full.siblings} == {
        s.rfilename: (root / "a/m1" / s.rfilename).stat().st_size for s in full.siblings}
    ids = [m["_id"] for m in json.loads(body)]
    # ObjectIds start with the creation time: newest first by time is newest first by _id.
    assert ids == sorted(ids, reverse=True) and int(ids[0][:8], 16) == int((T0 + timedelta(hours=4)).timestamp())
    assert "cursor=" in headers["link"]


def test_a_rename_is_followed_and_the_old_row_resolved(tmp_path: Path) -> None:
    from indexer.adapters.catalog import Catalog
    from indexer.app.job import JobConfig
    from indexer.app.listing import ListStep
    from schemas.records import ModelRecord

    root = tmp_path / "hub"
    make_repo(root, "new-org/model", created_at=T0, sidecar_extra={"renamed_from": ["old-org/model"]})
    catalog = tmp_path / "c.duckdb"
    with Catalog(catalog, create=True) as cat:  # a download of the old id failed before the rename
        cat.upsert_models([ModelRecord(id="old-org/model", revision="a" * 40, created_at=T0,
                                       status=ModelStatus.failed, reason="download: timeout")])
        cat.set_meta("watermark", (T0 + timedelta(days=1)).isoformat())
    with HubServer(root) as url:
        status, headers, _ = _raw(url, "/api/models/old-org/model?blobs=true")
        assert status == 307 and headers["location"] == "/api/models/new-org/model?blobs=true"
        assert HfApi(endpoint=url, token=False).model_info("old-org/model").id == "new-org/model"
        step = ListStep(JobConfig(catalog=catalog, hub=url))
        records = step()
        with Catalog(catalog) as cat:
            cat.upsert_models(records)
        _, _, retry = step.catalog_state()
        again = step()
    assert [(r.id, r.status) for r in records] == [("old-org/model", ModelStatus.skipped),
                                                   ("new-org/model", ModelStatus.discovered)]
    assert records[0].reason == "renamed on the Hub to new-org/model"
    assert retry == {} and again == []  # the old id is not looked up again
