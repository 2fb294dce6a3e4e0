"""Standard tree exports built from the explorer's data (``explorer.explorer_data``):

* ``auspice_json`` -- a Nextstrain Auspice v2 dataset (``auspice.json``: `auspice view`
  opens it, with the explorer's colour-bys as Auspice colorings and filters, divergence as
  the branch-length measure and each model's Hub page as its URL);
* ``taxonium_jsonl`` -- Taxonium's JSONL tree format (``tree.jsonl.gz``, for trees of
  hundreds of thousands of leaves): a header line, then one line per node in the order
  taxoniumtools' ``newick_to_taxonium`` writes them (sorted by y), with ``x_dist`` (root
  distance, scaled as taxoniumtools does: the 95th percentile is 600), ``y``, ``is_tip``,
  ``parent_id``, ``node_id``, ``num_tips``, ``mutations`` (none: the index has no
  sequence alignment) and the ``meta_*`` columns.

Both are written as text by an explicit stack rather than ``json.dumps`` of a nested dict:
a ladder-like tree of 100,000 leaves is far deeper than Python's recursion limit.
"""
from __future__ import annotations

import json
import re
from typing import Iterator, Mapping

import numpy as np

_KEY = re.compile(r"[^A-Za-z0-9_]+")


def _coloring_key(name: str) -> str:
    """An attribute name as an Auspice coloring key: ``"score: arc"`` -> ``"score_arc"``."""
    return _KEY.sub("_", name).strip("_") or "attr"


def _layout(data: Mapping) -> tuple[np.ndarray, np.ndarray, list[list[int]], np.ndarray]:
    """(root distance, y, children, leaf number or -1) of each node (preorder)."""
    parent = np.asarray(data["parent"], dtype=np.int64)
    length = np.asarray(data["length"], dtype=float)
    n = parent.size
    children: list[list[int]] = [[] for _ in range(n)]
    x = np.zeros(n)
    for v in range(1, n):
        children[parent[v]].append(v)
        x[v] = x[parent[v]] + length[v]
    leaf = np.full(n, -1, dtype=np.int64)
    is_leaf = np.array([not c for c in children], dtype=bool)
    leaf[is_leaf] = np.arange(int(is_leaf.sum()))
    y = np.zeros(n)
    y[is_leaf] = np.arange(int(is_leaf.sum()), dtype=float)
    for v in range(n - 1, -1, -1):
        if children[v]:
            y[v] = (y[children[v][0]] + y[children[v][-1]]) / 2
    return x, y, children, leaf


def _leaf_attrs(data: Mapping) -> list[tuple[str, str, Mapping]]:
    """(Auspice key, title, attribute column) of every colour-by."""
    return [(_coloring_key(name), name, a) for name, a in data["attrs"].items()]


def _value(a: Mapping, k: int):
    return a["categories"][a["codes"][k]] if a["type"] == "categorical" else a["values"][k]


def auspice_json(data: Mapping, *, title: str = "PhyloLM index", updated: str | None = None) -> str:
    """The Auspice v2 dataset JSON (text) of the explorer's ``data``; ``updated`` is the
    ``YYYY-MM-DD`` date shown (default: the data's generation date, else 1970-01-01)."""
    updated = updated or (str(data.get("generated") or "")[:10] or "1970-01-01")
    attrs = _leaf_attrs(data)
    colorings = [{"key": key, "title": t, "type": a["type"]} for key, t, a in attrs]
    first = attrs[0][0] if attrs else None
    meta = {"title": title, "updated": updated, "panels": ["tree"], "colorings": colorings,
            "filters": [key for key, _, a in attrs if a["type"] == "categorical"],
            "display_defaults": {"distance_measure": "div", **({"color_by": first} if first else {})},
            "description": "A PhyloLM index: a tree of language models built from their output "
                           "distributions; branch lengths are PhyloLM distances (divergence)."}
    if not data["parent"]:
        tree = '{"name":"empty","node_attrs":{"div":0}}'
    else:
        tree = "".join(_auspice_tree(data, attrs))
    return ('{"version":"v2","meta":' + json.dumps(meta, separators=(",", ":")) + ',"tree":' + tree + "}\n")


def _auspice_tree(data: Mapping, attrs) -> Iterator[str]:
    x, _, children, leaf = _layout(data)
    ids, created, hub = data["ids"], data.get("created") or [], data.get("hub_url") or ""
    dump = lambda o: json.dumps(o, separators=(",", ":"), allow_nan=False)  # noqa: E731

    def node_text(v: int) -> str:
        k = int(leaf[v])
        na: dict = {"div": float(f"{x[v]:.6g}")}
        if k < 0:
            return f'{{"name":{dump(f"node_{v}")},"node_attrs":{dump(na)}'
        for key, _, a in attrs:
            val = _value(a, k)
            if val is not None:
                na[key] = {"value": val}
        if hub:
            na["url"] = hub + "/" + ids[k]
        if k < len(created) and created[k]:
            na["upload_date"] = {"value": created[k]}
        return f'{{"name":{dump(ids[k])},"node_attrs":{dump(na)}'

    # explicit stack of (node, next child position)
    stack = [(0, -1)]
    while stack:
        v, i = stack.pop()
        if i < 0:
            yield node_text(v)
            if not children[v]:
                yield "}"
                continue
            yield ',"children":['
            i = 0
        elif i < len(children[v]):
            yield ","
        if i < len(children[v]):
            stack.append((v, i + 1))
            stack.append((children[v][i], -1))
        else:
            yield "]}"


def taxonium_jsonl(data: Mapping) -> Iterator[str]:
    """Taxonium's JSONL lines (each ending in a newline) for the explorer's ``data``."""
    x, y, children, leaf = _layout(data)
    attrs = _leaf_attrs(data)
    n = x.size
    ids = data["ids"]
    created = data.get("created") or []
    # num_tips: leaves below each node (children follow parents in preorder)
    tips = (leaf >= 0).astype(np.int64)
    parent = np.asarray(data["parent"], dtype=np.int64)
    for v in range(n - 1, 0, -1):
        tips[parent[v]] += tips[v]
    order = sorted(range(n), key=lambda v: (y[v], v))
    node_id = np.empty(n, dtype=np.int64)
    node_id[order] = np.arange(n)
    # taxoniumtools scales x so that the 95th percentile of root distances is 600
    p95 = float(np.sort(x)[int(n * 0.95)]) if n else 0.0
    scale = 600.0 / p95 if p95 > 0 else 1.0
    header = {"version": "phylolm-taxonium-1", "mutations": [], "total_nodes": int(n),
              "config": {"num_tips": int(tips[0]) if n else 0,
                         "colorBy": {"colorByOptions": [f"meta_{key}" for key, _, _ in attrs]},
                         "title": "PhyloLM index"}}
    yield json.dumps(header, separators=(",", ":")) + "\n"
    for v in order:
        k = int(leaf[v])
        row = {"name": ids[k] if k >= 0 else "", "x_dist": round(float(x[v]) * scale, 5), "y": float(y[v]),
               "mutations": [], "is_tip": k >= 0, "parent_id": int(node_id[parent[v]]) if v > 0 else int(node_id[v]),
               "node_id": int(node_id[v]), "num_tips": int(tips[v])}
        for key, _, a in attrs:
            row[f"meta_{key}"] = _value(a, k) if k >= 0 else ""
        row["meta_upload_date"] = (created[k] or "") if k >= 0 and k < len(created) else ""
        yield json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n"
