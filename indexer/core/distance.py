"""Nei similarity and PhyloLM distance over sparse allele-frequency vectors.

PhyloLM (Yax et al., 2024, section 2) compares two models by Nei's genetic identity over
the alleles sampled for every gene:

    S(A, B) = sum_g sum_a P_A(a|g) P_B(a|g) / sqrt(sum_g sum_a P_A^2 * sum_g sum_a P_B^2)
    D(A, B) = -log(max(S, 1e-10))

with ``P = count / N``. ``S`` is the cosine of the concatenated allele-frequency vectors
(one column per (gene, allele) pair), so the vectors are stored sparse, L2-normalised, and
a new model's row against the whole index is one sparse matrix-vector product, O(nnz of
the index). It is exactly the row a full recomputation gives (same stored values, only the
summation order may differ: agreement to ~1e-15).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

MIN_SIMILARITY = 1e-10
MAX_COUNT = np.iinfo(np.uint16).max  # counts are stored as uint16 (a probe's N is far below)
DENSE_BLOCK_BYTES = 1 << 30  # similarity_block multiplies dense rows while they fit in this


def check_matrix(D, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``D`` as a float array and ``ids`` as a list, or ``ValueError`` unless D is n x n for
    n unique ids."""
    D = np.asarray(D, dtype=float)
    ids = list(ids)
    n = len(ids)
    if D.shape != (n, n):
        raise ValueError(f"D is {D.shape}, expected {n}x{n} for {n} ids")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    return D, ids


def distance_from_similarity(similarity: np.ndarray | float) -> np.ndarray | float:
    """``D = -log(max(S, 1e-10))``, elementwise; ``S`` above 1 by rounding gives 0, not -0."""
    s = np.clip(np.asarray(similarity, dtype=np.float64), MIN_SIMILARITY, 1.0)
    d = -np.log(s)
    return float(d) if d.ndim == 0 else d


