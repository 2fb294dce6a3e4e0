"""`phylolm bench explorer`: the explorer page of a large simulated ecosystem, built and
loaded in headless Chromium; reports build time, page size, load time and JS heap.

The page is built from ``indexer.core.simulate``'s true tree and metadata (ids, authors,
upload dates, declared base models; each declared relation drawn at random from the Hub's
kinds), not from a probed index: placing 100,000 probed models costs hours of CPU, while
the page only needs a tree and its rows. Nearest relatives are each leaf's closest leaves
on the tree (patristic distance among its sister clade's leaves), so the cards have them.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.adapters.publish.auspice import auspice_json
from indexer.adapters.publish.explorer import explorer_data, render_explorer
from indexer.core.simulate import simulate
from indexer.errors import PhylolmError

RELATIONS = ("finetune", "adapter", "quantized", "merge")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-precise-memory-info")


def find_chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in CHROMIUM_NAMES) if p), None)


def simulated_models(n: int, seed: int = 0):
    """(tree, model rows, nearest) of a simulated ecosystem of ``n`` models (one gene: only
    the tree and the metadata are used)."""
    eco = simulate(n, seed=seed, n_genes=1, n_alleles=2)
    rng = np.random.default_rng(seed)
    rows = [{"id": m, "author": a, "base_models": [b] if b else [],
             "base_model_relation": RELATIONS[int(rng.integers(len(RELATIONS)))] if b else None,
             "created_at": c}
            for m, a, b, c in zip(eco.ids, eco.authors, eco.base_model, eco.created_at)]
    return eco.truth, rows, _tree_nearest(eco.truth)


def _tree_nearest(tree, k: int = 3) -> dict[str, list[tuple[str, float]]]:
    """Each leaf's up-to-k nearest leaves within its parent's subtree, by path length."""
    depth = tree.depths()
    out: dict[str, list[tuple[str, float]]] = {}
    for name, v in tree.leaf_node.items():
        p = int(tree.parent[v])
        if p < 0:
            continue
        others = [u for u in tree.subtree(p) if not tree.children[u] and u != v][:64]
        d = sorted((float(depth[v] + depth[u] - 2 * depth[p]), tree.label[u]) for u in others)
        out[name] = [(m, x) for x, m in d[:k]]
    return out


def build_simulated_page(n: int, out_dir: str | Path, seed: int = 0) -> dict:
    """Write ``index.html`` and ``auspice.json`` of a simulated ``n``-model ecosystem into
    ``out_dir``; returns timings (s) and sizes (bytes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tree, rows, nearest = simulated_models(n, seed)
    t1 = time.perf_counter()
    data = explorer_data(tree, rows, nearest=nearest)
    page = render_explorer(data, title=f"Simulated ecosystem ({n} models)")
    (out / "index.html").write_text(page, encoding="utf-8")
    t2 = time.perf_counter()
    (out / "auspice.json").write_text(auspice_json(data), encoding="utf-8")
    t3 = time.perf_counter()
    return {"models": n, "simulate_s": t1 - t0, "page_build_s": t2 - t1, "auspice_build_s": t3 - t2,
            "page_bytes": (out / "index.html").stat().st_size, "auspice_bytes": (out / "auspice.json").stat().st_size,
            "page": str(out / "index.html"), "first_id": data["ids"][len(data["ids"]) // 2]}


def load_in_chromium(page: str | Path, *, search: str | None = None, screenshot: str | Path | None = None,
                     chromium: str | None = None, budget_ms: int = 60000, timeout: float = 300) -> dict:
    """Open ``page`` in headless Chromium (``#search=`` selects a model), read what the page
    recorded on its body (ready, leaves, load time since navigation, script time, JS heap,
    the card shown) and the wall time of the whole run; optionally take a screenshot."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise PhylolmError("no chromium binary found (install the `chromium` package)")
    url = Path(page).resolve().as_uri() + (f"#search={search}" if search else "")
    with tempfile.TemporaryDirectory() as profile:
        t0 = time.perf_counter()
        r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/a",
                            f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                           capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise PhylolmError(f"chromium failed ({r.returncode}): {r.stderr[-500:]}")
        shot_s = None
        if screenshot is not None:
            t1 = time.perf_counter()
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/b", "--window-size=1400,1100",
                            f"--virtual-time-budget={budget_ms}", f"--screenshot={screenshot}", url],
                           capture_output=True, text=True, timeout=timeout, check=True)
            shot_s = time.perf_counter() - t1
    body = re.search(r"<body([^>]*)>", r.stdout)
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1))) if body else {}
    return {"ready": attrs.get("data-explorer") == "ready", "leaves": int(attrs.get("data-leaves", -1)),
            "load_ms": float(attrs.get("data-load-ms", "nan")), "script_ms": float(attrs.get("data-script-ms", "nan")),
            "draw_ms": float(attrs.get("data-draw-ms", "nan")),
            "full_draw_ms": float(attrs.get("data-full-draw-ms", "nan")),
            "heap_bytes": int(attrs.get("data-heap-bytes", -1)), "card": attrs.get("data-card"),
            "chromium_wall_s": wall, "screenshot_s": shot_s, "dom": r.stdout}


def bench_explorer(n: int = 100_000, seed: int = 0, out_dir: str | Path | None = None) -> dict:
    """Build the simulated page and load it in Chromium, searching one model: the figures
    `phylolm bench explorer` prints (the DOM is left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        built = build_simulated_page(n, folder, seed)
        loaded = load_in_chromium(built["page"], search=built["first_id"])
        loaded.pop("dom")
        return {**built, **loaded, "page": built["page"] if out_dir else None}
