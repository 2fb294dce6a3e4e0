"""Publisher (an adapter): the catalog's public face as files in a folder.

``export(catalog, out_dir)`` writes, each atomically (a temporary file, then ``os.replace``):

* ``tree.nwk`` -- the latest tree snapshot (Newick, leaves are model ids);
* ``distances.parquet`` -- (model_a, model_b, similarity, distance), both directions;
* ``estimates.parquet`` and ``estimates.csv`` -- every estimate with its interval;
* ``models.parquet`` -- the models table;
* ``scores.parquet`` and ``lineage.parquet`` -- the measured scores, the lineage findings;
* ``index.html`` -- the explorer (``explorer``): the tree on a canvas with search,
  colour-bys, a card per model, a timeline and the plots; self-contained, no network;
* ``auspice.json`` -- the tree as a Nextstrain Auspice v2 dataset (``auspice``);
* ``tree.jsonl.gz`` -- the tree in Taxonium's JSONL format (``auspice.taxonium_jsonl``);
* ``plots/*.svg`` -- estimated vs measured (leave one family out), interval coverage and
  distance per relation kind (``plots``), the images the pages show;
* ``report.html`` -- one self-contained page (inline CSS, JS and SVG, no network): the tree
  drawn as a rectangular phylogram with leaves coloured by declared family (the root of
  the declared base-model chain) or else author, split support at internal nodes and
  branch lengths on hover with a distance scale bar; a sortable table of estimates with
  intervals; each model's nearest relatives; the lineage check's findings; the plots. Above
``REPORT_TREE_MAX_LEAVES`` leaves the static SVG tree is left out (the explorer draws it).

The page runs a small self-check after load (the table sorts both ways, the tree has one
label per leaf) and records the outcome in ``<body data-selfcheck="...">`` so a headless
browser test can read it from the DOM.

The catalog comes in as a view with named queries (``CatalogView``: the catalog adapter's
read-only view, or its writer); this module writes no SQL and imports no other adapter.
"""
from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from indexer.adapters.publish.auspice import auspice_json, taxonium_jsonl
from indexer.adapters.publish.explorer import DEFAULT_HUB_URL, explorer_data, render_explorer
from indexer.adapters.publish.serve import make_server, page_url, serve_in_thread  # noqa: F401  (`phylolm view`)
from indexer.adapters.publish.plots import (distance_by_relation, estimated_vs_measured, interval_coverage,
                                            relation_distances)
from indexer.core.families import declared_families
from indexer.core.tree.core import Tree
from indexer.core.tree.newick import parse_newick

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173")
PLOT_FILES = ("plots/estimated-vs-measured.svg", "plots/interval-coverage.svg",
              "plots/distance-by-relation.svg")
EXPORT_FILES = ("tree.nwk", "distances.parquet", "estimates.parquet", "estimates.csv",
                "models.parquet", "scores.parquet", "lineage.parquet", "report.html", "index.html",
                "auspice.json", "tree.jsonl.gz", *PLOT_FILES)
REPORT_TREE_MAX_LEAVES = 2000


# ---------------------------------------------------------------------------------------
# pure helpers: colours, SVG, HTML (``declared_families`` is the core's, used here for colours)
# ---------------------------------------------------------------------------------------
def colour_map(groups: Mapping[str, str]) -> dict[str, str]:
    names = sorted(set(groups.values()))
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(names)}


