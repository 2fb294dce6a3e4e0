"""Lineage check: declared base models against the phylogeny (domain core, no I/O).

A model card's ``base_model`` is a claim. PhyloLM distances test it (Yax et al. 2024 show
fine-tunes sit next to their parents): a declared parent should be among the child's
nearest relatives, and a model that sits right next to another while declaring nothing is
likely an undeclared fine-tune, merge or re-upload.

Rules (every finding carries the distances that support it):

* ``confirmed`` -- the declared parent is among the child's ``confirm_rank`` nearest models
  or its nearest ``confirm_fraction`` of the index, counting only models outside the
  parent's declared lineage: fine-tunes of one base often sit closer to each other than to
  the base (and a far fine-tune sees all of them at about the same distance), so models
  that declare the parent as an ancestor, directly or through their own declared bases, the
  child's other declared bases and the child's exact copies (``copies``: they are the child)
  are set aside when the parent's rank is taken.
* ``suspicious`` -- the declared parent is farther than ``suspicious_fraction`` of the
  index *and* at least ``ratio`` times the distance to the child's nearest model (the
  second guard keeps an index where everything is equidistant from raising alarms).
* ``unclear`` -- neither.
* ``not_indexed`` -- the declared parent is not in the index (nothing to check against).
* ``exact_copy`` -- the model's weight files are byte-identical to another's (``copies``,
  from the Hub's content hashes): "identical weights to X", whether declared or not. Such a
  pair is not reported again as ``undeclared``.
* ``undeclared`` -- a model whose nearest relative lies within the close distance, where
  neither declares the other and they share no declared base. The later upload (by
  ``created``) is named as the likely derivative when upload times are known, else the one
  that declares nothing.
  The close distance is ``close_distance`` when given, else ``ratio`` times the median
  distance of the confirmed declared pairs, else the 5th percentile of all distances.

Cost: O(n^2) for the ranks (one row scan per declared pair and per undeclared model), plus
tracing each declared base's declared descendants (their count summed over the bases: at
most O(n^2), for one long chain of declarations).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from indexer.core.distance import check_matrix, nearest_k


@dataclass(frozen=True)
class LineageFinding:
    kind: str  # confirmed | suspicious | unclear | not_indexed | undeclared | exact_copy
    model_id: str
    other_id: str  # the declared parent, or the close undeclared relative
    distance: float | None  # distance between model and other
    rank: int | None  # other's rank among model's relatives (1 = nearest)
    nearest_id: str | None  # model's nearest relative in the index
    nearest_distance: float | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_lineage(D: np.ndarray, ids: Sequence[str], declared: Mapping[str, Sequence[str]],
                  created: Mapping[str, object] | None = None, *, confirm_rank: int = 3,
                  confirm_fraction: float = 0.05, suspicious_fraction: float = 0.25,
                  ratio: float = 2.0, close_distance: float | None = None,
                  copies: Mapping[str, str] | None = None) -> list[LineageFinding]:
    """Check every declared base model, and look for undeclared close relatives.

    ``D`` is the n x n distance matrix in the order of ``ids``; ``declared`` maps a model
    id to its declared base model ids (from its card); ``created`` optionally maps ids to
    comparable upload times; ``copies`` maps a model to the model whose weight files it
    repeats byte for byte.
    """
    D, ids = check_matrix(D, ids)
    if not 0 < suspicious_fraction <= 1 or confirm_rank < 1 or ratio <= 1:
        raise ValueError("need confirm_rank >= 1, 0 < suspicious_fraction <= 1, ratio > 1")
    findings = _check(D, ids, declared, created or {}, confirm_rank, confirm_fraction, suspicious_fraction,
                      ratio, close_distance, copies or {})
    pos = {m: i for i, m in enumerate(ids)}
    for copy, twin in sorted((copies or {}).items()):
        d = float(D[pos[copy], pos[twin]]) if copy in pos and twin in pos else None
        said = "declared" if twin in declared.get(copy, ()) else "not declared"
        findings.append(LineageFinding("exact_copy", copy, twin, d, None, None, None,
                                       f"identical weights to {twin} ({said})"))
    return findings


def declared_descendants(ids: Sequence[str], declared: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """{model: the indexed models that declare it as an ancestor, directly or transitively}."""
    children: dict[str, set[str]] = {}
    for m in ids:
        for b in declared.get(m, ()):
            if b != m:
                children.setdefault(b, set()).add(m)
    out: dict[str, set[str]] = {}
    for root in children:
        seen: set[str] = set()
        stack = list(children[root])
        while stack:
            m = stack.pop()
            if m not in seen and m != root:
                seen.add(m)
                stack.extend(children.get(m, ()))
        out[root] = seen
    return out


def _check(D, ids, declared, created, confirm_rank, confirm_fraction, suspicious_fraction, ratio,
           close_distance, copies):
    n = len(ids)
    pos = {m: i for i, m in enumerate(ids)}
    masked = D.copy()
    np.fill_diagonal(masked, np.inf)
    # each model's nearest relative (ties: by id, as everywhere, see ``nearest_k``)
    nearest = nearest_k(masked, 1, ids)[:, 0] if n > 1 else np.zeros(n, dtype=int)
    findings: list[LineageFinding] = []
    confirmed_d: list[float] = []

    descendants = declared_descendants(ids, declared)
    for child in ids:
        i = pos[child]
        nn = ids[nearest[i]] if n > 1 else None
        nn_d = float(masked[i, nearest[i]]) if n > 1 else None
        for parent in declared.get(child, ()):
            if parent == child:
                continue
            if parent not in pos:
                findings.append(LineageFinding("not_indexed", child, parent, None, None, nn, nn_d,
                                               "declared base model is not in the index"))
                continue
            d = float(D[i, pos[parent]])
            # the parent's own declared lineage, the child's other declared bases and the
            # child's exact copies (they are the child) do not compete with it for a rank
            twins = {c for c, t in copies.items() if t == child} | {t for c, t in copies.items() if c == child}
            aside = (descendants.get(parent, set()) | set(declared.get(child, ())) | twins) - {parent, child}
            row = masked[i].copy()
            row[[pos[m] for m in aside if m in pos]] = np.inf
            rank = 1 + int(np.sum(row < d))  # models strictly closer than the parent
            frac = (rank - 1) / max(1, n - 1)
            if rank <= confirm_rank or frac <= confirm_fraction:
                kind, why = "confirmed", f"declared base is relative #{rank} of {n - 1}"
                confirmed_d.append(d)
            elif frac >= suspicious_fraction and nn_d is not None and d >= ratio * nn_d:
                kind = "suspicious"
                why = (f"declared base is relative #{rank} of {n - 1}, {d / max(nn_d, 1e-12):.1f}x "
                       f"the distance to the nearest model {nn}")
            else:
                kind, why = "unclear", f"declared base is relative #{rank} of {n - 1}"
            findings.append(LineageFinding(kind, child, parent, d, rank, nn, nn_d, why))

    if close_distance is None:
        if confirmed_d:
            close_distance = ratio * float(np.median(confirmed_d))
        elif n > 2:
            close_distance = float(np.percentile(D[np.triu_indices(n, 1)], 5))
        else:
            close_distance = 0.0

    def related(a: str, b: str) -> bool:
        da, db = set(declared.get(a, ())), set(declared.get(b, ()))
        return b in da or a in db or bool(da & db)

    seen: set[frozenset] = set()
    for model in ids:
        if n < 2:
            break
        i = pos[model]
        j = int(nearest[i])
        other = ids[j]
        d = float(masked[i, j])
        pair = frozenset((model, other))
        if (d > close_distance or related(model, other) or pair in seen
                or copies.get(model) == other or copies.get(other) == model):
            continue
        seen.add(pair)
        # The later upload is the likely derivative when both upload times are known;
        # otherwise the model that declares nothing at all.
        child, relative = model, other
        if model in created and other in created:
            if created[other] > created[model]:
                child, relative = other, model
        elif declared.get(model) and not declared.get(other):
            child, relative = other, model
        ci = pos[child]
        claim = "declares no base model" if not declared.get(child) else "does not declare it"
        findings.append(LineageFinding(
            "undeclared", child, relative, d, 1 + int(np.sum(masked[ci] < d)), ids[nearest[ci]],
            float(masked[ci, nearest[ci]]),
            f"sits {d:.3f} from {relative} (close distance {close_distance:.3f}) but {claim}"))
    return findings
