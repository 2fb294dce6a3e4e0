"""The Hub-compatible endpoint, exercised with the real huggingface_hub client and raw HTTP."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.helpers.hub_repos import make_repo
from indexer.testbed.hub import HubServer

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    for i in range(5):
        make_repo(root, f"org{i % 2}/m{i}", created_at=T0 + timedelta(days=i), seed=i,
                  base_model="org0/m0" if i else None, relation="finetune" if i else None)
    return root


def _raw(url: str, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out byte for byte
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_listing_sorted_paginated_and_filtered(hub_dir: Path) -> None:
    with HubServer(hub_dir, page_size=2) as url:
        api = HfApi(endpoint=url, token=False)
        models = list(api.list_models(sort="created_at", full=True, cardData=True))
        assert [m.id for m in models] == ["org0/m4", "org1/m3", "org0/m2", "org1/m1", "org0/m0"]
        assert [m.created_at for m in models] == [T0 + timedelta(days=i) for i in (4, 3, 2, 1, 0)]
        assert all(len(m.sha) == 40 for m in models)
        assert models[0].card_data["base_model"] == "org0/m0"
        assert [m.id for m in api.list_models(author="org1")] == ["org1/m3", "org1/m1"]
        assert [m.id for m in api.list_models(search="M2")] == ["org0/m2"]
        derived = {m.id for m in api.list_models(filter="base_model:finetune:org0/m0")}
        assert derived == {"org0/m4", "org1/m3", "org0/m2", "org1/m1"}
        assert list(api.list_models(filter=["text-generation", "no-such-tag"])) == []
        assert len(list(api.list_models(limit=3))) == 3
        expanded = next(iter(api.list_models(expand=["safetensors", "siblings", "sha"])))
        assert expanded.safetensors.total == 64 and expanded.safetensors.parameters == {"F32": 64}
        assert {s.rfilename for s in expanded.siblings} == {
            "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
        assert expanded.pipeline_tag is None  # not asked for: expand returns only what it names
    # Three pages of two: the Link header was followed.
    status, headers, body = _raw(url_for(hub_dir, page_size=2), "/api/models?limit=2")
    assert status == 200 and 'rel="next"' in headers["link"] and len(json.loads(body)) == 2


def url_for(hub_dir: Path, **kw) -> str:
    """A throwaway server's URL for raw checks that must not share state with another."""
    server = HubServer(hub_dir, **kw)
    url = server.start()
    _SERVERS.append(server)
    return url


_SERVERS: list[HubServer] = []


@pytest.fixture(autouse=True)
def _stop_servers():
    yield
    while _SERVERS:
        _SERVERS.pop().stop()


def test_ascending_direction_and_pagination_survives_new_uploads(hub_dir: Path) -> None:
    url = url_for(hub_dir, page_size=2)
    status, headers, body = _raw(url, "/api/models?sort=createdAt&direction=1")
    assert [m["id"] for m in json.loads(body)] == ["org0/m0", "org1/m1"]
    # Newest first: read one page, then a newer model appears; the next pages neither repeat
    # nor skip anything (keyset cursor).
    status, headers, body = _raw(url, "/api/models?sort=createdAt")
    seen = [m["id"] for m in json.loads(body)]
    make_repo(hub_dir, "late/new", created_at=T0 + timedelta(days=30))
    nxt = headers["link"].split(">")[0].lstrip("<")
    while nxt:
        status, headers, body = _raw(url, nxt[len(url):])
        seen += [m["id"] for m in json.loads(body)]
        nxt = headers["link"].split(">")[0].lstrip("<") if "link" in headers else None
    assert seen == ["org0/m4", "org1/m3", "org0/m2", "org1/m1", "org0/m0"]


