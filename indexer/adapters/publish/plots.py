"""The publish folder's plots, as SVG written by this module (no plotting library): pure
functions from plain rows to an SVG string, shown in the explorer page and written as files.

* ``estimated_vs_measured``: held-out estimates against measured scores, one panel per
  benchmark, each point with its 90% interval as a vertical bar, and the diagonal;
* ``interval_coverage``: per benchmark, the share of measured scores inside their interval,
  against the nominal level;
* ``distance_by_relation``: the distance of each model to its declared base model, one row
  per declared relation kind (finetune, adapter, quantized, merge, ...), next to the
  distances between models with no declared relation.
"""
from __future__ import annotations

import html
import math
from typing import Callable, Mapping, Sequence

import numpy as np

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_FONT = 'font-family="sans-serif" font-size="11"'


def _svg(width: int, height: int, body: Sequence[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {_FONT} role="img" aria-label="{html.escape(title)}">'
            f"<title>{html.escape(title)}</title>" + "".join(body) + "</svg>")


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not hi > lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    step = min((step, 2 * step, 5 * step, 10 * step), key=lambda s: abs((hi - lo) / s - n))
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _empty(title: str, why: str) -> str:
    return _svg(360, 40, [f'<text x="6" y="24" fill="#666">{html.escape(why)}</text>'], title)


def estimated_vs_measured(rows: Sequence[Mapping], *, panel: int = 240) -> str:
    """Scatter of ``estimate`` (y, with ``low``..``high`` bars) against ``truth`` (x), one
    panel per ``benchmark``; rows are dicts with those keys and ``model_id``."""
    title = "estimated vs measured (leave one family out, 90% intervals)"
    rows = [r for r in rows if all(np.isfinite([r["truth"], r["estimate"], r["low"], r["high"]]))]
    if not rows:
        return _empty(title, "no held-out estimates: fewer than two families have measured scores")
    benches = sorted({r["benchmark"] for r in rows})
    pad, body = 36, []
    for j, b in enumerate(benches):
        rs = [r for r in rows if r["benchmark"] == b]
        vals = [v for r in rs for v in (r["truth"], r["low"], r["high"])]
        lo, hi = min(vals), max(vals)
        margin = (hi - lo) * 0.08 or 0.05
        lo, hi = lo - margin, hi + margin
        ox = j * (panel + pad) + pad
        size = panel - 10
        sx = lambda v: ox + (v - lo) / (hi - lo) * size  # noqa: E731
        sy = lambda v: 20 + size - (v - lo) / (hi - lo) * size  # noqa: E731
        body.append(f'<rect x="{ox}" y="20" width="{size}" height="{size}" fill="none" stroke="#ccc"/>')
        body.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" '
                    'stroke="#999" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{ox}" y="14" font-weight="bold">{html.escape(b)}</text>')
        for t in _ticks(lo, hi):
            body.append(f'<text x="{sx(t):.1f}" y="{34 + size}" text-anchor="middle" fill="#555">{t:g}</text>'
                        f'<text x="{ox - 3}" y="{sy(t) + 3:.1f}" text-anchor="end" fill="#555">{t:g}</text>')
        for r in rs:
            x = sx(r["truth"])
            inside = r["low"] <= r["truth"] <= r["high"]
            c = COLOURS[0] if inside else COLOURS[1]
            body.append(f'<g class="point"><title>{html.escape(str(r.get("model_id", "")))}: measured '
                        f'{r["truth"]:.3f}, estimate {r["estimate"]:.3f} [{r["low"]:.3f}, {r["high"]:.3f}]</title>'
                        f'<line x1="{x:.1f}" y1="{sy(r["low"]):.1f}" x2="{x:.1f}" y2="{sy(r["high"]):.1f}" '
                        f'stroke="{c}" stroke-opacity="0.5"/>'
                        f'<circle cx="{x:.1f}" cy="{sy(r["estimate"]):.1f}" r="3" fill="{c}"/></g>')
    width = len(benches) * (panel + pad) + pad
    body.append(f'<text x="{pad}" y="{panel + 40}" fill="#555">x: measured, y: estimate; '
                'red: measured outside the interval</text>')
    return _svg(width, panel + 48, body, title)


