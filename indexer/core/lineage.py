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

The distances come as ``Relatives``: ``MatrixRelatives`` over a full matrix (an exact
index), or ``NeighbourRelatives`` over a neighbour graph (the Hub-scale sparse index: each
model's stored nearest), which asks for an exact row only where a declared base lies
outside the child's stored neighbours.

Cost: on a matrix, O(n^2) for the ranks (one row scan per declared pair and per undeclared
model); on a neighbour graph, O(n k) plus, per declared base outside its child's k nearest,
one exact row up to a few thousand models and a fixed sample's distances beyond (the rank
then estimated, and said so). Plus tracing each declared base's declared descendants (their count
summed over the bases: at most O(n^2), for one long chain of declarations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

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
        return {f: getattr(self, f) for f in self.__dataclass_fields__}  # flat: no asdict deep copy


def check_lineage(D: np.ndarray, ids: Sequence[str], declared: Mapping[str, Sequence[str]],
                  created: Mapping[str, object] | None = None, **rules) -> list[LineageFinding]:
    """Check every declared base model, and look for undeclared close relatives.

    ``D`` is the n x n distance matrix in the order of ``ids``; ``declared`` maps a model
    id to its declared base model ids (from its card); ``created`` optionally maps ids to
    comparable upload times; ``rules`` are ``check_relatives``'s (``copies`` among them).
    """
    D, ids = check_matrix(D, ids)
    return check_relatives(MatrixRelatives(D, ids), declared, created, **rules)


def check_relatives(relatives: "Relatives", declared: Mapping[str, Sequence[str]],
                    created: Mapping[str, object] | None = None, *, confirm_rank: int = 3,
                    confirm_fraction: float = 0.05, suspicious_fraction: float = 0.25,
                    ratio: float = 2.0, close_distance: float | None = None,
                    copies: Mapping[str, str] | None = None) -> list[LineageFinding]:
    """``check_lineage`` on any ``Relatives`` (a matrix, or a neighbour graph); ``copies``
    maps a model to the model whose weight files it repeats byte for byte."""
    if not 0 < suspicious_fraction <= 1 or confirm_rank < 1 or ratio <= 1:
        raise ValueError("need confirm_rank >= 1, 0 < suspicious_fraction <= 1, ratio > 1")
    copies = copies or {}
    findings = _check(relatives, declared, created or {}, confirm_rank, confirm_fraction, suspicious_fraction,
                      ratio, close_distance, copies)
    indexed = set(relatives.ids)
    pairs = sorted((c, t) for c, t in copies.items() if c in indexed and t in indexed)
    known = dict(zip(pairs, (d for d, _, _ in relatives.ranks([(c, t, frozenset()) for c, t in pairs]))))
    for copy, twin in sorted(copies.items()):
        said = "declared" if twin in declared.get(copy, ()) else "not declared"
        findings.append(LineageFinding("exact_copy", copy, twin, known.get((copy, twin)), None, None, None,
                                       f"identical weights to {twin} ({said})"))
    return findings


class Relatives(Protocol):
    """The distances the check reads: each model's nearest relative, and ranks."""

    ids: list[str]

    def nearest(self, model: str) -> tuple[str, float]:
        """The model's nearest other model and its distance (ties: by id, as ``nearest_k``)."""

    def ranks(self, queries: Sequence[tuple[str, str, frozenset]]) -> list[tuple[float, int, int | None]]:
        """For each (model, other, aside): their distance d, other's rank among model's
        relatives (1 + the models, model and ``aside`` not counted, strictly closer than d),
        and None when the rank is exact, else the size of the sample it was estimated from."""

    def low_distance(self, percentile: float) -> float:
        """That percentile of the distances between distinct models."""


class MatrixRelatives:
    """``Relatives`` read from a full distance matrix (an exact index). O(n) a rank."""

    def __init__(self, D: np.ndarray, ids: Sequence[str]):
        self.ids = list(ids)
        self._pos = {m: i for i, m in enumerate(self.ids)}
        self._D = D
        self._masked = D.copy()
        np.fill_diagonal(self._masked, np.inf)
        self._nearest = nearest_k(self._masked, 1, self.ids)[:, 0] if len(self.ids) > 1 else None

    def nearest(self, model: str) -> tuple[str, float]:
        i = self._pos[model]
        j = int(self._nearest[i])
        return self.ids[j], float(self._masked[i, j])

    def ranks(self, queries):
        out = []
        for model, other, aside in queries:
            i = self._pos[model]
            d = float(self._D[i, self._pos[other]])
            row = self._masked[i].copy()
            row[[self._pos[m] for m in aside if m in self._pos]] = np.inf
            out.append((d, 1 + int(np.sum(row < d)), None))
        return out

    def low_distance(self, percentile: float) -> float:
        return float(np.percentile(self._D[np.triu_indices(len(self.ids), 1)], percentile))


