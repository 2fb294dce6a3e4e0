"""The writer's estimates for an index in sparse mode: per insert, the new model's estimates
from a frozen fit and its distances to that fit's reference models only (no n x n matrix);
full refits scheduled off the write path, in a background thread, and swapped in whole.

``indexer.core.predict.refresh`` does the estimating; this module owns the schedule and the
threads: ``refresh`` (inside an insert's transaction) predicts the new model from the fit
installed now, O(|reference|) distances through ``AlleleIndex.reference``, and starts a
refit when ``RefitPolicy`` says one is due and none is running; ``install_ready`` (after the
transaction, or between batches) swaps a finished refit in and writes its estimates of every
unscored model in a transaction of its own (and predicts, with the new fit, the models
indexed while it ran). Until then the writer keeps predicting with the old fit. Estimates
of models indexed earlier change only there, never on an insert.

The refit thread reads the index (distance blocks among indexed models); the writer takes
``index_lock`` around each insert so a block is never read mid-append. The catalog is read
on the writer's thread only (scores and CV groups are handed to the refit).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from indexer.core.predict.refresh import RefitPolicy, RefreshingEstimates, ReferenceFit, estimate_all

log = logging.getLogger("phylolm")


def _records(estimates, snapshot):
    from schemas.records import Estimate

    return [Estimate(model_id=e.model_id, benchmark=e.benchmark, estimate=e.estimate, low=e.low, high=e.high,
                     method=e.method, snapshot=snapshot) for e in estimates]


class SparseEstimates:
    """Estimates for a ``PhyloIndex(mode="sparse")``: see the module docstring.

    ``background=False`` runs a due refit at once on the calling thread (tests, batch jobs);
    its result is still installed by ``install_ready``.
    """

    def __init__(self, method: str | None = None, policy: RefitPolicy | None = None,
                 max_anchors: int | None = None, background: bool = True, index_lock=None):
        from indexer.core.predict import DEFAULT_METHOD
        from indexer.core.predict.refresh import DEFAULT_MAX_ANCHORS

        self.state = RefreshingEstimates(method or DEFAULT_METHOD, policy or RefitPolicy(),
                                         DEFAULT_MAX_ANCHORS if max_anchors is None else max_anchors)
        self.background = background
        self.index_lock = index_lock if index_lock is not None else threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._pending_at = 0  # inserts_since_fit when the pending refit took its snapshot
        self._reference: tuple[ReferenceFit, object] | None = None  # (fit, ReferenceRows)
        self.n_refits_started = 0

    @property
    def refit_pending(self) -> bool:
        return self._pending is not None

    # -- distances ------------------------------------------------------------------
    def _distances(self, index):
        """``distances(ids_a, ids_b)`` on the index: the installed fit's reference through
        its kept CSR block (O(nnz of the reference) a model), anything else on demand."""
        from indexer.core.distance import distance_from_similarity

        def distances(a, b):
            with self.index_lock:
                rows_a = np.array([index.alleles.row_of(m) for m in a], dtype=np.int64)
                ref = self._reference
                if ref is not None and b is ref[0].reference:
                    return ref[1].distances(rows_a)
                rows_b = np.array([index.alleles.row_of(m) for m in b], dtype=np.int64)
                d = distance_from_similarity(index.alleles.similarity_block(rows_a, rows_b))
                d[rows_a[:, None] == rows_b[None, :]] = 0.0
                return d

        return distances

    # -- the write path ---------------------------------------------------------------
    def refresh(self, catalog, index, snapshot: int, new_ids) -> int:
        """Write the estimates of the newly indexed ``new_ids`` (inside the insert's
        transaction) and start a refit when one is due. Returns the number written."""
        scores = catalog.mean_scores()
        est = self.state.predict_new(list(new_ids), self._distances(index), scores)
        catalog.replace_estimates(_records(est, snapshot))
        if self._pending is None and self.state.refit_due(index.alleles.__contains__, scores):
            self.schedule(catalog, index, scores)
        return len(est)

    def schedule(self, catalog, index, scores=None) -> Future:
        """Start a refit over the index as it is now (in the background thread unless
        ``background=False``); the current fit stays installed until ``install_ready``."""
        if self._pending is not None:
            return self._pending
        scores = catalog.mean_scores() if scores is None else scores
        with self.index_lock:
            ids = index.ids
        groups = catalog.cv_groups(ids)
        distances = self._distances(index)
        state, lock = self.state, self.index_lock

        def job():
            fit = state.refit(ids, scores, distances, groups)
            with lock:
                refrows = index.alleles.reference(
                    np.array([index.alleles.row_of(m) for m in fit.reference], dtype=np.int64))

            def to_reference(a, b):  # estimate_all's blocks: the new fit's reference rows
                with lock:
                    return refrows.distances(np.array([index.alleles.row_of(m) for m in a], dtype=np.int64))

            benches = _benches(fit)
            unscored = [m for m in ids if any((m, b) not in scores for b in benches)]
            return fit, refrows, len(ids), estimate_all(fit, unscored, to_reference, scores, chunk=256)

        self._pending_at = self.state.inserts_since_fit
        self.n_refits_started += 1
        if self.background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="phylolm-refit")
            self._pending = self._pool.submit(job)
        else:
            self._pending = Future()
            try:
                self._pending.set_result(job())
            except Exception as exc:  # handed to install_ready, as a background failure is
                self._pending.set_exception(exc)
        return self._pending

    def install_ready(self, catalog, index, snapshot: int | None, wait: bool = False) -> int:
        """Swap a finished refit in and write its estimates of every unscored model (in a
        transaction of its own). ``wait``: block until a running refit ends. Returns the
        number of estimates written (0 when none was ready)."""
        pending = self._pending
        if pending is None or not (wait or pending.done()):
            return 0
        self._pending = None
        try:
            fit, refrows, n_snapshot, estimates = pending.result()
        except Exception:  # the old fit stays; the next insert schedules another refit
            log.exception("estimates refit failed; keeping the previous fit")
            return 0
        with self.index_lock:
            self._reference = (fit, refrows)
            late = index.ids[n_snapshot:]  # indexed while the refit ran: predicted by the new fit now
        self.state.swap(fit, inserts_since=self.state.inserts_since_fit - self._pending_at)
        measured = catalog.mean_scores()
        if late and fit.reference:
            estimates = estimates + fit.predict(late, self._distances(index)(late, fit.reference), measured)
        records = _records([e for e in estimates if (e.model_id, e.benchmark) not in measured], snapshot)
        with catalog.transaction():
            catalog.replace_estimates(records)
        return len(records)

    def close(self, wait: bool = True) -> None:
        """Stop the refit thread (``wait``: let a running refit finish first); a result not
        installed yet is dropped."""
        self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None


def _benches(fit: ReferenceFit) -> tuple[str, ...]:
    return fit.joint_benches if fit.joint is not None else tuple(fit.heads)
