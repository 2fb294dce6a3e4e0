"""The distances between a catalog's indexed models, read at the cost of what is asked.

An exact index stores every pair: its complete matrix is read once (O(n^2), as stored). A
sparse index (the Hub-scale one) stores each model's k nearest only, and a full matrix would
be O(n^2) time and memory (80 GB at 100,000 models). There the view answers from what is
stored where it can, and computes the rest from the alleles of just the models asked about:

* ``among(ids)``: the matrix of a few models (the scored ones): O(their alleles + len(ids)^2);
* ``pairs(pairs)``: the stored distance of a pair in the neighbour graph, else computed from
  the two models' alleles;
* ``rows(models, among)``: exact distances from some models to others (None: to every
  model, full rows, O(n) each); every model's alleles are loaded once for them, in bulk (or
  the writer's own in-memory ``AlleleIndex`` is used);
* ``relatives()``: the lineage check's ``Relatives``: the matrix, or the neighbour graph
  (each model's k nearest stored pairs) with exact rows on demand (``indexer.core.lineage.NeighbourRelatives``).

All the SQL is the catalog's named queries (``queries.CatalogQueries``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from indexer.core.distance import distance_from_similarity
from indexer.core.lineage import FarRanks, MatrixRelatives, NeighbourRelatives, Relatives


class DistanceView:
    """The distances of the newest tree snapshot's genome; ``ids``: its indexed models, sorted."""

    def __init__(self, queries, alleles=None):
        self._q = queries
        self.snapshot, _, self.genome_hash = queries.latest_snapshot()
        self._layout = layout = queries.index_layout()
        self.sparse = layout.mode == "sparse" and self.genome_hash is not None
        self._neighbours: dict[str, list[tuple[str, float]]] | None = None
        self._alleles = None
        if self.sparse:
            self.ids = sorted(m for m, _, _ in queries.indexed_probes(self.genome_hash, layout.params_hash,
                                                                       layout.backend))
            if alleles is not None and len(alleles) == len(self.ids) and all(m in alleles for m in self.ids):
                self._alleles = alleles  # else it does not hold this catalog's models: load them
            self._D = None
        else:
            _, self.ids, self._D = queries.complete_matrix()
        self._pos = {m: i for i, m in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def among(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(the indexed ones among ``ids``, in their order; their distance matrix)."""
        present = [m for m in ids if m in self._pos]
        if not self.sparse:
            at = [self._pos[m] for m in present]
            return present, self._D[np.ix_(at, at)]
        index = self._alleles if self._alleles is not None else self._q.allele_index(self.genome_hash, present)
        rows = np.array([index.row_of(m) for m in present], dtype=np.int64)
        return present, index.distance_block(rows, rows) if present else np.zeros((0, 0))

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """The distance of each (a, b); NaN where either is not indexed."""
        out = np.full(len(pairs), np.nan)
        if not self.sparse:
            for q, (a, b) in enumerate(pairs):
                if a in self._pos and b in self._pos:
                    out[q] = self._D[self._pos[a], self._pos[b]]
            return out
        stored = {m: dict(v) for m, v in self.neighbours().items()}
        todo = []
        for q, (a, b) in enumerate(pairs):
            if a in self._pos and b in self._pos:
                d = 0.0 if a == b else stored.get(a, {}).get(b)
                if d is None:
                    todo.append(q)
                else:
                    out[q] = d
        if todo:
            models = sorted({m for q in todo for m in pairs[q]})
            index = self._alleles if self._alleles is not None else self._q.allele_index(self.genome_hash, models)
            ra = np.array([index.row_of(pairs[q][0]) for q in todo], dtype=np.int64)
            rb = np.array([index.row_of(pairs[q][1]) for q in todo], dtype=np.int64)
            sim = np.asarray(index.submatrix(ra).multiply(index.submatrix(rb)).sum(axis=1)).ravel()
            out[todo] = distance_from_similarity(np.clip(sim, 0.0, 1.0))
        return out

    def rows(self, models: Sequence[str], among: Sequence[str] | None = None) -> np.ndarray:
        """Exact distances from each of ``models`` to each of ``among`` (None: every model of
        ``ids``): len(models) x len(among), one sparse product a row."""
        among = self.ids if among is None else among
        if not self.sparse:
            return self._D[np.ix_([self._pos[m] for m in models], [self._pos[m] for m in among])]
        if self._alleles is None:  # asked in blocks: every model's alleles, loaded once and kept
            self._alleles = self._q.allele_index(self.genome_hash)
        index = self._alleles
        return index.distance_block(np.array([index.row_of(m) for m in models], dtype=np.int64),
                                    np.array([index.row_of(m) for m in among], dtype=np.int64))

    def neighbours(self) -> dict[str, list[tuple[str, float]]]:
        """Each model's stored pairs (the neighbour graph of a sparse index), read once."""
        if self._neighbours is None:
            self._neighbours = self._q.stored_neighbours(self.genome_hash) if self.genome_hash else {}
        return self._neighbours

    def relatives(self, far_ranks: FarRanks | None = None) -> Relatives:
        """What the lineage check reads (``indexer.core.lineage``); ``far_ranks``: the last
        check's far ranks on this index (a sparse index's writer keeps them between exports)."""
        if not self.sparse:
            return MatrixRelatives(self._D, self.ids)
        return NeighbourRelatives(self.ids, self.neighbours(), self.rows, k=self._layout.k, memo=far_ranks)
