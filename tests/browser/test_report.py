"""The published report opened in a real headless Chromium: the tree and the table render,
the page's own sort self-check passes, and a screenshot is kept under artifacts/.

Skipped, with the reason, when no Chromium binary is installed (Debian package
``chromium``; the CI entry point installs it).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from indexer.adapters.catalog import Catalog
from indexer.adapters.publish import estimates_from_catalog, export
from indexer.core.tree.newick import to_newick
from indexer.core.tree.nj import neighbor_joining
from schemas.records import ModelRecord, ModelStatus, Score
from tests.helpers import ROOT

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def report(tmp_path):
    """A report from a real catalog: two declared families and an out-group, with scores."""
    rng = np.random.default_rng(7)
    ids = ["acme/base", "acme/tune-1", "acme/tune-2", "beta/base", "beta/chat", "beta/code", "gamma/solo"]
    centre = np.array([[0, 0]] * 3 + [[3, 0]] * 3 + [[8, 8]])
    pts = centre + rng.normal(0, 0.25, centre.shape)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) / 5
    declared = {"acme/tune-1": ("acme/base",), "acme/tune-2": ("acme/base",),
                "beta/chat": ("beta/base",), "beta/code": ("gamma/solo",)}  # the last is false
    genome = "h" * 64
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        cat.upsert_models([ModelRecord(id=m, author=m.split("/")[0], base_models=declared.get(m, ()),
                                       status=ModelStatus.indexed) for m in ids])
        for i in range(1, len(ids)):
            cat.add_distances(genome, ids[i], ids[:i], np.exp(-d[i, :i]), d[i, :i])
        cat.add_tree_snapshot(genome, to_newick(neighbor_joining(d, ids)), "nj", "rebuild", len(ids))
        cat.import_scores([Score(model_id=m, benchmark=b, value=v, source="test")
                           for m, v in zip(ids[:4], (0.41, 0.45, 0.43, 0.60))
                           for b in ("arc", "mmlu")])
        cat.replace_estimates(estimates_from_catalog(cat))
        export(cat, tmp_path / "pub")
    return tmp_path / "pub" / "report.html", ids


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_tree_and_sortable_table_in_chromium(report, tmp_path):
    page, ids = report
    dom = _run_chromium(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-selfcheck="ok"' in html, re.findall(r'data-selfcheck="[^"]*"', html)
    n_rows = int(re.search(r'data-estimate-rows="(\d+)"', html).group(1))
    assert n_rows == 3 * 2  # three unscored models x two benchmarks
    assert len(re.findall(r'<text class="leaf"', html)) == len(ids)
    assert "suspicious" in html  # beta/code's false declaration
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)
    shot = shots / "report.png"
    res = _run_chromium(["--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()], tmp_path / "p2")
    assert res.returncode == 0 and shot.stat().st_size > 10_000  # a real, non-blank image
