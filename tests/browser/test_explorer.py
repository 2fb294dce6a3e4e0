"""The explorer page (index.html) in a real headless Chromium: built from a small real
catalog and from a simulated ecosystem, it draws, a model is searched (``#search=``), its
card opens with its estimates or scores; screenshots are kept under artifacts/.

The 100,000-model page runs under ``-m slow``; its load time and memory are reported by
`phylolm bench explorer`, not asserted here. Skipped when no Chromium binary is installed
(Debian package ``chromium``; the CI entry point installs it).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from indexer.bench.explorer import build_simulated_page, find_chromium, load_in_chromium
from tests.helpers import ROOT
from tests.helpers.publish_world import IDS, publish_world

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium binary (apt-get install chromium)")

ARTIFACTS = ROOT / "artifacts"


def _shot(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def _card(dom: str) -> str:
    m = re.search(r'<aside id="card"[^>]*>(.*?)</aside>', dom, re.S)
    return m.group(1) if m else ""


def test_explorer_of_a_small_index_searches_and_opens_a_card(tmp_path):
    pub = publish_world(tmp_path)
    shot = _shot("explorer-small.png")
    r = load_in_chromium(pub / "index.html", search="gamma/merge", screenshot=shot)
    assert r["ready"] and r["leaves"] == len(IDS)
    assert r["card"] == "gamma/merge"
    card = _card(r["dom"])
    assert 'class="card-estimates"' in card and "mmlu" in card  # an unscored model: its estimates
    assert re.search(r"\d\.\d{3} &ndash; \d\.\d{3}|\d\.\d{3} – \d\.\d{3}", card)  # with an interval
    assert "gamma/solo" in card and "beta/base" in card  # declared bases (a merge of two)
    assert shot.stat().st_size > 20_000  # a real, non-blank image
    # a search by part of an id selects the first match; a scored model shows its scores
    r = load_in_chromium(pub / "index.html", search="acme/tune-1")
    assert r["card"] == "acme/tune-1" and 'class="card-scores"' in _card(r["dom"])
    # the colour-by menu offers every attribute; the plots are in the page
    assert all(f'<option value="{a}">' in r["dom"] for a in ("family", "author", "relation", "lineage", "score: arc"))
    assert "interval coverage" in r["dom"]


def test_report_links_the_explorer_and_shows_the_plots(tmp_path):
    pub = publish_world(tmp_path)
    r = load_in_chromium(pub / "report.html")
    assert 'href="index.html"' in r["dom"] and 'data-selfcheck="ok"' in r["dom"]
    assert r["dom"].count("<svg") >= 4  # the tree and three plots


def _simulated(tmp_path, n):
    built = build_simulated_page(n, tmp_path, seed=1)
    shot = _shot(f"explorer-sim-{n}.png")
    r = load_in_chromium(built["page"], search=built["first_id"], screenshot=shot, budget_ms=120_000, timeout=600)
    assert r["ready"] and r["leaves"] == n
    assert r["card"] == built["first_id"]
    assert "nearest relatives" in _card(r["dom"])
    assert shot.stat().st_size > 20_000
    return r


def test_explorer_of_a_simulated_ecosystem(tmp_path):
    _simulated(tmp_path, 3000)


@pytest.mark.slow
def test_explorer_of_100k_simulated_models(tmp_path):
    r = _simulated(tmp_path, 100_000)
    print(f"100k page: load {r['load_ms']:.0f} ms, script {r['script_ms']:.0f} ms, heap {r['heap_bytes']} B")


def test_bench_explorer_reports_load_time_and_memory(cli):
    r = cli("bench", "explorer", "--models", "400", "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["ready"] and out["leaves"] == 400 and out["card"] == out["first_id"]
    assert out["load_ms"] > 0 and out["heap_bytes"] > 0 and out["full_draw_ms"] >= 0 and out["page_bytes"] > 0
