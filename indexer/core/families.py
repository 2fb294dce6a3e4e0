"""Declared families: each model's group by the base models its uploader declared.

The report colours leaves by it, and the estimators cross-validate by it (a family is held
out whole, so a prediction never leans on a sibling's score). Pure: rows in, groups out.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence


def declared_families(models: Sequence[Mapping]) -> dict[str, str]:
    """Each model's colour group: the root of its declared base-model chain (a declared
    root need not be indexed); a root colours itself like its descendants; else author."""
    base = {m["id"]: list(m.get("base_models") or []) for m in models}
    out: dict[str, str] = {}
    for mid in base:
        cur, seen = mid, {mid}
        while base.get(cur):  # stops at a model with no declared base, or one not indexed
            nxt = base[cur][0]
            if nxt in seen:
                break
            seen.add(nxt)
            cur = nxt
        if cur != mid:
            out[mid] = cur
    roots = set(out.values())
    for m in models:
        if m["id"] not in out:
            out[m["id"]] = m["id"] if m["id"] in roots else (m.get("author") or m["id"].split("/")[0])
    return out


def cv_groups(models: Sequence[Mapping], ids: Sequence[str]) -> dict[str, str]:
    """Cross-validation groups of the estimators for ``ids``: each model's declared family
    (``declared_families`` of ``models``), else the owner part of its id."""
    groups = declared_families(models)
    return {m: groups.get(m, m.split("/")[0]) for m in ids}