def tree_svg(tree: Tree, colours: Mapping[str, str] | None = None, width: int = 900,
             row: int = 18, label_width: int = 320) -> str:
    """A rectangular phylogram of ``tree`` as inline SVG (leaves in preorder). O(n)."""
    colours = colours or {}
    if tree.root < 0 or tree.n_nodes == 0:
        return '<svg xmlns="http://www.w3.org/2000/svg" id="tree" width="10" height="10"></svg>'
    # depth (root distance) and leaf order by an iterative preorder
    n = tree.n_nodes
    depth = np.zeros(n)
    order: list[int] = []
    stack = [tree.root]
    while stack:
        v = stack.pop()
        order.append(v)
        for c in reversed(tree.children[v]):
            depth[c] = depth[v] + max(float(tree.length[c]), 0.0)
            stack.append(c)
    leaves = [v for v in order if not tree.children[v]]
    max_depth = float(depth.max()) or 1.0
    plot_w = max(100, width - label_width - 20)
    sx = plot_w / max_depth
    y = np.zeros(n)
    for i, v in enumerate(leaves):
        y[v] = 20 + i * row
    for v in reversed(order):  # postorder: internal y = mean of children's extremes
        if tree.children[v]:
            ys = [y[c] for c in tree.children[v]]
            y[v] = (min(ys) + max(ys)) / 2
    height = int(40 + len(leaves) * row)
    x0 = 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="tree" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">']
    for v in order:
        px = x0 + depth[v] * sx
        kids = tree.children[v]
        if kids:
            ys = [y[c] for c in kids]
            parts.append(f'<line class="edge" x1="{px:.1f}" y1="{min(ys):.1f}" x2="{px:.1f}" '
                         f'y2="{max(ys):.1f}" stroke="#555"/>')
            if v in tree.support and v != tree.root:
                parts.append(f'<text class="support" x="{px - 3:.1f}" y="{y[v] - 3:.1f}" '
                             f'text-anchor="end" font-size="9" fill="#888">{tree.support[v]:.2f}</text>')
        for c in kids:
            cx = x0 + depth[c] * sx
            colour = colours.get(tree.label[c] or "", "#555") if not tree.children[c] else "#555"
            parts.append(f'<line class="edge" x1="{px:.1f}" y1="{y[c]:.1f}" x2="{cx:.1f}" y2="{y[c]:.1f}" '
                         f'stroke="{colour}" stroke-width="1.6"><title>branch length '
                         f'{float(tree.length[c]):.4f}</title></line>')
    for v in leaves:
        name = tree.label[v] or ""
        colour = colours.get(name, "#333")
        parts.append(f'<circle cx="{x0 + depth[v] * sx:.1f}" cy="{y[v]:.1f}" r="3" fill="{colour}"/>'
                     f'<text class="leaf" x="{x0 + depth[v] * sx + 6:.1f}" y="{y[v] + 4:.1f}" '
                     f'fill="{colour}">{html.escape(name)}</text>')
    # distance scale bar: a round length near a fifth of the deepest leaf
    target = max_depth / 5
    mag = 10 ** np.floor(np.log10(target)) if target > 0 else 1.0
    bar = float(min((1, 2, 5), key=lambda k: abs(k * mag - target)) * mag)
    by = height - 12
    parts.append(f'<line x1="{x0}" y1="{by}" x2="{x0 + bar * sx:.1f}" y2="{by}" stroke="#000" stroke-width="2"/>'
                 f'<text x="{x0 + bar * sx + 6:.1f}" y="{by + 4}" font-size="10">{bar:g} (distance)</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px} th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0;cursor:pointer;user-select:none} th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"} td.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:1em} .swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.meta{color:#666;font-size:12px} .flag-suspicious{color:#b00;font-weight:bold} .flag-undeclared{color:#b60}
.flag-confirmed{color:#070}
"""

_JS = """
function cellValue(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent;var f=parseFloat(v);return isNaN(f)?v.toLowerCase():f;}
function sortTable(table,col,asc){var tb=table.tBodies[0];var rows=Array.prototype.slice.call(tb.rows);
 rows.sort(function(a,b){var x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);if(x<y)return asc?-1:1;if(x>y)return asc?1:-1;return 0;});
 rows.forEach(function(r){tb.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.className=i===col?(asc?'sorted-asc':'sorted-desc'):'';});}
document.querySelectorAll('table.sortable').forEach(function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){sortTable(t,i,th.className!=='sorted-asc');});});});
function selfCheck(){var problems=[];var t=document.getElementById('estimates');
 var col=Array.prototype.map.call(t.tHead.rows[0].cells,function(c){return c.textContent;}).indexOf('estimate');
 if(t.tBodies[0].rows.length>1){
  sortTable(t,col,true);var v=Array.prototype.map.call(t.tBodies[0].rows,function(r){return cellValue(r.cells[col]);});
  for(var i=1;i<v.length;i++)if(v[i-1]>v[i])problems.push('ascending sort');
  sortTable(t,col,false);v=Array.prototype.map.call(t.tBodies[0].rows,function(r){return cellValue(r.cells[col]);});
  for(i=1;i<v.length;i++)if(v[i-1]<v[i])problems.push('descending sort');}
 var svg=document.getElementById('tree');var nLeaves=parseInt(svg.parentNode.getAttribute('data-leaves'),10);
 if(svg.querySelectorAll('text.leaf').length!==nLeaves)problems.push('leaf labels');
 document.body.setAttribute('data-selfcheck',problems.length?('fail: '+problems.join(', ')):'ok');
 document.body.setAttribute('data-estimate-rows',String(t.tBodies[0].rows.length));}