class FarRanks:
    """What one lineage check leaves for the next over the same, grown, index (a streaming
    job checks again at every publish): per far query (model, other, aside) its exact
    distance d and how many of the reference models (``NeighbourRelatives``: every model, or
    the fixed sample past ``sample`` + 1) are closer than d. The next check computes only
    the distances from those queries' models to the references that entered or left the set
    since (the new models while every model counts; the sample's rare changes after), and
    new queries in full: O(far queries x changed references) instead of O(far queries x
    sample). The counts equal a fresh check's (tested): the distances are exact and a count
    only adds the entered references closer than d and removes the departed ones.

    Kept in memory by its owner (the publisher keeps one per catalog); ``max_entries``
    bounds it (past it, it starts again empty)."""

    def __init__(self, max_entries: int = 1_000_000):
        self.ids: frozenset[str] = frozenset()  # the index the entries were counted on
        self.refs: frozenset[str] = frozenset()
        self.entries: dict[tuple[str, str, frozenset], tuple[float, int]] = {}
        self.max_entries = max_entries
        self.computed = 0  # distances computed through this memo (a figure for benchmarks)

    def clear(self) -> None:
        self.ids, self.refs, self.entries = frozenset(), frozenset(), {}


def bottom_sample(ids: Sequence[str], size: int, seed: int) -> list[str]:
    """The ``size`` ids with the smallest keyed hash (BLAKE2b, key ``seed``): a uniform random
    sample that a growing index keeps, a new model entering it only when its hash is among
    the ``size`` smallest (probability size / n), so checks on a stream read nearly the same
    sample. O(n log size)."""
    import hashlib
    import heapq

    key = int(seed).to_bytes(8, "little", signed=True)
    return sorted(heapq.nsmallest(size, ids, key=lambda m: hashlib.blake2b(m.encode(), key=key,
                                                                          digest_size=8).digest()))


