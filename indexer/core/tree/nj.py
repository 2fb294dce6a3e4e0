"""Neighbour joining (Saitou & Nei, 1987; Studier & Keppler, 1988), exact.

At each step the pair (i, j) minimising Q_ij = (m-2) D_ij - r_i - r_j is joined, r being
row sums over the m active nodes. The result is exactly the canonical algorithm's (ties
go to the first pair in row-major order of the active slots); only the search for the
minimum is faster. As in RapidNJ (Simonsen, Mailund & Pedersen, 2008) it rests on two
facts: distances between surviving nodes never change, and
Q_ij >= (m-2) (D_ij - max_j u_j) - r_i. Each row keeps its K smallest keys and the K-th
value t_i; a step evaluates Q on those m*K candidates, then scans in full only the rows
whose bound (m-2) t_i - r_i - max(r) does not exceed the best candidate (usually a few),
refreshing their candidates. Keys are taken as d_ij - u_j with u_j = r_j / (m-2) frozen at
the last re-keying (the bound allows for how far u has drifted since), which keeps the bound
tight when average distances differ a lot between rows. Every search path computes
Q_ij as (m-2) d_ij - (r_i + r_j), the same float whichever of i, j is the row, so exact
ties compare alike in the bounded and the exhaustive search. Worst case O(n^3) like plain
NJ, in practice close to O(n^2 K); memory O(n^2). Negative branch lengths are set to 0, as
is customary.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexer.core.tree.core import Tree

_BLOCK_BYTES = 1 << 20  # rows per block chosen so one block of Q fits in L2 cache


def neighbor_joining(distances: np.ndarray, names: Sequence[str]) -> Tree:
    """The NJ tree of a symmetric distance matrix; leaves are ``names`` (row order)."""
    d = np.array(distances, dtype=np.float64, copy=True)
    n = len(names)
    if d.shape != (n, n):
        raise ValueError(f"distance matrix is {d.shape}, expected ({n}, {n})")
    if n == 0:
        raise ValueError("no taxa")
    if not np.all(np.isfinite(d)):
        raise ValueError("distance matrix has NaN or infinite entries")
    if np.abs(d - d.T).max(initial=0.0) > 1e-9 * max(1.0, np.abs(d).max(initial=0.0)):
        raise ValueError("distance matrix is not symmetric")
    if len(set(names)) != n:
        raise ValueError("duplicate names")
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    tree = Tree(capacity=2 * n + 2)
    leaves = [tree.add_node(-1, 0.0, str(x)) for x in names]
    if n == 1:
        tree.root = leaves[0]
        return tree.reindex()
    if n == 2:
        root = tree.add_node()
        for v, l in zip(leaves, (d[0, 1] / 2, d[0, 1] / 2)):
            _attach(tree, root, v, l)
        tree.root = root
        return tree.reindex()
    _nj_core(d, tree, np.asarray(leaves, dtype=np.int64))
    return tree.reindex()


def _attach(tree: Tree, parent: int, child: int, length: float) -> None:
    tree.parent[child] = parent
    tree.length[child] = max(length, 0.0)
    tree.children[parent].append(child)


_CANDIDATES = 48  # K: entries kept per row
_EXHAUSTIVE_BELOW = 4 * _CANDIDATES  # small matrices: the plain scan is cheaper


def _nj_core(d: np.ndarray, tree: Tree, node: np.ndarray, exhaustive: bool = False) -> None:
    """Join in place: ``d`` is overwritten; active rows are kept in ``d[:m, :m]`` by moving
    the last active row into the slot a join frees."""
    m = d.shape[0]
    r = d.sum(axis=1)
    k_cand = _CANDIDATES
    cand = np.full((m, k_cand), -1, dtype=np.int64)
    thresh = np.full(m, np.inf)
    snap = np.zeros(m)  # u_j = r_j / (m - 2) when the candidate keys were computed
    use_bound = not exhaustive and m > _EXHAUSTIVE_BELOW
    if use_bound:
        snap[:m] = r[:m] / (m - 2)
        _refresh(d, m, np.arange(m), cand, thresh, snap)
    while m > 3:
        if use_bound and m > _EXHAUSTIVE_BELOW:
            i, j, n_flagged = _argmin_q_bounded(d, r, m, cand, thresh, snap)
            if n_flagged > m // 8:  # keys have drifted: re-key every row at today's u
                snap[:m] = r[:m] / (m - 2)
                _refresh(d, m, np.arange(m), cand, thresh, snap)
        else:
            i, j = _argmin_q(d, r, m)
        dij = d[i, j]
        li = 0.5 * dij + (r[i] - r[j]) / (2.0 * (m - 2))
        lj = dij - li
        u = tree.add_node()
        _attach(tree, u, int(node[i]), li)
        _attach(tree, u, int(node[j]), lj)
        di, dj = d[i, :m].copy(), d[j, :m].copy()
        du = 0.5 * (di + dj - dij)
        du[i] = du[j] = 0.0
        r[:m] += du - di - dj
        r[i] = du.sum()
        d[i, :m] = du
        d[:m, i] = du
        last = m - 1
        if j != last:
            d[j, :m] = d[last, :m]
            d[:m, j] = d[:m, last]
            d[j, j] = 0.0
            r[j] = r[last]
            node[j] = node[last]
        node[i] = u
        if use_bound:
            live = cand[:m]
            live[(live == i) | (live == j)] = -1  # old i and j are gone
            if j != last:
                cand[j] = cand[last]
                thresh[j] = thresh[last]
                snap[j] = snap[last]
            live = cand[: m - 1]
            live[live == last] = j
            if m - 1 > _EXHAUSTIVE_BELOW:
                snap[i] = r[i] / (m - 3)
                _refresh(d, m - 1, np.array([i]), cand, thresh, snap)
        m -= 1
    a, b, c = 0, 1, 2
    root = tree.add_node()
    _attach(tree, root, int(node[a]), 0.5 * (d[a, b] + d[a, c] - d[b, c]))
    _attach(tree, root, int(node[b]), 0.5 * (d[a, b] + d[b, c] - d[a, c]))
    _attach(tree, root, int(node[c]), 0.5 * (d[a, c] + d[b, c] - d[a, b]))
    tree.root = root


def _refresh(d: np.ndarray, m: int, rows: np.ndarray, cand: np.ndarray, thresh: np.ndarray,
             snap: np.ndarray, full: np.ndarray | None = None) -> None:
    """Re-key ``rows``: keep the K columns of smallest key d_ij - snap_j, and t_i = the
    K-th key (every other live column has a key >= t_i)."""
    k = cand.shape[1]
    if full is None:
        full = d[rows, :m].copy()
        full[np.arange(len(rows)), rows] = np.inf
    key = full - snap[:m]
    part = np.argpartition(key, k - 1, axis=1)[:, :k]
    cand[rows] = part
    thresh[rows] = np.take_along_axis(key, part, axis=1).max(axis=1)


def _argmin_q_bounded(d: np.ndarray, r: np.ndarray, m: int, cand: np.ndarray,
                      thresh: np.ndarray, snap: np.ndarray) -> tuple[int, int, int]:
    """The exhaustive scan's answer, from the candidates plus full scans of unbounded rows.

    For a column j outside row i's candidates, d_ij - snap_j >= t_i, and u_j = r_j/(m-2)
    has drifted from snap_j by at most ``drift``, so Q_ij >= (m-2)(t_i - drift) - r_i.
    A pair made by the last join is outside the other rows' bounds but inside the new row's,
    which is re-keyed in full; so every live pair is covered from at least one side.
    O(m K + f m) for f flagged rows. The flagged rows are re-keyed only after every read of
    ``cand``: a re-key rewrites those rows in place."""
    scale = float(m - 2)
    rr = r[:m]
    dead = cand[:m] < 0
    cc = np.where(dead, 0, cand[:m])  # a copy, so later re-keys cannot change what is read
    rows = np.arange(m)
    q = scale * d[rows[:, None], cc] - (rr[:, None] + rr[cc])
    q[dead] = np.inf
    best = q.min()
    drift = float(np.max(rr / scale - snap[:m]))
    bound = scale * (thresh[:m] - drift) - rr
    # rounding margin, relative to the magnitudes that enter Q and the bound, so a true
    # minimum (or a tie with it) is never pruned; too wide only flags more rows
    mag = scale * (np.abs(thresh[:m]) + abs(drift) + np.abs(snap[:m]).max()) + np.abs(rr) + np.abs(rr).max()
    bound -= 1e-9 * (mag + 1.0)
    flagged = np.flatnonzero(bound <= best)
    pairs: list[tuple[int, int]] = []
    if flagged.size:
        full = d[flagged, :m].copy()
        full[np.arange(flagged.size), flagged] = np.inf
        qf = scale * full - (rr[flagged, None] + rr[None, :])
        best = min(best, qf.min())
        fi, fj = np.nonzero(qf == best)
        pairs += list(zip(flagged[fi].tolist(), fj.tolist()))
    ci, ck = np.nonzero(q == best)
    pairs += list(zip(ci.tolist(), cc[ci, ck].tolist()))
    i, j = min((min(a, b), max(a, b)) for a, b in pairs)  # first tied pair, row-major
    if 0 < flagged.size <= m // 8:
        _refresh(d, m, flagged, cand, thresh, snap, full)
    return i, j, int(flagged.size)


def _argmin_q(d: np.ndarray, r: np.ndarray, m: int) -> tuple[int, int]:
    """First (i < j) minimising (m-2) d_ij - (r_i + r_j), scanning the upper triangle by
    blocks. O(m^2) time; extra memory two blocks of about 0.5 MB."""
    scale = float(m - 2)
    rows = max(1, min(m, _BLOCK_BYTES // (16 * m)))  # two float64 buffers per block
    buf = np.empty((rows, m))
    rbuf = np.empty((rows, m))
    rr = r[:m]
    best = np.inf
    best_ij = (0, 1)
    for start in range(0, m - 1, rows):
        stop = min(start + rows, m - 1)
        h = stop - start
        # columns from start+1: covers every j > i for the rows in this block
        q = buf[:h, : m - start - 1]
        rsum = rbuf[:h, : m - start - 1]
        np.add(rr[start:stop, None], rr[start + 1: m], out=rsum)
        np.multiply(d[start:stop, start + 1: m], scale, out=q)
        q -= rsum
        # entries with j <= i inside the block are below the diagonal: mask them
        if h > 1:
            q[np.tril_indices(h, -1, m - start - 1)] = np.inf
        k = int(np.argmin(q))
        val = q.flat[k]
        if val < best:
            best = val
            bi, bj = divmod(k, q.shape[1])
            best_ij = (start + bi, start + 1 + bj)
    return best_ij