selfCheck();
"""


def _fmt(x: object) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.3f}"
    return html.escape(str(x))


def render_report(*, newick: str | None, snapshot: int | None, models: Sequence[Mapping],
                  estimates: Sequence[Mapping], scores: Sequence[Mapping],
                  nearest: Mapping[str, Sequence[tuple[str, float]]],
                  lineage: Sequence[Mapping] = (), generated_at: datetime | None = None,
                  plots: Mapping[str, str] | None = None, heldout: Sequence[Mapping] = (),
                  rooted: Tree | None = None) -> str:
    """The report page as one self-contained HTML string (no external resources);
    ``plots``: caption -> inline SVG, shown after the tables; ``heldout``: a held-out
    check's rows (model_id, benchmark, estimate, low, high, measured); ``rooted``: the
    tree of ``newick`` already rooted (``_rooted``), when the caller has it."""
    # the index's trees are unrooted: draw from the midpoint root
    tree = rooted if rooted is not None else _rooted(newick)
    groups = declared_families(models)
    palette = colour_map(groups)
    colours = {m: palette[g] for m, g in groups.items()}
    if tree is not None and tree.n_leaves > REPORT_TREE_MAX_LEAVES:
        tree = None  # thousands of SVG labels: the explorer (index.html) draws this tree
    n_leaves = len(tree.leaf_names) if tree is not None else 0
    svg = tree_svg(tree, colours) if tree is not None else tree_svg(Tree())
    figures = "".join(f'<figure><figcaption>{html.escape(c)}</figcaption>{p}</figure>'
                      for c, p in (plots or {}).items())
    legend = "".join(f'<span><i class="swatch" style="background:{c}"></i>{html.escape(g)}</span>'
                     for g, c in palette.items())
    est_rows = "".join(
        f"<tr><td>{_fmt(e['model_id'])}</td><td>{_fmt(e['benchmark'])}</td>"
        f"<td class=num data-v=\"{e['estimate']:.6f}\">{e['estimate']:.3f}</td>"
        f"<td class=num data-v=\"{e['low']:.6f}\">{e['low']:.3f}</td>"
        f"<td class=num data-v=\"{e['high']:.6f}\">{e['high']:.3f}</td>"
        f"<td>{_fmt(e['method'])}</td><td class=num>{_fmt(e.get('snapshot'))}</td></tr>"
        for e in estimates)
    score_rows = "".join(
        f"<tr><td>{_fmt(s['model_id'])}</td><td>{_fmt(s['benchmark'])}</td>"
        f"<td class=num data-v=\"{s['value']:.6f}\">{s['value']:.3f}</td><td>{_fmt(s['source'])}</td></tr>"
        for s in scores)
    nn_rows = "".join(
        f"<tr><td>{_fmt(m)}</td><td>{_fmt(groups.get(m))}</td><td>"
        + ", ".join(f"{html.escape(o)} ({d:.3f})" for o, d in rel) + "</td></tr>"
        for m, rel in sorted(nearest.items()))
    lin_rows = "".join(
        f"<tr><td class=\"flag-{_fmt(f['kind'])}\">{_fmt(f['kind'])}</td><td>{_fmt(f['model_id'])}</td>"
        f"<td>{_fmt(f['other_id'])}</td><td class=num>{_fmt(f.get('distance'))}</td>"
        f"<td class=num>{_fmt(f.get('rank'))}</td><td>{_fmt(f.get('detail'))}</td></tr>"
        for f in lineage)
    held_rows = "".join(
        f"<tr><td>{_fmt(h['model_id'])}</td><td>{_fmt(h['benchmark'])}</td>"
        f"<td class=num>{h['estimate']:.3f}</td><td class=num>{h['low']:.3f} &ndash; {h['high']:.3f}</td>"
        f"<td class=num>{h['measured']:.3f}</td><td>{'yes' if h['low'] <= h['measured'] <= h['high'] else 'no'}</td></tr>"
        for h in heldout)
    held = ("" if not heldout else
            "<h2>Held-out check: estimates next to measured scores the estimators did not see</h2>"
            "<table id=\"heldout\" class=\"sortable\"><thead><tr><th>model</th><th>benchmark</th><th>estimate</th>"
            f"<th>90% interval</th><th>measured</th><th>inside</th></tr></thead><tbody>{held_rows}</tbody></table>")
    when = (generated_at or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>phylolm index report</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>
<body data-selfcheck="pending">
<h1>PhyloLM index</h1>
<p class="meta"><a href="index.html">explorer</a> &middot; {len(models)} models &middot; tree snapshot {snapshot if snapshot is not None else "none"}
 &middot; {len(estimates)} estimates &middot; generated {when}</p>
<h2>Tree</h2>
<p class="meta">Leaves coloured by declared family (root of the declared base-model chain) or author;
numbers at internal nodes are split support; hover a branch for its length.</p>
<div class="legend">{legend}</div>
<div id="tree-box" data-leaves="{n_leaves}">{svg}</div>
<h2>Benchmark estimates (90% intervals)</h2>
<p class="meta">Click a column header to sort.</p>
<table id="estimates" class="sortable"><thead><tr><th>model</th><th>benchmark</th><th>estimate</th>
<th>low</th><th>high</th><th>method</th><th>snapshot</th></tr></thead><tbody>{est_rows}</tbody></table>
{held}
<h2>Measured scores</h2>
<table id="scores" class="sortable"><thead><tr><th>model</th><th>benchmark</th><th>value</th><th>source</th>
</tr></thead><tbody>{score_rows}</tbody></table>
<h2>Nearest relatives</h2>
<table id="nearest" class="sortable"><thead><tr><th>model</th><th>family</th><th>nearest (distance)</th></tr>
</thead><tbody>{nn_rows}</tbody></table>
<h2>Lineage check</h2>
<table id="lineage" class="sortable"><thead><tr><th>finding</th><th>model</th><th>declared / relative</th>
<th>distance</th><th>rank</th><th>why</th></tr></thead><tbody>{lin_rows}</tbody></table>
<h2>Plots</h2>
<div id="plots">{figures}</div>
<script>{_JS}</script>
</body></html>
"""


