"""A sparse neighbour graph: every model's k nearest models, with exact distances.

At Hub scale the insert path cannot afford a model's full similarity row (one sparse
product over every stored allele, O(n x alleles per model)), let alone all pairs. This keeps,
per model, its ``k`` nearest by exact PhyloLM distance, found in two steps:

1. candidates from a search structure over the allele vectors. ``"hnsw"``: a hierarchical
   navigable small-world graph (Malkov & Yashunin, 2018; the hnswlib library) over a
   fixed-size sketch of each model's L2-normalised allele vector: every (gene, allele)
   column is hashed to one of ``buckets`` coordinates of its gene, with a random sign (a
   count sketch, Charikar, Chen & Farach-Colton, 2002), so the sketch's inner products
   estimate Nei similarities without bias and the vocabulary may grow without changing the
   dimension. ``"exact"``: every indexed model (the full row; O(n), the reference).
2. the candidates re-scored exactly (``AlleleIndex.similarity_to``, float64, the same
   values as the full row), and the ``k`` best kept.

An inverted index by (gene, allele) would not prune here: a model shows about 17 of a
gene's alleles, and each of them is shown by a large share of all models, so its posting
lists cover nearly every model and scoring them is the full sparse product again.

A new model is also offered to the lists of all its re-scored candidates (it replaces their
k-th neighbour when closer; ``entered`` names them after each insert), so the lists of
earlier models follow the index as it grows;
with the ``exact`` backend every list is exactly the k nearest, by construction. The exact full row stays
available on demand (``exact_row``), but is not stored. Memory: O(n k) for the lists, plus
O(n x buckets x genes) float32 for the sketches and O(n M) for the HNSW graph.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.core.distance import AlleleIndex, distance_from_similarity

BACKENDS = ("hnsw", "exact")


@dataclass(frozen=True)
class Neighbours:
    rows: np.ndarray  # index rows of the neighbours, closest first (ties: lower row first)
    similarity: np.ndarray  # exact Nei similarity to each
    distance: np.ndarray  # exact PhyloLM distance to each


class NeighbourGraph:
    """The k nearest of every model of an ``AlleleIndex``, maintained one insert at a time."""

    def __init__(self, alleles: AlleleIndex, k: int = 32, candidates: int = 64, backend: str = "hnsw",
                 buckets: int = 16, ef: int = 128, m: int = 16, ef_construction: int = 128, seed: int = 0):
        if k < 1 or candidates < k:
            raise ValueError("need k >= 1 and candidates >= k")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if len(alleles):
            raise ValueError("start the neighbour graph on an empty allele index")
        self.alleles = alleles
        self.k = k
        self.candidates = candidates
        self.backend = backend
        self.buckets = buckets
        self.ef = max(ef, candidates)
        self._m, self._ef_construction, self._seed = m, ef_construction, seed
        self._rows = np.full((16, k), -1, dtype=np.int64)
        self._dist = np.full((16, k), np.inf, dtype=np.float64)
        self._bucket = np.empty(0, dtype=np.int64)  # column -> sketch coordinate
        self._sign = np.empty(0, dtype=np.float32)
        self._ann = None

    def __len__(self) -> int:
        return len(self.alleles)

    # -- reading -----------------------------------------------------------------
    def neighbours(self, row: int) -> Neighbours:
        """The stored neighbours of the model at ``row`` (fewer than k while the index is small)."""
        have = self._rows[row] >= 0
        d = self._dist[row, have].copy()
        return Neighbours(self._rows[row, have].copy(), np.exp(-d), d)

    def exact_row(self, row: int) -> np.ndarray:
        """Distances from the model at ``row`` to every indexed model, computed now (one sparse
        product, O(nnz of the index)); its own distance is 0."""
        cols, vals = self.alleles.encoded_row(row)
        query = np.zeros(max(self.alleles.n_columns, 1))
        query[cols] = vals
        s = self.alleles.rows_dot(query)
        np.clip(s, 0.0, 1.0, out=s)
        s[row] = 1.0
        return distance_from_similarity(s)

    def brute_force(self, row: int, k: int | None = None) -> np.ndarray:
        """The exact k nearest rows of the model at ``row`` (itself excluded), by the full row."""
        d = self.exact_row(row)
        d[row] = np.inf
        k = self.k if k is None else k
        return np.lexsort((np.arange(d.shape[0]), d))[: min(k, d.shape[0] - 1)]

    def search(self, cols: np.ndarray, vals: np.ndarray, exclude: int = -1) -> Neighbours:
        """The k nearest indexed models of an encoded model, re-scored exactly, closest first."""
        n = len(self.alleles)
        if self.backend == "exact" or n <= self.candidates:
            cand = np.arange(n, dtype=np.int64)
        else:
            want = min(self.candidates + (exclude >= 0), self._ann.get_current_count())
            labels, _ = self._ann.knn_query(self._sketch(cols, vals)[None, :], k=want, num_threads=1)
            cand = labels[0].astype(np.int64)
        if exclude >= 0:
            cand = cand[cand != exclude]
        sim = self.alleles.similarity_to(cand, cols, vals)
        d = np.atleast_1d(distance_from_similarity(sim))
        self._scored = (cand, d)  # every re-scored candidate, for ``insert`` to offer itself to
        top = np.lexsort((cand, d))[: self.k]
        return Neighbours(cand[top], sim[top], d[top])

    # -- writing -----------------------------------------------------------------
    def insert(self, model_id: str, counts: Sequence[dict[str, int]], n_samples: int | None = None) -> Neighbours:
        """Add a model to the allele index and the graph; return its neighbours among the
        models indexed before it. O(candidates x alleles per model) plus the HNSW insert
        (about O(log n) sketch comparisons) for the ``hnsw`` backend."""
        enc = self.alleles.encode_new(model_id, counts, n_samples)
        cols, vals = enc.cols, enc.vals
        found = self.search(cols, vals)
        row = len(self.alleles)
        self.alleles.append(model_id, enc)
        self._grow(row + 1)
        self._rows[row, : found.rows.shape[0]] = found.rows
        self._dist[row, : found.rows.shape[0]] = found.distance
        cand, d = self._scored
        closer = d < self._dist[cand, -1]  # the new model displaces these candidates' k-th
        for j, dj in zip(cand[closer].tolist(), d[closer].tolist()):
            self._offer(j, row, dj)
        # the earlier models whose lists it entered, for a store of the graph to keep them too
        self.entered = Neighbours(cand[closer], np.exp(-d[closer]), d[closer])
        if self.backend == "hnsw":
            self._ann_add(row, cols, vals)
        return found

    def _offer(self, j: int, row: int, d: float) -> None:
        """Put ``row`` into ``j``'s list if it is closer than ``j``'s k-th (ties: lower row)."""
        dist, rows = self._dist[j], self._rows[j]
        if d >= dist[-1]:
            return
        at = int(np.searchsorted(dist, d, side="right"))
        dist[at + 1:] = dist[at:-1].copy()
        rows[at + 1:] = rows[at:-1].copy()
        dist[at], rows[at] = d, row

    def _grow(self, n: int) -> None:
        cap = self._rows.shape[0]
        if n > cap:
            new = max(n, 2 * cap)
            self._rows = np.concatenate([self._rows, np.full((new - cap, self.k), -1, dtype=np.int64)])
            self._dist = np.concatenate([self._dist, np.full((new - cap, self.k), np.inf)])

    # -- the sketch and the HNSW index ------------------------------------------------
    def _sketch(self, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
        self._hash_new_columns()
        dim = self.alleles.n_genes * self.buckets
        return np.bincount(self._bucket[cols], weights=self._sign[cols] * vals, minlength=dim).astype(np.float32)

    def _hash_new_columns(self) -> None:
        """Sketch coordinate and sign of every column not hashed yet: from a hash of the
        (gene, allele) pair, so a column lands in the same place in every run."""
        have, n_cols = self._bucket.shape[0], self.alleles.n_columns
        if have == n_cols:
            return
        bucket = np.empty(n_cols - have, dtype=np.int64)
        sign = np.empty(n_cols - have, dtype=np.float32)
        for i, c in enumerate(range(have, n_cols)):
            g, allele = self.alleles.column_key(c)
            h = int.from_bytes(hashlib.blake2b(f"{g}\0{allele}".encode(), digest_size=8).digest(), "little")
            bucket[i] = g * self.buckets + (h >> 1) % self.buckets
            sign[i] = 1.0 if h & 1 else -1.0
        self._bucket = np.concatenate([self._bucket, bucket])
        self._sign = np.concatenate([self._sign, sign])

    def _ann_add(self, row: int, cols: np.ndarray, vals: np.ndarray) -> None:
        if self._ann is None:
            try:
                import hnswlib
            except ImportError as e:  # an optional dependency: the "scale" extra
                raise ImportError("the hnsw backend needs hnswlib: pip install 'phylolm-indexer[scale]' "
                                  "(or use backend='exact')") from e
            self._ann = hnswlib.Index(space="cosine", dim=self.alleles.n_genes * self.buckets)
            self._ann.init_index(max_elements=1024, M=self._m, ef_construction=self._ef_construction,
                                 random_seed=self._seed)
            self._ann.set_num_threads(1)  # one thread: the same graph on every run
        if row >= self._ann.get_max_elements():
            self._ann.resize_index(2 * self._ann.get_max_elements())
        self._ann.set_ef(self.ef)
        self._ann.add_items(self._sketch(cols, vals)[None, :], np.array([row]), num_threads=1)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: neighbour lists, and the HNSW index (counted: sketches + links)."""
        out = {"lists": int(self._rows.nbytes + self._dist.nbytes)}
        if self._ann is not None:
            n = self._ann.get_current_count()
            out["hnsw"] = int(n * (4 * self._ann.dim + 8 * self._m + 16))
        return out
