"""The explorer page (``index.html`` of the publish folder): the maintained tree drawn on a
canvas, with search, colour-bys, a card per model, a timeline and the plots.

The page is one self-contained HTML file: the data is embedded as JSON
(``<script type="application/json" id="explorer-data">``), the script and style are
``indexer/data/explorer/explorer.{js,css}`` inlined, the plots inline SVG. It loads no
resource, so it works from ``file://`` and from ``phylolm view`` alike, with no network.

The data is column-oriented so that 100,000 leaves stay a few megabytes: the tree as
``parent`` (preorder index of each node's parent, -1 for the root) and ``length`` (branch
length), nodes in preorder; leaves numbered in the order they appear in that preorder, and
every per-model column (``ids``, ``created``, attributes, card fields) indexed by that
number. The script derives the layout (x = root distance, y = leaf rank) in one pass.

``explorer_data`` builds that dict from plain rows (pure); ``render_explorer`` turns it into
the page.
"""
from __future__ import annotations

import html
import json
from datetime import datetime
from importlib import resources
from typing import Mapping, Sequence

import numpy as np

from indexer.core.families import declared_families
from indexer.core.tree.core import Tree

# A model's lineage finding for colouring: the most alarming of its findings wins.
LINEAGE_RANK = ("suspicious", "exact_copy", "undeclared", "unclear", "not_indexed", "confirmed")
MAX_COLOURED = 13  # categories beyond the 13 most frequent are drawn as "other"
DEFAULT_HUB_URL = "https://huggingface.co"


def _layout_arrays(tree: Tree) -> tuple[list[int], list[float], list[int]]:
    """(parent in preorder indices, branch lengths, the tree node of each leaf number)."""
    tree.reindex()
    order = tree.order
    pre = np.full(tree.n_nodes, -1, dtype=np.int64)
    pre[order] = np.arange(order.size)
    par = tree.parent[order]
    parent = np.where(par >= 0, pre[np.maximum(par, 0)], -1)
    parent[0] = -1
    length = np.maximum(tree.length[order], 0.0)
    length[0] = 0.0
    leaves = [int(v) for v in order if not tree.children[v]]
    return parent.tolist(), [float(f"{x:.6g}") for x in length], leaves