# ---------------------------------------------------------------------------------------
# the adapter: catalog -> files
# ---------------------------------------------------------------------------------------
class CatalogView(Protocol):
    """What the publisher reads from the catalog (the catalog adapter's ``CatalogQueries``)."""

    def latest_snapshot(self) -> tuple[int | None, str | None, str | None]: ...
    def distances_table(self, genome_hash: str | None = None): ...
    def estimates_table(self): ...
    def models_table(self): ...
    def estimates(self) -> list[dict]: ...
    def scores(self) -> list[dict]: ...
    def model_rows(self) -> list[dict]: ...
    def explorer_models(self) -> list[dict]: ...
    def scores_table(self): ...
    def nearest_by_model(self, k: int, genome_hash: str | None = None) -> dict[str, list[tuple[str, float]]]: ...
    def distance_view(self, alleles=None): ...
    def mean_scores(self) -> dict[tuple[str, str], float]: ...
    def cv_groups(self, ids: Sequence[str]) -> dict[str, str]: ...


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_table(table, path: Path, fmt: str) -> None:
    """Write an Arrow table as parquet or CSV, atomically. Written by this process, not by
    DuckDB's COPY: `phylolm export` reads through the sandboxed read-only view (file access
    disabled), where COPY is refused."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pa_parquet

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if fmt == "parquet":
        pa_parquet.write_table(table, tmp)
    else:
        pa_csv.write_csv(table, tmp)
    os.replace(tmp, path)


def export(catalog: CatalogView, out_dir: str | Path, *, k_nearest: int = 3,
           lineage: Sequence[Mapping] | None = None, generated_at: datetime | None = None,
           hub_url: str = DEFAULT_HUB_URL, heldout: Sequence[Mapping] = (), alleles=None,
           far_ranks=None) -> dict[str, Path]:
    """Write the publish files into ``out_dir`` (created if needed); returns name -> path.

    ``catalog`` is a view of a catalog (see ``CatalogView``). ``lineage`` findings (dicts) may
    be passed in; when None they are computed from the catalog's declared base models.
    ``hub_url`` is where the explorer's cards link a model's Hub page. ``heldout``: rows of
    a held-out check (model_id, benchmark, estimate, low, high, measured), shown in both pages.
    ``alleles``: the writer's in-memory ``AlleleIndex`` of a sparse index (see ``distance_view``);
    ``far_ranks``: its ``indexer.core.lineage.FarRanks``, which the lineage check updates from
    one export to the next instead of counting the far ranks again.

    The distances are read through one ``catalog.distance_view``: nothing here is O(n^2) on
    a sparse index (the lineage check runs on its neighbour graph, the plots and the
    held-out check on the pairs and the scored models they show).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    snapshot, newick, genome_hash = catalog.latest_snapshot()
    written: dict[str, Path] = {}

    _atomic_write_text(out / "tree.nwk", (newick or ";") + "\n")
    written["tree.nwk"] = out / "tree.nwk"

    _write_table(catalog.distances_table(genome_hash), out / "distances.parquet", "parquet")
    written["distances.parquet"] = out / "distances.parquet"

    estimates_table = catalog.estimates_table()
    _write_table(estimates_table, out / "estimates.parquet", "parquet")
    _write_table(estimates_table, out / "estimates.csv", "csv")
    written["estimates.parquet"] = out / "estimates.parquet"
    written["estimates.csv"] = out / "estimates.csv"

    _write_table(catalog.models_table(), out / "models.parquet", "parquet")
    written["models.parquet"] = out / "models.parquet"
    _write_table(catalog.scores_table(), out / "scores.parquet", "parquet")
    written["scores.parquet"] = out / "scores.parquet"

    view = catalog.distance_view(alleles)
    if lineage is None:
        lineage = lineage_from_catalog(catalog, view, far_ranks)
    _write_table(_lineage_table(lineage), out / "lineage.parquet", "parquet")
    written["lineage.parquet"] = out / "lineage.parquet"

    estimates, scores = catalog.estimates(), catalog.scores()
    nearest = catalog.nearest_by_model(k_nearest, genome_hash)
    plots = plots_from_catalog(catalog, view)
    (out / "plots").mkdir(exist_ok=True)
    for name, (_, svg) in zip(PLOT_FILES, plots.items()):
        _atomic_write_text(out / name, svg + "\n")
        written[name] = out / name
    captions = {caption: svg for caption, svg in plots.items()}

    rooted = _rooted(newick)  # parsed and rooted once for both pages (1 s at 20,000 leaves)
    page = render_report(newick=newick, snapshot=snapshot, models=catalog.model_rows(),
                         estimates=estimates, scores=scores, nearest=nearest, lineage=lineage,
                         generated_at=generated_at, plots=captions, heldout=heldout, rooted=rooted)
    _atomic_write_text(out / "report.html", page)
    written["report.html"] = out / "report.html"

    data = explorer_data(rooted, catalog.explorer_models(), nearest=nearest, estimates=estimates,
                         scores=scores, lineage=lineage, snapshot=snapshot, hub_url=hub_url,
                         generated_at=generated_at or datetime.now(timezone.utc), heldout=heldout)
    _atomic_write_text(out / "index.html", render_explorer(data, plots=captions))
    written["index.html"] = out / "index.html"
    _atomic_write_text(out / "auspice.json", auspice_json(data))
    written["auspice.json"] = out / "auspice.json"
    _atomic_write_gzip(out / "tree.jsonl.gz", taxonium_jsonl(data))
    written["tree.jsonl.gz"] = out / "tree.jsonl.gz"

    _atomic_write_text(out / "manifest.json", json.dumps(
        {"snapshot": snapshot, "genome_hash": genome_hash, "files": sorted(written)}, indent=2) + "\n")
    return written