def test_model_info_revisions_and_errors(hub_dir: Path) -> None:
    with HubServer(hub_dir) as url:
        api = HfApi(endpoint=url, token=False)
        info = api.model_info("org0/m2", files_metadata=True)
        assert info.pipeline_tag == "text-generation" and info.library_name == "transformers"
        assert info.card_data["license"] == "apache-2.0" and info.config["model_type"] == "llama"
        assert {"license:apache-2.0", "base_model:finetune:org0/m0", "safetensors"} <= set(info.tags)
        weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
        data = (hub_dir / "org0/m2/model.safetensors").read_bytes()
        assert weights.size == len(data)
        assert weights.lfs is not None and weights.lfs.sha256 == hashlib.sha256(data).hexdigest()
        assert info.used_storage == sum(s.size for s in info.siblings)
        assert ".hub.json" not in {s.rfilename for s in info.siblings}
        assert api.model_info("org0/m2", revision=info.sha).sha == info.sha
        # Same content, same sha (a copy of the repository); changed content, new sha.
        shutil.copytree(hub_dir / "org0/m2", hub_dir / "copy/m2")
        assert api.model_info("copy/m2").sha == info.sha
        (hub_dir / "org0/m2/config.json").write_text('{"model_type": "llama", "architectures": []}')
        new = api.model_info("org0/m2")
        assert new.sha != info.sha
        with pytest.raises(RevisionNotFoundError):
            api.model_info("org0/m2", revision=info.sha)
        # Unknown repository: 401 with no error code to an anonymous client, as the Hub answers
        # (huggingface_hub maps it to RepositoryNotFoundError on https endpoints only).
        with pytest.raises(HfHubHTTPError) as e:
            api.model_info("org0/nope")
        assert e.value.response.status_code == 401 and "x-error-code" not in e.value.response.headers
        with pytest.raises(RepositoryNotFoundError) as e:  # with a token: 404 RepoNotFound
            HfApi(endpoint=url, token="hf_any_valid_token_123").model_info("org0/nope")
        assert e.value.response.status_code == 404


def test_snapshot_and_file_download(hub_dir: Path, tmp_path: Path) -> None:
    with HubServer(hub_dir) as url:
        api = HfApi(endpoint=url, token=False)
        sha = api.model_info("org1/m3").sha
        folder = Path(snapshot_download("org1/m3", revision=sha, endpoint=url, token=False,
                                        cache_dir=tmp_path / "cache", allow_patterns=["*.safetensors", "*.json"]))
        assert folder.name == sha
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                             "tokenizer.json", "tokenizer_config.json"]
        for p in folder.iterdir():
            assert p.read_bytes() == (hub_dir / "org1/m3" / p.name).read_bytes()
        with pytest.raises(EntryNotFoundError):
            hf_hub_download("org1/m3", ".hub.json", endpoint=url, token=False, cache_dir=tmp_path / "c2")
        tree = {f.path: f for f in api.list_repo_tree("org1/m3", recursive=True)}
        assert tree["model.safetensors"].lfs.sha256 == next(
            s for s in api.model_info("org1/m3", files_metadata=True).siblings
            if s.rfilename == "model.safetensors").lfs.sha256
    # Byte ranges and HEAD headers, as the client's resume logic needs them.
    url = url_for(hub_dir)
    status, headers, body = _raw(url, f"/org1/m3/resolve/{sha}/config.json", "HEAD")
    size = (hub_dir / "org1/m3/config.json").stat().st_size
    assert status == 200 and headers["x-repo-commit"] == sha and int(headers["content-length"]) == size
    assert headers["etag"].strip('"') and body == b""
    status, headers, body = _raw(url, "/org1/m3/resolve/main/config.json", headers={"Range": "bytes=2-5"})
    assert status == 206 and body == (hub_dir / "org1/m3/config.json").read_bytes()[2:6]
    assert headers["content-range"] == f"bytes 2-5/{size}"


