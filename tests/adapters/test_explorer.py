"""The explorer page's data and HTML (pure), and `phylolm view`'s read-only loopback server."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from indexer.adapters.publish.explorer import explorer_data, render_explorer
from indexer.adapters.publish.serve import page_url, serve_in_thread
from indexer.core.tree.newick import parse_newick
from tests.helpers.publish_world import DECLARED, IDS, UNSCORED, publish_world


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return publish_world(tmp_path_factory.mktemp("explorer"))


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_page_data_is_the_tree_and_the_catalog(pub):
    data = _data((pub / "index.html").read_text())
    parent = data["parent"]
    assert parent[0] == -1 and all(0 <= p < i for i, p in enumerate(parent) if i)  # preorder
    n_children = np.bincount([p for p in parent[1:]], minlength=len(parent))
    assert int((n_children == 0).sum()) == len(data["ids"]) == len(IDS)
    assert sorted(data["ids"]) == sorted(IDS)
    at = {m: i for i, m in enumerate(data["ids"])}
    rel = data["attrs"]["relation"]
    assert rel["categories"][rel["codes"][at["beta/lora"]]] == "adapter"
    assert rel["categories"][rel["codes"][at["gamma/solo"]]] == "none"
    lin = data["attrs"]["lineage"]
    assert lin["categories"][lin["codes"][at["beta/code"]]] == "suspicious"  # its false declaration
    # every unscored model has an estimate with an interval on both benchmarks; the scored ones their scores
    for m in UNSCORED:
        est = {r[0]: r for r in data["cards"]["estimates"][str(at[m])]}
        assert sorted(est) == ["arc", "mmlu"] and all(r[2] <= r[1] <= r[3] for r in est.values())
    assert all(str(at[m]) in data["cards"]["scores"] for m in IDS if m not in UNSCORED)
    assert data["cards"]["nearest"][str(at["acme/tune-1"])][0][0].startswith("acme/")
    assert data["base"][at["gamma/merge"]] == list(DECLARED["gamma/merge"][0])
    assert data["created"][at["acme/base"]] == "2025-01-01"
    for name in ("score: arc", "score: mmlu"):
        assert data["attrs"][name]["type"] == "continuous" and None not in data["attrs"][name]["values"]


def test_page_loads_nothing_from_outside(pub):
    page = (pub / "index.html").read_text()
    assert not re.search(r'<(script|link|img|iframe)[^>]*\s(src|href)=', page)
    assert "@import" not in page and "url(" not in page
    assert re.search(r'<svg[^>]*aria-label="estimated vs measured', page)  # the plots are inline


def test_embedded_json_cannot_close_its_script(tmp_path):
    tree = parse_newick("('evil/</script><b>x',('a/b',c/d));")
    page = render_explorer(explorer_data(tree, [{"id": "evil/</script><b>x", "author": "evil"}]))
    assert page.count("</script>") == 2  # the data block's and the program's, no more
    assert "evil/</script><b>x" in _data(page)["ids"]


def test_empty_index_renders():
    data = explorer_data(None, [])
    assert data["ids"] == [] and data["parent"] == []
    assert "explorer-data" in render_explorer(data)


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_view_serves_the_folder_on_loopback(pub):
    server, _ = serve_in_thread(pub)
    try:
        url = page_url(server)
        assert url.startswith("http://127.0.0.1:")
        status, body = _get(url)
        assert status == 200 and b'id="explorer-data"' in body
        base = url.rsplit("/", 1)[0]
        assert _get(base + "/auspice.json")[0] == 200
        status, body = _get(base + "/")  # the folder itself: its explorer
        assert status == 200 and b'id="explorer-data"' in body
    finally:
        server.shutdown()
        server.server_close()


def test_view_refuses_writes_escapes_and_listings(pub, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the page")
    (pub / "out.txt").symlink_to(outside)
    server, _ = serve_in_thread(pub)
    base = page_url(server).rsplit("/", 1)[0]
    try:
        assert _get(base + "/index.html", "POST")[0] == 405
        assert _get(base + "/index.html", "PUT")[0] == 405
        assert _get(base + "/index.html", "DELETE")[0] == 405
        assert _get(base + "/out.txt")[0] == 404  # a link out of the folder
        assert _get(base + "/../secret.txt")[0] in (400, 404)
        assert _get(base + "/%2e%2e/secret.txt")[0] in (400, 404)
        assert _get(base + "/plots/")[0] == 404  # no listing
        assert _get(base + "/plots/interval-coverage.svg")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        (pub / "out.txt").unlink()


def test_phylolm_view_prints_the_url_and_serves(pub):
    proc = subprocess.Popen([sys.executable, "-m", "indexer", "view", str(pub), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/index\.html)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = _get(m.group(1))
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and b"explorer-data" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_phylolm_view_refuses_a_missing_folder(tmp_path, cli):
    r = cli("view", str(tmp_path / "nope"), "--port", "0")
    assert r.returncode == 2 and "not a folder" in r.stderr