def _categorical(values: Sequence[str]) -> dict:
    """A categorical column: categories by frequency (most frequent first), codes per leaf."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    cats = sorted(counts, key=lambda c: (-counts[c], c))
    at = {c: i for i, c in enumerate(cats)}
    return {"type": "categorical", "categories": cats, "counts": [counts[c] for c in cats],
            "codes": [at[v] for v in values]}


def _iso_day(x: object) -> str | None:
    if x is None:
        return None
    if isinstance(x, datetime):
        return x.date().isoformat()
    return str(x)[:10]


def _round(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(f"{float(x):.4g}")


def explorer_data(tree: Tree | None, models: Sequence[Mapping], *,
                  nearest: Mapping[str, Sequence[tuple[str, float]]] | None = None,
                  estimates: Sequence[Mapping] = (), scores: Sequence[Mapping] = (),
                  lineage: Sequence[Mapping] = (), snapshot: int | None = None,
                  hub_url: str = DEFAULT_HUB_URL, generated_at: datetime | None = None,
                  heldout: Sequence[Mapping] = ()) -> dict:
    """The page's data from a rooted tree (leaves are model ids) and plain catalog rows.

    ``models``: dicts with ``id``, ``author``, ``base_models``, ``base_model_relation``,
    ``created_at`` (missing keys are empty). ``nearest``: id -> [(other, distance)].
    ``estimates``: dicts (model_id, benchmark, estimate, low, high, method); ``scores``:
    (model_id, benchmark, value, source); ``lineage``: the lineage check's findings;
    ``heldout``: a held-out check's rows (model_id, benchmark, estimate, low, high, measured:
    a score measured but hidden from the estimators, shown next to its estimate). Models
    not on the tree are left out of the page (they are not indexed yet).
    """
    if tree is None or tree.root < 0:
        parent, length, leaf_nodes = [], [], []
        ids: list[str] = []
    else:
        parent, length, leaf_nodes = _layout_arrays(tree)
        ids = [tree.label[v] or "" for v in leaf_nodes]
    data = _build(ids, parent, length, models, nearest or {}, estimates, scores, lineage, snapshot, hub_url,
                  generated_at)
    at = {m: i for i, m in enumerate(ids)}
    cards_heldout: dict[int, list] = {}
    for h in heldout:
        if h["model_id"] in at:
            cards_heldout.setdefault(at[h["model_id"]], []).append(
                [h["benchmark"], _round(h["estimate"]), _round(h["low"]), _round(h["high"]), _round(h["measured"])])
    data["cards"]["heldout"] = cards_heldout
    return data


def _build(ids, parent, length, models, nearest, estimates, scores, lineage, snapshot, hub_url, generated_at) -> dict:
    row = {m["id"]: m for m in models}
    at = {m: i for i, m in enumerate(ids)}
    families = declared_families([row.get(m, {"id": m}) for m in ids] if ids else [])
    get = lambda m, k: (row.get(m) or {}).get(k)  # noqa: E731
    relation = [get(m, "base_model_relation") or ("declared" if get(m, "base_models") else "none") for m in ids]
    worst: dict[str, tuple[int, dict]] = {}
    for f in lineage:
        r = LINEAGE_RANK.index(f["kind"]) if f["kind"] in LINEAGE_RANK else len(LINEAGE_RANK)
        if f["model_id"] not in worst or r < worst[f["model_id"]][0]:
            worst[f["model_id"]] = (r, f)
    attrs = {
        "family": _categorical([families.get(m, m.split("/")[0]) for m in ids]),
        "author": _categorical([get(m, "author") or m.split("/")[0] for m in ids]),
        "relation": _categorical(relation),
        "lineage": _categorical([worst[m][1]["kind"] if m in worst else "none" for m in ids]),
    }
    benches = sorted({e["benchmark"] for e in estimates} | {s["benchmark"] for s in scores})
    est_col: dict[str, list] = {b: [None] * len(ids) for b in benches}
    cards_est: dict[int, list] = {}
    for e in estimates:
        i = at.get(e["model_id"])
        if i is None:
            continue
        est_col[e["benchmark"]][i] = _round(e["estimate"])
        cards_est.setdefault(i, []).append([e["benchmark"], _round(e["estimate"]), _round(e["low"]),
                                            _round(e["high"]), e.get("method")])
    cards_score: dict[int, list] = {}
    for s in scores:
        i = at.get(s["model_id"])
        if i is None:
            continue
        if est_col[s["benchmark"]][i] is None:
            est_col[s["benchmark"]][i] = _round(s["value"])
        cards_score.setdefault(i, []).append([s["benchmark"], _round(s["value"]), s.get("source")])
    for b in benches:
        attrs[f"score: {b}"] = {"type": "continuous", "values": est_col[b],
                                "note": "estimate, or the measured score where there is one"}
    cards_lin: dict[int, list] = {}
    for f in lineage:
        i = at.get(f["model_id"])
        if i is not None:
            cards_lin.setdefault(i, []).append([f["kind"], f.get("other_id"), _round(f.get("distance")),
                                                f.get("detail")])
    near: dict[int, list] = {}
    for m, rel in nearest.items():
        i = at.get(m)
        if i is not None:
            near[i] = [[o, _round(d)] for o, d in rel]
    return {
        "version": 1,
        "snapshot": snapshot,
        "generated": (generated_at.isoformat(timespec="seconds") if generated_at else None),
        "hub_url": hub_url.rstrip("/"),
        "parent": parent, "length": length,
        "ids": ids,
        "created": [_iso_day(get(m, "created_at")) for m in ids],
        "base": [list(get(m, "base_models") or []) for m in ids],
        "attrs": attrs,
        "benchmarks": benches,
        "cards": {"estimates": cards_est, "scores": cards_score, "lineage": cards_lin, "nearest": near},
    }


def _asset(name: str) -> str:
    return (resources.files("indexer") / "data" / "explorer" / name).read_text(encoding="utf-8")


def _embed_json(data: dict) -> str:
    """JSON safe inside a <script> element (no ``</``, no HTML comment openers)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_explorer(data: Mapping, *, plots: Mapping[str, str] | None = None, title: str = "PhyloLM index") -> str:
    """The explorer page as one self-contained HTML string. ``plots``: caption -> inline SVG
    (written by ``plots``); they are shown under the tree."""
    figures = "".join(f'<figure class="plot"><figcaption>{html.escape(cap)}</figcaption>{svg}</figure>'
                      for cap, svg in (plots or {}).items())
    n = len(data.get("ids", ()))
    meta = (f"{n} models on the tree &middot; snapshot "
            f"{data.get('snapshot') if data.get('snapshot') is not None else 'none'}"
            + (f" &middot; generated {html.escape(str(data['generated']))}" if data.get("generated") else ""))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} explorer</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>{_asset("explorer.css")}</style></head>
<body data-explorer="loading">
<header><h1>{html.escape(title)}</h1><p class="meta">{meta} &middot; <a href="report.html">tables</a></p></header>
<div id="controls">
 <label>search <input id="search" type="search" placeholder="model id" autocomplete="off" size="32"></label>
 <label>colour by <select id="colour-by"></select></label>
 <button id="reset" type="button">reset view</button>
 <span class="meta">wheel: zoom (shift: horizontal) &middot; drag: pan &middot; click a leaf: its card</span>
 <ul id="matches"></ul>
</div>
<div id="main"><div id="tree-wrap"><canvas id="tree-canvas"></canvas></div>
<aside id="card" hidden></aside></div>
<div id="legend"></div>
<h2>Timeline: models entering the index (upload month)</h2>
<div id="timeline"></div>
<h2>Plots</h2>
<div id="plots">{figures or '<p class="meta">no plots: the index has no measured scores or distances yet</p>'}</div>
<script type="application/json" id="explorer-data">{_embed_json(dict(data))}</script>
<script>{_asset("explorer.js")}</script>
</body></html>
"""