@pytest.mark.parametrize("path", [
    "/org0/m0/resolve/main/../../../etc/passwd",
    "/org0/m0/resolve/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/org0/m0/resolve/main/..%2f..%2f.hub.json",
    "/org0/m0/resolve/main//etc/passwd",
    "/org0/m0/resolve/main/.hub.json",
    "/org0/m0/resolve/main/%2fetc%2fpasswd",
    "/%2e%2e/m0/resolve/main/config.json",
    "/api/models/org0/m0/tree/main/..",
    "/org0/m0/resolve/main/secret.txt",
    "/org0/m0/resolve/main/sub%5c..%5c..%5cconfig.json",
])
def test_path_traversal_is_impossible(hub_dir: Path, tmp_path: Path, path: str) -> None:
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("TOP-SECRET")
    (hub_dir / "org0/m0/secret.txt").symlink_to(secret)  # a link out of the repository
    url = url_for(hub_dir)
    status, _, body = _raw(url, path)
    assert status in (400, 404)
    assert b"TOP-SECRET" not in body and b"root:" not in body and b"created_at" not in body


def test_symlink_leaving_the_repository_is_not_listed(hub_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.json").write_text("{}")
    (hub_dir / "org0/m0/leak.json").symlink_to(tmp_path / "outside.json")
    (hub_dir / "org0/m0/inside.json").symlink_to(hub_dir / "org0/m0/config.json")
    with HubServer(hub_dir) as url:
        names = {s.rfilename for s in HfApi(endpoint=url, token=False).model_info("org0/m0").siblings}
    assert "leak.json" not in names and "inside.json" in names


def test_served_set_is_the_folder_at_request_time(hub_dir: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    make_repo(staging, "new/arrival", created_at=T0 + timedelta(days=10))
    with HubServer(hub_dir) as url:
        api = HfApi(endpoint=url, token=False)
        assert "new/arrival" not in {m.id for m in api.list_models()}
        (hub_dir / "new").mkdir()
        (hub_dir / "new/arrival").symlink_to(staging / "new/arrival", target_is_directory=True)
        assert next(iter(api.list_models(sort="created_at"))).id == "new/arrival"
        shutil.rmtree(hub_dir / "org0/m4")
        assert "org0/m4" not in {m.id for m in api.list_models()}
        with pytest.raises(HfHubHTTPError) as e:  # anonymous: 401, as the Hub answers
            api.model_info("org0/m4")
        assert e.value.response.status_code == 401


def test_created_before_cutoff_hides_later_uploads(hub_dir: Path) -> None:
    with HubServer(hub_dir, created_before=lambda: T0 + timedelta(days=2)) as url:
        ids = [m.id for m in HfApi(endpoint=url, token=False).list_models()]
    assert ids == ["org0/m2", "org1/m1", "org0/m0"]


def test_gated_downloads_need_a_token(hub_dir: Path, tmp_path: Path) -> None:
    make_repo(hub_dir, "locked/model", gated=True)
    with HubServer(hub_dir, tokens={"hf_test_token_abc123"}) as url:
        info = HfApi(endpoint=url, token=False).model_info("locked/model")
        assert info.gated == "auto"
        with pytest.raises(GatedRepoError):
            hf_hub_download("locked/model", "config.json", endpoint=url, token=False, cache_dir=tmp_path / "a")
        with pytest.raises(GatedRepoError):
            hf_hub_download("locked/model", "config.json", endpoint=url, token="hf_wrong_token_xyz987",
                            cache_dir=tmp_path / "b")
        p = hf_hub_download("locked/model", "config.json", endpoint=url, token="hf_test_token_abc123",
                            cache_dir=tmp_path / "c")
        assert json.loads(Path(p).read_text())["model_type"] == "llama"


def test_cli_hub_serve(hub_dir: Path) -> None:
    exe = Path(sys.executable).with_name("phylolm")
    proc = subprocess.Popen([str(exe), "hub", "serve", str(hub_dir), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {hub_dir} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].strip()
        deadline = time.time() + 10
        while True:
            try:
                ids = [m.id for m in HfApi(endpoint=url, token=False).list_models()]
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert len(ids) == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_refuses_a_missing_folder(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("phylolm")
    r = subprocess.run([str(exe), "hub", "serve", str(tmp_path / "nope")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