def _rooted(newick: str | None) -> Tree | None:
    """The snapshot's tree rooted at its midpoint (the index's trees are unrooted), or None."""
    if not newick or newick.strip() in ("", ";"):
        return None
    from indexer.core.tree.rooting import midpoint_root

    return midpoint_root(parse_newick(newick))


def _lineage_table(lineage: Sequence[Mapping]):
    import pyarrow as pa

    schema = pa.schema([("kind", pa.string()), ("model_id", pa.string()), ("other_id", pa.string()),
                        ("distance", pa.float64()), ("rank", pa.int64()), ("nearest_id", pa.string()),
                        ("nearest_distance", pa.float64()), ("detail", pa.string())])
    return pa.Table.from_pylist([{k: f.get(k) for k in schema.names} for f in lineage], schema=schema)


def _atomic_write_gzip(path: Path, lines) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
        f.writelines(lines)
    os.replace(tmp, path)


_HELDOUT_MEMO: dict[str, list[dict]] = {}  # one entry: the last (scores, distances) seen by this process


def heldout_estimates(catalog: CatalogView, view=None, *, method: str | None = None) -> list[dict]:
    """Leave-one-family-out estimates of every measured score (the families are the
    estimators' CV groups): each family's scores hidden in turn and predicted from the
    other scored models, as ``indexer.core.predict.validation`` evaluates (on the scored
    models' distance matrix, as the paper's protocol). Rows: model_id, benchmark, truth,
    estimate, low, high. Empty when fewer than two families have scores.

    It depends only on the scored models (their distances, scores and groups), so an export
    after an unscored insert reuses the last result of this process (``_HELDOUT_MEMO``): a
    streaming job refits it when scores change, not on every publish. ``view``: the
    catalog's ``distance_view`` (made when None); only the scored models' matrix is read."""
    from indexer.core.predict import DEFAULT_METHOD

    view = view if view is not None else catalog.distance_view()
    mean = catalog.mean_scores()
    scored, sub = view.among(sorted({m for (m, _) in mean}))
    benches = sorted({b for (m, b) in mean if m in set(scored)})
    if not benches or len(scored) < 3:
        return []
    groups = catalog.cv_groups(scored)
    fam = [groups[m] for m in scored]
    y = np.array([[mean.get((m, b), np.nan) for b in benches] for m in scored])
    if len(set(fam)) < 2:
        return []
    method = method or DEFAULT_METHOD
    key = hashlib.sha256(json.dumps([method, scored, benches, fam]).encode() + sub.tobytes()
                         + np.nan_to_num(y, nan=-1.0).tobytes()).hexdigest()
    if key not in _HELDOUT_MEMO:
        _HELDOUT_MEMO.clear()
        _HELDOUT_MEMO[key] = _heldout(scored, sub, y, fam, benches, method)
    return [dict(r) for r in _HELDOUT_MEMO[key]]