def nearest_k(distances: np.ndarray, k: int, ids: Sequence[str] | None = None) -> np.ndarray:
    """Positions of the ``k`` nearest: the smallest distances, closest first.

    Ties are broken by ``ids`` when given, so the answer does not depend on the order the
    models were indexed in and is the catalog's ``order by distance, model_b``; without ids,
    by position. For one row of distances, the (at most) ``k`` positions of its smallest
    finite distances (non-finite ones, such as a model's own distance set to inf, are never
    returned); O(n log n). For a matrix, every row's ``min(k, n_columns)`` nearest columns
    (rows are expected to have that many finite distances); O(n^2) for ``k = 1``, else
    O(n^2 log n).
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim not in (1, 2):
        raise ValueError(f"distances must be a row or a matrix, got shape {d.shape}")
    if ids is not None and len(ids) != d.shape[-1]:
        raise ValueError(f"{d.shape[-1]} distances a row but {len(ids)} ids")
    k = max(int(k), 0)
    if d.ndim == 2:
        return _nearest_columns(d, k, ids)
    finite = np.flatnonzero(np.isfinite(d))
    order = finite[np.argsort(d[finite], kind="stable")]
    top = order[:k]
    if ids is None or top.size == 0:
        return top
    tied = order[: np.searchsorted(d[order], d[top[-1]], side="right")]  # everything up to the k-th
    return np.array(sorted(tied.tolist(), key=lambda j: (d[j], ids[j]))[: top.size], dtype=np.int64)


def _nearest_columns(d: np.ndarray, k: int, ids: Sequence[str] | None) -> np.ndarray:
    """``nearest_k`` of every row of a matrix, without copying it: for ``k = 1`` the first
    minimum, re-chosen by id in the rows that have tied minima; otherwise a stable sort, of
    the columns put in id order when ids are given."""
    n_rows, n_cols = d.shape
    k = min(k, n_cols)
    if k == 0:
        return np.empty((n_rows, 0), dtype=np.int64)
    if k == 1:
        first = d.argmin(1)
        if ids is not None:
            low = d[np.arange(n_rows), first]
            tied = np.flatnonzero((d == low[:, None]).sum(1) > 1)
            if tied.size:
                rank = np.empty(n_cols, dtype=np.int64)
                rank[np.argsort(np.asarray(ids), kind="stable")] = np.arange(n_cols)
                first[tied] = np.where(d[tied] == low[tied, None], rank, n_cols).argmin(1)
        return first[:, None]
    if ids is None:
        return np.argsort(d, axis=1, kind="stable")[:, :k]
    perm = np.argsort(np.asarray(ids), kind="stable")
    return perm[np.argsort(d[:, perm], axis=1, kind="stable")[:, :k]]


def nei_similarity(counts_a: Sequence[dict[str, int]], counts_b: Sequence[dict[str, int]],
                   n_samples: int) -> float:
    """Nei similarity of two models from their per-gene allele counts (direct formula).

    O(total alleles). The reference the sparse index is checked against.
    """
    if len(counts_a) != len(counts_b):
        raise ValueError(f"models have {len(counts_a)} and {len(counts_b)} genes")
    dot = na = nb = 0.0
    for ga, gb in zip(counts_a, counts_b):
        for allele, ca in ga.items():
            dot += (ca / n_samples) * (gb.get(allele, 0) / n_samples)
        na += sum((c / n_samples) ** 2 for c in ga.values())
        nb += sum((c / n_samples) ** 2 for c in gb.values())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / np.sqrt(na * nb)


class EncodedModel(NamedTuple):
    """One model's alleles as the index stores them: sorted columns, the L2-normalised
    frequencies (what similarities are computed with), the raw counts and 1/||counts||."""

    cols: np.ndarray
    vals: np.ndarray
    counts: np.ndarray
    inv_norm: float


# The allele arrays grow by a quarter, not double: at 100,000 models they hold ~2 x 10^8
# entries (1.3 GB), and doubling would leave up to as much again allocated and unused; the
# copies stay amortised O(1) per entry (each entry is copied about 4 times in all).
_GROWTH = 1.25


def _grown(a: np.ndarray, used: int, cap: int) -> np.ndarray:
    """``a``'s first ``used`` entries in a new array of ``cap``. Not ``np.resize``: it fills the
    new array with repeats of the old one from a buffer of a whole multiple of its size,
    which the result keeps alive (twice the memory for any growth below 2)."""
    out = np.empty(cap, dtype=a.dtype)
    out[:used] = a[:used]
    return out


class AlleleIndex:
    """Models as rows of a sparse, L2-normalised allele-frequency matrix.

    Columns are (gene, allele) pairs, numbered on first sight, so the vocabulary grows with
    the models. Rows are stored in growable CSR buffers (capacity doubles), so adding a model
    is amortised O(nnz of its row) for storage plus one O(nnz of the index) product for its
    similarity row.

    Memory: 6 bytes a stored allele (int32 column, uint16 count) plus 8 with ``values=True``
    (the default; the Hub-scale sparse index turns it off: 1.2 GB instead of 4.3 GB for
    100,000 models of 128 genes x ~16 alleles). Without the values, products over many rows
    convert the counts to frequencies block by block, so no full float64 copy is made.
    """

    dot_block_entries = 1 << 22  # entries converted at a time by ``rows_dot`` without values

    def __init__(self, n_genes: int | None = None, n_samples: int = 32, values: bool = True):
        if n_samples < 1:
            raise ValueError("n_samples must be at least 1")
        self.n_genes = n_genes
        self.n_samples = n_samples
        self._columns: dict[tuple[int, str], int] = {}
        self._keys: list[tuple[int, str]] = []  # column -> (gene, allele)
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        # CSR buffers (capacity doubles): columns as int32 and raw counts as uint16, with one
        # 1/||counts|| per row (the frequencies' N cancels in the normalisation), 6 bytes a
        # stored allele; ``values=True`` also keeps the normalised float64 frequencies (8
        # bytes more) so that the full products run on them directly
        self._indptr = np.zeros(1024, dtype=np.int64)
        self._indices = np.empty(1024, dtype=np.int32)
        self._counts = np.empty(1024, dtype=np.uint16)
        self._inv_norm = np.empty(1024, dtype=np.float64)
        self._data = np.empty(1024, dtype=np.float64) if values else None
        self._nnz = 0

    @classmethod
    def from_arrays(cls, ids: Sequence[str], lengths: np.ndarray, genes: np.ndarray, alleles: np.ndarray,
                    names: Sequence[str], counts: np.ndarray, *, n_genes: int, n_samples: int,
                    values: bool = True) -> "AlleleIndex":
        """An index of many models at once, from flat arrays (a catalog's alleles, loaded in
        bulk): model ``ids[i]`` owns the next ``lengths[i]`` entries of ``genes``, ``alleles``
        (codes into ``names``, the allele strings) and ``counts``. The same index as adding
        the models one by one, up to the numbering of the columns (sorted by (gene, allele
        code) here, by first sight there: no product changes but for summation order).
        O(entries log entries), vectorised: no Python loop over the alleles."""
        index = cls(n_genes=n_genes, n_samples=n_samples, values=values)
        lengths = np.asarray(lengths, dtype=np.int64)
        genes, alleles = np.asarray(genes, dtype=np.int64), np.asarray(alleles, dtype=np.int64)
        raw = np.asarray(counts, dtype=np.int64)
        n, total = len(ids), int(lengths.sum()) if len(lengths) else 0
        if lengths.shape != (n,) or genes.shape != (total,) or alleles.shape != (total,) or raw.shape != (total,):
            raise ValueError("need one length per model and one gene, allele and count per entry")
        if len(set(ids)) != n:
            raise ValueError("model ids must be distinct")
        if n and lengths.min() < 1:
            raise ValueError("a model with no alleles cannot be compared")
        if total and (genes.min() < 0 or genes.max() >= n_genes):
            raise ValueError(f"gene numbers must lie in [0, {n_genes})")
        if total and (raw.min() < 1 or raw.max() > MAX_COUNT):
            raise ValueError(f"allele counts must be whole numbers from 1 to {MAX_COUNT}")
        key = genes * max(len(names), 1) + alleles
        uniq, cols = np.unique(key, return_inverse=True)
        index._keys = [(int(k // max(len(names), 1)), names[int(k % max(len(names), 1))]) for k in uniq]
        index._columns = {k: c for c, k in enumerate(index._keys)}
        row = np.repeat(np.arange(n), lengths)
        order = np.lexsort((cols, row))  # rows in turn, columns sorted within each
        index._indices = cols[order].astype(np.int32)
        index._counts = raw[order].astype(np.uint16)
        index._indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        sq = np.add.reduceat(raw[order].astype(np.float64) ** 2, index._indptr[:-1]) if n else np.empty(0)
        index._inv_norm = 1.0 / np.sqrt(sq)
        if values:
            index._data = index._counts * np.repeat(index._inv_norm, lengths)
        index._nnz = total
        index._ids = list(ids)
        index._row_of = {m: i for i, m in enumerate(index._ids)}
        # room to grow, as the buffers of an index filled one model at a time
        index._indptr = np.resize(index._indptr, max(2 * (n + 2), 1024))
        index._inv_norm = np.resize(index._inv_norm, max(2 * (n + 2), 1024))
        return index

    # -- reading -----------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._row_of

    def ids_at(self, rows) -> list[str]:
        """The ids of ``rows``, without the O(n) copy ``ids`` makes (the insert path's)."""
        return [self._ids[j] for j in rows]

    def row_of(self, model_id: str) -> int:
        return self._row_of[model_id]

    @property
    def n_columns(self) -> int:
        return len(self._columns)

    def matrix(self) -> sp.csr_matrix:
        """The normalised frequency matrix (rows = models): a view on the buffers with
        ``values=True``, else a float64 copy (O(nnz) memory: for on-demand full products)."""
        n = len(self._ids)
        if self._data is not None:
            data = self._data[: self._nnz]
        else:
            data = self._frequencies(0, n)
        indptr = self._indptr[: n + 1]
        if self._nnz <= np.iinfo(np.int32).max:  # int32 like the columns, else scipy copies them to int64
            indptr = indptr.astype(np.int32)
        return sp.csr_matrix((data, self._indices[: self._nnz], indptr),
                             shape=(n, max(self.n_columns, 1)), copy=False)

    def memory_bytes(self) -> int:
        """Bytes of the stored alleles (the used part of the buffers)."""
        n, nnz = len(self._ids), self._nnz
        per = self._indices.itemsize + self._counts.itemsize + (8 if self._data is not None else 0)
        return int(nnz * per + (n + 1) * 8 + n * 8)

    def encoded_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored model at ``row`` as ``encode_new`` gives it: columns and normalised
        frequencies (for ``similarity_to``)."""
        lo, hi = int(self._indptr[row]), int(self._indptr[row + 1])
        return self._indices[lo:hi].astype(np.int64), self._frequencies(row, row + 1)

    def _frequencies(self, row_from: int, row_to: int) -> np.ndarray:
        """Normalised frequencies (float64) of the stored entries of rows [from, to)."""
        lo, hi = int(self._indptr[row_from]), int(self._indptr[row_to])
        if self._data is not None:
            return self._data[lo:hi].copy()
        lens = np.diff(self._indptr[row_from: row_to + 1])
        return self._counts[lo:hi] * np.repeat(self._inv_norm[row_from:row_to], lens)

    def rows_dot(self, dense: np.ndarray) -> np.ndarray:
        """``X @ dense`` for every stored row, float64: O(nnz of the index). Without the
        values, in blocks of rows, so the extra memory is one block's (about 4 million
        entries), never a float64 copy of the index."""
        n = len(self._ids)
        if self._data is not None or n == 0:
            return self.matrix() @ dense
        out = np.empty(n, dtype=np.float64)
        ip = self._indptr
        per_row = max(1, self._nnz // n)
        step = max(1, self.dot_block_entries // per_row)
        for a in range(0, n, step):
            b = min(n, a + step)
            lo, hi = int(ip[a]), int(ip[b])
            prod = self._counts[lo:hi] * dense[self._indices[lo:hi]]
            out[a:b] = np.add.reduceat(prod, (ip[a:b] - lo)) * self._inv_norm[a:b]
        return out

    def similarity_matrix(self) -> np.ndarray:
        """Full Nei similarity matrix, recomputed from scratch: X X^T, diagonal exactly 1."""
        x = self.matrix()
        s = np.asarray((x @ x.T).todense(), dtype=np.float64)
        np.clip(s, 0.0, 1.0, out=s)
        np.fill_diagonal(s, 1.0)
        return s

    def distance_matrix(self) -> np.ndarray:
        return distance_from_similarity(self.similarity_matrix())

    def column_key(self, column: int) -> tuple[int, str]:
        """The (gene, allele) pair of a column."""
        return self._keys[column]

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in the CSR buffers of the stored entries of ``rows``, and their lengths.
        O(nnz of those rows): no scipy matrix is built (its constructor scans every index)."""
        start = self._indptr[rows]
        lens = self._indptr[rows + 1] - start
        total = int(lens.sum())
        offs = np.repeat(start - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return offs + np.arange(total), lens

    def similarity_to(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Similarity of an encoded model (``encode_new``) to the indexed models at ``rows``
        only: O(nnz of those rows), whatever the size of the index."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.empty(0, dtype=np.float64)
        dense = np.zeros(max(self.n_columns, 1), dtype=np.float64)
        known = cols < dense.shape[0]
        dense[cols[known]] = vals[known]
        ip, indices = self._indptr, self._indices
        out = np.empty(rows.shape[0])
        # one short dot per row on views of the buffers: cheaper than gathering all rows first
        if self._data is not None:
            data = self._data
            for i, r in enumerate(rows.tolist()):
                lo, hi = ip[r], ip[r + 1]
                out[i] = data[lo:hi] @ dense[indices[lo:hi]]
        else:
            counts, inv = self._counts, self._inv_norm
            for i, r in enumerate(rows.tolist()):
                lo, hi = ip[r], ip[r + 1]
                out[i] = (counts[lo:hi] @ dense[indices[lo:hi]]) * inv[r]
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def submatrix(self, rows: np.ndarray) -> sp.csr_matrix:
        """The stored rows ``rows`` as a small CSR matrix (a copy), O(nnz of those rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos, lens = self._gather(rows)
        indptr = np.concatenate([[0], np.cumsum(lens)])
        return sp.csr_matrix((self._values_at(pos, rows, lens), self._indices[pos], indptr),
                             shape=(rows.shape[0], max(self.n_columns, 1)))

    def _values_at(self, pos: np.ndarray, rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Normalised frequencies of the stored entries at ``pos`` (``_gather`` of ``rows``)."""
        if self._data is not None:
            return self._data[pos]
        return self._counts[pos] * np.repeat(self._inv_norm[rows], lens)

    def similarity_block(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """Similarities between the indexed models at ``rows_a`` and at ``rows_b`` (a block
        of the full matrix, computed on demand): O(nnz of the rows x models per column)."""
        rows_a = np.asarray(rows_a, dtype=np.int64)
        rows_b = np.asarray(rows_b, dtype=np.int64)
        same = rows_a is rows_b or np.array_equal(rows_a, rows_b)
        if (rows_a.size + (0 if same else rows_b.size)) * max(self.n_columns, 1) * 8 <= DENSE_BLOCK_BYTES:
            # rows of thousands of alleles, each column shared by a large share of the rows:
            # a dense product (BLAS) beats sparse x sparse by far
            xa = self._dense_rows(rows_a)
            xb = xa if same else self._dense_rows(rows_b)
            s = xa @ xb.T
        else:
            s = np.asarray((self.submatrix(rows_a) @ self.submatrix(rows_b).T).todense(), dtype=np.float64)
        np.clip(s, 0.0, 1.0, out=s)
        return s

    def distance_block(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """PhyloLM distances between the models at ``rows_a`` and at ``rows_b``
        (``similarity_block``), 0 exactly where a row meets itself (its similarity is 1, not
        1 - rounding)."""
        d = distance_from_similarity(self.similarity_block(rows_a, rows_b))
        d[np.asarray(rows_a)[:, None] == np.asarray(rows_b)[None, :]] = 0.0
        return d

    def reference(self, rows: np.ndarray) -> "ReferenceRows":
        """A fixed set of indexed rows kept as one CSR block, for distances from any indexed
        model to them at O(nnz of those rows) each (``ReferenceRows``)."""
        return ReferenceRows(self, rows)

    def _dense_rows(self, rows: np.ndarray) -> np.ndarray:
        pos, lens = self._gather(rows)
        out = np.zeros((rows.shape[0], max(self.n_columns, 1)))
        out[np.repeat(np.arange(rows.shape[0]), lens), self._indices[pos]] = self._values_at(pos, rows, lens)
        return out

    def gene_of_column(self) -> np.ndarray:
        """Gene index of every column (for gene resampling)."""
        genes = np.empty(self.n_columns, dtype=np.int64)
        for (g, _), c in self._columns.items():
            genes[c] = g
        return genes

    def similarity_with_gene_weights(self, gene_weights: np.ndarray) -> np.ndarray:
        """Similarity matrix when gene ``g`` counts ``gene_weights[g]`` times.

        A bootstrap replicate of the genome (genes drawn with replacement) is exactly this:
        S = (X W X^T) / sqrt(diag * diag) with W the column weights. O(nnz * n).
        """
        w = np.asarray(gene_weights, dtype=np.float64)[self.gene_of_column()]
        x = self.matrix()
        xw = x @ sp.diags(w)
        s = np.asarray((xw @ x.T).todense(), dtype=np.float64)
        norms = np.sqrt(np.clip(np.diag(s).copy(), 0.0, None))
        norms[norms == 0.0] = 1.0
        s /= norms[:, None]
        s /= norms[None, :]
        np.clip(s, 0.0, 1.0, out=s)
        np.fill_diagonal(s, 1.0)
        return s

    # -- writing -----------------------------------------------------------------
    def add(self, model_id: str, counts: Sequence[dict[str, int]], n_samples: int | None = None) -> np.ndarray:
        """Add one model; return its Nei similarity to every earlier model (in ``ids`` order).

        One sparse product against the index: O(nnz of the index + alleles of the model).
        """
        enc = self._encode_new(model_id, counts, n_samples)
        row = self._similarity_row(enc.cols, enc.vals)
        self._append(model_id, enc)
        return row

    def add_unscored(self, model_id: str, counts: Sequence[dict[str, int]], n_samples: int | None = None) -> None:
        """Add one model without computing its row (bulk loading; see ``similarity_matrix``)."""
        self._append(model_id, self._encode_new(model_id, counts, n_samples))

    def encode_new(self, model_id: str, counts: Sequence[dict[str, int]], n_samples: int | None = None
                   ) -> "EncodedModel":
        """Validate a model about to be added and encode it: sorted columns, normalised
        frequencies, raw counts (new (gene, allele) pairs get columns now). ``append`` then
        stores it."""
        return self._encode_new(model_id, counts, n_samples)

    def append(self, model_id: str, encoded: "EncodedModel") -> None:
        """Store a model encoded by ``encode_new`` (no similarity row is computed)."""
        self._append(model_id, encoded)

    def _encode_new(self, model_id: str, counts: Sequence[dict[str, int]], n_samples: int | None):
        """Validate a model about to be added and encode its allele frequencies."""
        n_samples = self.n_samples if n_samples is None else n_samples
        if model_id in self._row_of:
            raise ValueError(f"model {model_id!r} is already in the index")
        if self.n_genes is None:
            self.n_genes = len(counts)
        if len(counts) != self.n_genes:
            raise ValueError(f"model {model_id!r} has {len(counts)} genes; the index has {self.n_genes}")
        return self._encode(counts, n_samples)

    def similarity_row(self, counts: Sequence[dict[str, int]], n_samples: int | None = None) -> np.ndarray:
        """Similarity of a model to every indexed model, without adding it."""
        n_samples = self.n_samples if n_samples is None else n_samples
        enc = self._encode(counts, n_samples, grow=False)
        return self._similarity_row(enc.cols, enc.vals)

    # -- internals ---------------------------------------------------------------
    def _encode(self, counts: Sequence[dict[str, int]], n_samples: int, grow: bool = True) -> "EncodedModel":
        """Sorted column numbers, L2-normalised frequencies and counts of one model's alleles.

        With ``grow=False`` alleles unseen by the index get no column (they add nothing to
        any dot product) but still count in the norm.
        """
        # comprehensions, not a loop with appends: a real probe has ~2,200 alleles (128 genes)
        keys = [(g, a) for g, per_gene in enumerate(counts) for a, c in per_gene.items() if c > 0]
        raw = np.fromiter((c for per_gene in counts for c in per_gene.values() if c > 0),
                          dtype=np.float64, count=len(keys))
        if raw.size == 0:
            raise ValueError("a model with no alleles cannot be compared")
        if raw.max() > MAX_COUNT or not np.array_equal(raw, np.floor(raw)):
            raise ValueError(f"allele counts must be whole numbers up to {MAX_COUNT}")
        inv_norm = 1.0 / float(np.sqrt(raw @ raw))  # of the counts: N cancels in the normalisation
        p = raw / n_samples
        sq_norm = float(p @ p)
        get = self._columns.get
        cols = [get(k) for k in keys]
        if None in cols:
            for i, col in enumerate(cols):
                if col is None:
                    if grow:
                        col = cols[i] = self._columns[keys[i]] = len(self._keys)
                        self._keys.append(keys[i])
                    else:
                        cols[i] = -1
        c = np.asarray(cols, dtype=np.int64)
        if not grow:
            p, raw = p[c >= 0], raw[c >= 0]
            c = c[c >= 0]
        order = np.argsort(c, kind="stable")
        return EncodedModel(c[order], p[order] / np.sqrt(sq_norm), raw[order], inv_norm)

    def _similarity_row(self, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
        n = len(self._ids)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        dense = np.zeros(max(self.n_columns, 1), dtype=np.float64)
        known = cols < dense.shape[0]
        dense[cols[known]] = vals[known]
        row = self.rows_dot(dense)
        np.clip(row, 0.0, 1.0, out=row)
        return row

    def _append(self, model_id: str, enc: "EncodedModel") -> None:
        if enc.cols.size and int(enc.cols[-1]) > np.iinfo(np.int32).max:
            raise ValueError("the allele index is limited to 2^31 (gene, allele) columns")
        need = self._nnz + len(enc.cols)
        if need > self._indices.shape[0]:
            cap = max(need, int(_GROWTH * self._indices.shape[0]))
            self._indices = _grown(self._indices, self._nnz, cap)
            self._counts = _grown(self._counts, self._nnz, cap)
            if self._data is not None:
                self._data = _grown(self._data, self._nnz, cap)
        if self._data is not None:
            self._data[self._nnz:need] = enc.vals
        self._indices[self._nnz:need] = enc.cols
        self._counts[self._nnz:need] = enc.counts
        self._nnz = need
        n = len(self._ids)
        if n + 2 > self._indptr.shape[0]:
            self._indptr = np.resize(self._indptr, 2 * (n + 2))
            self._inv_norm = np.resize(self._inv_norm, 2 * (n + 2))
        self._indptr[n + 1] = need
        self._inv_norm[n] = enc.inv_norm
        self._row_of[model_id] = len(self._ids)
        self._ids.append(model_id)



class ReferenceRows:
    """Distances from indexed models to a fixed set of reference rows of an ``AlleleIndex``
    (a frozen estimator's reference models): the reference rows are copied once into a CSR
    block; a query row is scattered into a dense vector and multiplied, O(nnz of the
    reference rows + alleles of the query) a row, whatever the size of the index. Later
    inserts add columns the reference rows have no entries in, so the block stays valid.
    Distances equal ``distance_from_similarity(similarity_block(rows, reference))`` up to
    rounding (the same dot products, summed in another order)."""

    def __init__(self, alleles: AlleleIndex, rows: np.ndarray):
        self.alleles = alleles
        self.rows = np.asarray(rows, dtype=np.int64)
        self.block = alleles.submatrix(self.rows).tocsr()
        self.block.sort_indices()

    def __len__(self) -> int:
        return int(self.rows.size)

    def distances(self, rows: np.ndarray) -> np.ndarray:
        """|rows| x |reference| distances (0 where a query is a reference row itself)."""
        rows = np.asarray(rows, dtype=np.int64)
        # columns newer than the block: no reference row has them, so they are dropped
        dense = self.alleles._dense_rows(rows)[:, : self.block.shape[1]]
        s = np.asarray(self.block @ dense.T).T
        np.clip(s, 0.0, 1.0, out=s)
        d = distance_from_similarity(s)
        d[rows[:, None] == self.rows[None, :]] = 0.0
        return d