class NeighbourRelatives:
    """``Relatives`` read from a neighbour graph: each model's stored neighbours with their
    exact distances (the sparse index stores, per insert, the new model's k nearest and the
    earlier models whose k nearest it entered, so each model's ``k`` nearest stored pairs are
    its current list). A rank whose other model is among those ``k`` is counted there (None:
    every stored pair counts), exactly as far as the graph is: a model the candidate search
    missed (its recall, about 0.99 at k = 32) is not counted.

    Any other query (a declared base outside its child's k nearest) asks ``rows(models,
    among)`` for exact distances (an array len(models) x len(among)), in blocks of ``block``
    models. Up to ``sample`` + 1 models, ``among`` is every model: the rank is exact, and it
    costs O(n) a query. Past that, ``among`` is a fixed random sample of ``sample`` models
    (``bottom_sample``, keyed by ``seed``) and the query's other model: the distance is exact,
    and the rank is estimated from the share of the sample closer than it (never below the
    count in the graph), O(sample) a query, so the check stays O(n k + queries x sample) at
    any n. The estimate's standard error on the rank's share of the index is
    sqrt(p (1 - p) / sample), 0.0096 at p = 0.25 and sample = 2,048 (the suspicious
    threshold), which the findings say. ``memo`` (``FarRanks``), when given, carries the far
    queries' counts from the last check to this one.
    """

    def __init__(self, ids: Sequence[str], neighbours: Mapping[str, Sequence[tuple[str, float]]],
                 rows: Callable[[Sequence[str], Sequence[str]], np.ndarray], *, k: int | None = None,
                 block: int = 256, sample: int = 2048, seed: int = 0, memo: FarRanks | None = None):
        self.ids = list(ids)
        self._pos = {m: i for i, m in enumerate(self.ids)}
        self._stored = {m: sorted(((float(d), o) for o, d in neighbours.get(m, ()) if o != m and o in self._pos)
                                  )[:k] for m in self.ids}
        self._rows = rows
        self._block = block
        self._rng = np.random.default_rng(seed)
        self._sample = bottom_sample(self.ids, sample, seed) if len(self.ids) > sample + 1 else None
        self._memo = memo if memo is not None else FarRanks()

    def nearest(self, model: str) -> tuple[str, float]:
        stored = self._stored[model]
        if stored:
            d, other = stored[0]
            return other, d
        row = self._exact([model], self.ids)[0]
        row[self._pos[model]] = np.inf
        j = int(nearest_k(row, 1, self.ids)[0])
        return self.ids[j], float(row[j])

    def ranks(self, queries):
        out: list[tuple[float, int, int | None] | None] = [None] * len(queries)
        far: list[int] = []
        for q, (model, other, aside) in enumerate(queries):
            stored = self._stored[model]
            d = next((x for x, o in stored if o == other), None)
            if d is None:
                far.append(q)
                continue
            out[q] = (d, 1 + sum(1 for x, o in stored if x < d and o not in aside), None)
        counts = self._far_counts([queries[q] for q in far])
        refs = self._memo.refs
        for q in far:
            model, other, aside = queries[q]
            d, closer = counts[queries[q]]
            if self._sample is None:
                out[q] = (d, 1 + closer, None)
                continue
            skip = set(aside) | {model, other}
            n_refs = len(refs) - sum(1 for m in skip if m in refs)
            share = closer / n_refs if n_refs else 0.0
            pool = len(self.ids) - 1 - len((set(aside) & self._pos.keys()) - {model})
            in_graph = 1 + sum(1 for x, o in self._stored[model] if x < d and o not in aside)
            out[q] = (d, max(in_graph, 1 + int(round(share * (pool - 1)))), len(self._sample))
        return out

    def _far_counts(self, queries) -> dict:
        """(d, the references outside aside, model and other closer than d) per far query,
        through the memo: its entries are brought to this check's references first."""
        memo = self._memo
        ids = frozenset(self.ids)
        if not memo.ids <= ids or len(memo.entries) > memo.max_entries:
            memo.clear()  # a model left the index (a rolled-back insert): start again
        refs = frozenset(self.ids if self._sample is None else self._sample)
        entered, left = refs - memo.refs, memo.refs - refs
        if memo.entries and (entered or left):
            self._update(list(memo.entries), sorted(entered), sorted(left))
        memo.ids, memo.refs = ids, refs
        todo = sorted({q for q in queries if q not in memo.entries})
        among_refs = sorted(refs)
        for a in range(0, len(todo), self._block):
            batch = todo[a:a + self._block]
            models = sorted({m for m, _, _ in batch})
            among = sorted(set(among_refs) | {o for _, o, _ in batch})
            at, col = {m: r for r, m in enumerate(models)}, {m: c for c, m in enumerate(among)}
            block = self._exact(models, among)
            memo.computed += block.size
            ref_cols = np.array([col[m] for m in among_refs])
            for model, other, aside in batch:
                row = block[at[model]]
                d = float(row[col[other]])
                closer = int(np.sum(row[ref_cols] < d))
                closer -= sum(1 for m in set(aside) | {model, other} if m in refs and row[col[m]] < d)
                memo.entries[(model, other, aside)] = (d, closer)
        return memo.entries

    def _update(self, keys, entered: list[str], left: list[str]) -> None:
        memo = self._memo
        changed = entered + left
        col = {m: c for c, m in enumerate(changed)}
        sign = np.array([1] * len(entered) + [-1] * len(left))
        for a in range(0, len(keys), self._block * 4):
            batch = keys[a:a + self._block * 4]
            models = sorted({m for m, _, _ in batch})
            at = {m: r for r, m in enumerate(models)}
            block = self._exact(models, changed)
            memo.computed += block.size
            for key in batch:
                model, other, aside = key
                d, closer = memo.entries[key]
                row = block[at[model]]
                delta = int(np.sum(sign[row < d]))
                delta -= sum(int(sign[col[m]]) for m in set(aside) | {model, other} if m in col and row[col[m]] < d)
                memo.entries[key] = (d, closer + delta)

    def low_distance(self, percentile: float) -> float:
        """From the exact rows of up to 8 models drawn with a fixed seed: the percentile of
        their distances to every other model."""
        models = sorted(self._rng.choice(self.ids, size=min(8, len(self.ids)), replace=False).tolist())
        rows = self._exact(models, self.ids)
        keep = np.ones(rows.shape, dtype=bool)
        keep[np.arange(len(models)), [self._pos[m] for m in models]] = False
        return float(np.percentile(rows[keep], percentile))

    def _exact(self, models: Sequence[str], among: Sequence[str]) -> np.ndarray:
        rows = np.array(self._rows(list(models), list(among)), dtype=np.float64)
        if rows.shape != (len(models), len(among)):
            raise ValueError(f"rows gave shape {rows.shape}, want {(len(models), len(among))}")
        return rows


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