def _heldout(ids: list[str], d: np.ndarray, y: np.ndarray, fam: list[str], benches: list[str],
             method: str) -> list[dict]:
    from indexer.core.predict.registry import get_predictor
    from indexer.core.predict.validation import leave_one_family_out, leave_one_family_out_joint

    predictor = get_predictor(method)
    if getattr(predictor, "joint", False):
        results = leave_one_family_out_joint(d, y, fam, predictor)
    else:
        results = [leave_one_family_out(d, y[:, j], fam, predictor) for j in range(len(benches))]
    rows = []
    for b, res in zip(benches, results):
        for i, t, e, lo, hi in zip(res["index"], res["truth"], res["estimate"], res["low"], res["high"]):
            rows.append({"model_id": ids[int(i)], "benchmark": b, "truth": float(t), "estimate": float(e),
                         "low": float(lo), "high": float(hi)})
    return rows


def plots_from_catalog(catalog: CatalogView, view=None) -> dict[str, str]:
    """caption -> SVG of the three plots (``plots``), in the order of ``PLOT_FILES``;
    ``view``: the catalog's ``distance_view`` (made when None)."""
    view = view if view is not None else catalog.distance_view()
    rows = heldout_estimates(catalog, view)
    groups = relation_distances(view.ids, view.pairs, catalog.explorer_models())
    return {"Estimated vs measured, leave one family out": estimated_vs_measured(rows),
            "Coverage of the 90% intervals": interval_coverage(rows),
            "Distance to the declared base model, per relation kind": distance_by_relation(groups)}