def interval_coverage(rows: Sequence[Mapping], *, nominal: float = 0.9) -> str:
    """Bars: per benchmark, the share of rows with ``low <= truth <= high``."""
    title = f"interval coverage (nominal {nominal:.0%})"
    rows = [r for r in rows if all(np.isfinite([r["truth"], r["low"], r["high"]]))]
    if not rows:
        return _empty(title, "no held-out estimates to check")
    benches = sorted({r["benchmark"] for r in rows})
    bar, gap, h, left = 34, 18, 160, 40
    body = []
    for t in (0, 0.5, 1):
        y = 10 + h * (1 - t)
        body.append(f'<line x1="{left}" y1="{y}" x2="{left + len(benches) * (bar + gap)}" y2="{y}" stroke="#eee"/>'
                    f'<text x="{left - 4}" y="{y + 3}" text-anchor="end" fill="#555">{t:.0%}</text>')
    for j, b in enumerate(benches):
        rs = [r for r in rows if r["benchmark"] == b]
        cov = float(np.mean([r["low"] <= r["truth"] <= r["high"] for r in rs]))
        x = left + j * (bar + gap) + gap / 2
        body.append(f'<rect class="coverage" data-benchmark="{html.escape(b)}" data-coverage="{cov:.4f}" '
                    f'x="{x}" y="{10 + h * (1 - cov):.1f}" width="{bar}" height="{h * cov:.1f}" fill="{COLOURS[2]}">'
                    f'<title>{html.escape(b)}: {cov:.0%} of {len(rs)}</title></rect>'
                    f'<text x="{x + bar / 2}" y="{h + 24}" text-anchor="middle">{html.escape(b[:10])}</text>'
                    f'<text x="{x + bar / 2}" y="{6 + h * (1 - cov):.1f}" text-anchor="middle">{cov:.0%}</text>')
    y = 10 + h * (1 - nominal)
    width = left + len(benches) * (bar + gap) + 20
    body.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#d62728" stroke-dasharray="4 3"/>')
    return _svg(width, h + 34, body, title)


def distance_by_relation(groups: Mapping[str, Sequence[float]], *, width: int = 640) -> str:
    """A strip plot: one row per group (relation kind), one tick per distance, the median
    marked. ``groups``: kind -> distances."""
    title = "distance to the declared base model, per relation kind"
    groups = {k: [float(x) for x in v if np.isfinite(x)] for k, v in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return _empty(title, "no distances between models with a declared relation")
    hi = max(max(v) for v in groups.values()) * 1.05 or 1.0
    left, row, right = 150, 30, 20
    sx = lambda v: left + v / hi * (width - left - right)  # noqa: E731
    body = []
    for j, (kind, vals) in enumerate(sorted(groups.items())):
        y = 10 + j * row + row / 2
        c = COLOURS[j % len(COLOURS)]
        body.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{html.escape(kind)} ({len(vals)})</text>')
        rng = np.random.default_rng(j)  # a fixed jitter: the file is the same on every export
        step = max(1, len(vals) // 2000)
        for v in sorted(vals)[::step]:
            jy = y + rng.uniform(-row * 0.3, row * 0.3)
            body.append(f'<circle cx="{sx(v):.1f}" cy="{jy:.1f}" r="2.2" fill="{c}" fill-opacity="0.6"/>')
        med = float(np.median(vals))
        body.append(f'<line x1="{sx(med):.1f}" y1="{y - row * 0.4:.1f}" x2="{sx(med):.1f}" y2="{y + row * 0.4:.1f}" '
                    f'stroke="#000" stroke-width="2"><title>median {med:.3f}</title></line>')
    axis_y = 10 + len(groups) * row + 4
    body.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="#999"/>')
    for t in _ticks(0, hi):
        body.append(f'<text x="{sx(t):.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">{t:g}</text>')
    body.append(f'<text x="{left}" y="{axis_y + 28}" fill="#555">distance (black bar: median)</text>')
    return _svg(width, axis_y + 34, body, title)


def relation_distances(ids: Sequence[str], pair_distances: Callable[[Sequence[tuple[str, str]]], Sequence[float]],
                       models: Sequence[Mapping], *, max_unrelated: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Per declared relation kind, the distances of models to their declared base models
    (``pair_distances`` of (model, base) pairs, both among ``ids``); ``"no declared
    relation"``: a sample of pairs neither of which declares the other (up to
    ``max_unrelated``, fixed ``seed``). O(declared pairs + max_unrelated) distances asked."""
    at = {m: i for i, m in enumerate(ids)}
    kinds: list[str] = []
    declared: list[tuple[str, str]] = []
    related: set[tuple[int, int]] = set()
    for m in models:
        i = at.get(m["id"])
        for b in m.get("base_models") or ():
            j = at.get(b)
            if i is None or j is None:
                continue
            kinds.append(m.get("base_model_relation") or "declared (no kind)")
            declared.append((m["id"], b))
            related |= {(i, j), (j, i)}
    n = len(ids)
    pairs: list[tuple[int, int]] = []
    if n > 1:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, 4 * max_unrelated)
        b = rng.integers(0, n, 4 * max_unrelated)
        pairs = [(int(x), int(y)) for x, y in zip(a, b) if x != y and (x, y) not in related]
        if n * (n - 1) <= 2 * max_unrelated:  # small: every pair, once
            pairs = [(x, y) for x in range(n) for y in range(x + 1, n) if (x, y) not in related]
        pairs = pairs[:max_unrelated]
    values = [float(v) for v in pair_distances(declared + [(ids[x], ids[y]) for x, y in pairs])]
    out: dict[str, list[float]] = {}
    for kind, v in zip(kinds, values):
        out.setdefault(kind, []).append(v)
    if pairs:
        out["no declared relation"] = values[len(declared):]
    return out