def _check(rel, declared, created, confirm_rank, confirm_fraction, suspicious_fraction, ratio,
           close_distance, copies):
    ids = rel.ids
    n = len(ids)
    indexed = set(ids)
    nearest = {m: rel.nearest(m) for m in ids} if n > 1 else {}
    twins: dict[str, set[str]] = {}
    for c, t in copies.items():  # exact copies are the model itself: they take no rank from it
        twins.setdefault(c, set()).add(t)
        twins.setdefault(t, set()).add(c)

    # every declared pair, in order; the ranks are asked for all at once (a neighbour graph
    # fetches the exact rows it lacks in blocks)
    slots: list[LineageFinding | tuple[str, str]] = []
    queries = []
    descendants = declared_descendants(ids, declared)
    for child in ids:
        nn, nn_d = nearest.get(child, (None, None))
        for parent in declared.get(child, ()):
            if parent == child:
                continue
            if parent not in indexed:
                slots.append(LineageFinding("not_indexed", child, parent, None, None, nn, nn_d,
                                            "declared base model is not in the index"))
                continue
            # the parent's own declared lineage, the child's other declared bases and the
            # child's exact copies (they are the child) do not compete with it for a rank
            aside = (descendants.get(parent, set()) | set(declared.get(child, ())) | twins.get(child, set())
                     ) - {parent, child}
            slots.append((child, parent))
            queries.append((child, parent, frozenset(aside)))
    answers = iter(rel.ranks(queries))
    findings: list[LineageFinding] = []
    confirmed_d: list[float] = []
    for slot in slots:
        if isinstance(slot, LineageFinding):
            findings.append(slot)
            continue
        child, parent = slot
        d, rank, sampled = next(answers)
        nn, nn_d = nearest.get(child, (None, None))
        frac = (rank - 1) / max(1, n - 1)
        where = (f"declared base is relative #{rank} of {n - 1}" if sampled is None else
                 f"declared base is relative #{rank} of {n - 1} (estimated from {sampled} sampled models)")
        if rank <= confirm_rank or frac <= confirm_fraction:
            kind, why = "confirmed", where
            confirmed_d.append(d)
        elif frac >= suspicious_fraction and nn_d is not None and d >= ratio * nn_d:
            kind = "suspicious"
            why = f"{where}, {d / max(nn_d, 1e-12):.1f}x the distance to the nearest model {nn}"
        else:
            kind, why = "unclear", where
        findings.append(LineageFinding(kind, child, parent, d, rank, nn, nn_d, why))

    if close_distance is None:
        if confirmed_d:
            close_distance = ratio * float(np.median(confirmed_d))
        elif n > 2:
            close_distance = rel.low_distance(5)
        else:
            close_distance = 0.0

    def related(a: str, b: str) -> bool:
        da, db = set(declared.get(a, ())), set(declared.get(b, ()))
        return b in da or a in db or bool(da & db)

    seen: set[frozenset] = set()
    close: list[tuple[str, str, float]] = []
    for model in ids:
        if n < 2:
            break
        other, d = nearest[model]
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
        close.append((child, relative, d))
    ranks = rel.ranks([(child, relative, frozenset()) for child, relative, _ in close])
    for (child, relative, d), (_, rank, _) in zip(close, ranks):
        claim = "declares no base model" if not declared.get(child) else "does not declare it"
        nn, nn_d = nearest[child]
        findings.append(LineageFinding(
            "undeclared", child, relative, d, rank, nn, nn_d,
            f"sits {d:.3f} from {relative} (close distance {close_distance:.3f}) but {claim}"))
    return findings