def estimates_from_catalog(catalog: CatalogView, *, method: str | None = None, changed: set[str] | None = None,
                           cache=None) -> list:
    """Estimates for every indexed model without a score, from the catalog's distances.

    The estimates name the newest tree snapshot. Models whose row of the matrix is
    incomplete are left out (they are not yet fully indexed). See ``estimate_records``.
    A sparse index has no whole matrix: there the estimates are those of the writer's refit
    (``indexer.core.predict.refresh``: a fit on a bounded reference set, each model estimated
    from its distances to that set, O(n x reference) distances in all), not O(n^2).
    """
    view = catalog.distance_view()
    if view.sparse:
        return _estimates_on_reference(catalog, view, method)
    ids, d = view.among(view.ids)
    return estimate_records(catalog, ids, d, view.snapshot, method=method, changed=changed, cache=cache)


def _estimates_on_reference(catalog: CatalogView, view, method: str | None) -> list:
    from indexer.core.predict import DEFAULT_METHOD
    from indexer.core.predict.refresh import estimate_all, fit_reference
    from schemas.records import Estimate

    scores = catalog.mean_scores()
    if not scores or len(view) < 2:
        return []
    fit = fit_reference(view.ids, scores, view.rows, method or DEFAULT_METHOD, catalog.cv_groups(view.ids))
    return [Estimate(model_id=e.model_id, benchmark=e.benchmark, estimate=e.estimate, low=e.low, high=e.high,
                     method=e.method, snapshot=view.snapshot)
            for e in estimate_all(fit, view.ids, view.rows, scores)]


def estimate_records(catalog: CatalogView, ids: Sequence[str], distances: np.ndarray, snapshot: int | None, *,
                     method: str | None = None, changed: set[str] | None = None, cache=None) -> list:
    """Estimate records (``schemas.records.Estimate``, labelled with ``snapshot``) for the
    models among ``ids`` without a score, from their distance matrix and the catalog's scores.

    The one path from (distances, scores) to what the catalog stores: the CV groups are the
    declared families (``indexer.core.families.cv_groups``), ``indexer.core.predict.estimate_scores``
    does the rest, with ``cache`` (``FittedPredictors``) keeping its fits between calls.
    """
    from indexer.core.predict import DEFAULT_METHOD, estimate_scores
    from schemas.records import Estimate

    scores = catalog.mean_scores()
    if not scores:
        return []
    ids = list(ids)
    estimates = estimate_scores(distances, ids, scores, changed=changed, method=method or DEFAULT_METHOD,
                                groups=catalog.cv_groups(ids), cache=cache)
    return [Estimate(model_id=e.model_id, benchmark=e.benchmark, estimate=e.estimate, low=e.low, high=e.high,
                     method=e.method, snapshot=snapshot) for e in estimates]


def lineage_from_catalog(catalog: CatalogView, view=None, far_ranks=None) -> list[dict]:
    """The lineage check on the catalog's distances and declared base models; ``view``: the
    catalog's ``distance_view`` (made when None). On a sparse index the check reads the
    neighbour graph, and an exact row only for a declared base outside its child's
    neighbours (``indexer.core.lineage.NeighbourRelatives``; ``far_ranks``: the last check's
    counts for those, brought up to date rather than counted again)."""
    from indexer.core.lineage import check_relatives

    view = view if view is not None else catalog.distance_view()
    ids = set(view.ids)
    models = catalog.model_rows()
    declared = {m["id"]: list(m["base_models"] or []) for m in models}
    created = {m["id"]: m["created_at"] for m in models if m["created_at"] is not None}
    copies = {m["id"]: m["copy_of"] for m in models if m["copy_of"]}
    # Identical weight files found another way (both probed, e.g. uploaded in one cycle): the
    # later upload copies the first.
    first: dict[tuple, str] = {}
    for m in models:
        if m["id"] in ids and m["weight_hashes"] and m["id"] not in copies:
            twin = first.setdefault(tuple(m["weight_hashes"]), m["id"])
            if twin != m["id"]:
                copies[m["id"]] = twin
    if len(ids) < 2:
        return []
    return [f.as_dict() for f in check_relatives(view.relatives(far_ranks), declared, created, copies=copies)]
