"""The writer's estimates in sparse mode (``indexer.app.estimates``, ``writer._Estimator``):
a real ``PhyloIndex(mode="sparse")``; per insert only the new model's estimates, from the
installed fit; the background refit installed by ``after_write`` refreshes every unscored
model; the exact mode's path is unchanged."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from indexer.app.writer import _Estimator
from indexer.core.distance import distance_from_similarity
from indexer.core.phylo_index import PhyloIndex
from indexer.core.predict import estimate_scores
from indexer.core.predict.refresh import RefitPolicy
from indexer.core.simulate import simulate_probes


class _Catalog:
    """What the estimator reads and writes of the catalog."""

    def __init__(self, scores):
        self.scores = scores
        self.written: list[list] = []
        self.transactions = 0

    def mean_scores(self):
        return dict(self.scores)

    def cv_groups(self, ids):
        return {m: m.split("/")[0] for m in ids}

    def replace_estimates(self, records):
        self.written.append(list(records))

    @contextlib.contextmanager
    def transaction(self):
        self.transactions += 1
        yield


@pytest.fixture(scope="module")
def eco():
    return simulate_probes(70, seed=5)


def _scores(eco, index, n):
    rows = np.arange(n)
    d = distance_from_similarity(index.alleles.similarity_block(rows, rows[:4]))
    u = np.exp(-d).sum(1)
    u = (u - u.mean()) / u.std()
    return {(eco.ids[i], b): float(1 / (1 + np.exp(-(c * u[i])))) for i in range(0, n, 2)
            for b, c in (("arc", 1.0), ("mmlu", 0.7))}


def test_sparse_refresh_predicts_the_new_model_from_the_installed_fit(eco, method="kinship-stack"):
    index = PhyloIndex(n_samples=eco.n_samples, mode="sparse", k=8, candidates=16, backend="exact")
    for i in range(50):
        index.insert(eco.ids[i], eco.counts(i))
    catalog = _Catalog(_scores(eco, index, 40))
    est = _Estimator()
    from indexer.app.estimates import SparseEstimates

    est.sparse = SparseEstimates(method, RefitPolicy(every_inserts=15), index_lock=est.index_lock)
    # no fit yet: the first insert writes nothing and starts the background refit
    with est.index_lock:
        index.insert(eco.ids[50], eco.counts(50))
    assert est.refresh(catalog, index, 1, changed={eco.ids[50]}, new_id=eco.ids[50]) == 0
    assert est.sparse.refit_pending
    n = est.sparse.install_ready(catalog, index, 1, wait=True)
    unscored = [m for m in index.ids if (m, "arc") not in catalog.scores]
    assert n == 2 * len(unscored) and catalog.transactions == 1  # the refit's own transaction
    assert {(r.model_id, r.benchmark) for r in catalog.written[-1]} == {(m, b) for m in unscored for b in ("arc", "mmlu")}
    # those equal the exact path on the full matrix (51 models: within the anchor cap)
    exact = estimate_scores(index.distance_matrix(), index.ids, catalog.scores, method=method,
                            groups=catalog.cv_groups(index.ids))
    want = {(e.model_id, e.benchmark): e.estimate for e in exact}
    for r in catalog.written[-1]:
        assert r.estimate == pytest.approx(want[(r.model_id, r.benchmark)], abs=1e-9)
    fit = est.sparse.state.fit
    # inserts: only the new model's two estimates, from the installed fit
    for i in range(51, 60):
        with est.index_lock:
            index.insert(eco.ids[i], eco.counts(i))
        assert est.refresh(catalog, index, i, changed={eco.ids[i], eco.ids[0]}, new_id=eco.ids[i]) == 2
        assert {r.model_id for r in catalog.written[-1]} == {eco.ids[i]}
        rows = np.array([index.alleles.row_of(m) for m in (eco.ids[i], *fit.reference)])
        d = distance_from_similarity(index.alleles.similarity_block(rows[:1], rows[1:]))
        d[rows[:1, None] == rows[None, 1:]] = 0.0
        direct = {e.benchmark: e.estimate for e in fit.predict([eco.ids[i]], d)}
        assert all(r.estimate == pytest.approx(direct[r.benchmark], abs=1e-9) for r in catalog.written[-1])
        assert est.after_write(catalog, index, i) == 0  # nothing due yet
    assert est.sparse.state.fit is fit and not est.sparse.refit_pending
    # 15 inserts since the fit: a refit starts in the background; the old fit serves meanwhile
    for i in range(60, 66):
        with est.index_lock:
            index.insert(eco.ids[i], eco.counts(i))
        est.refresh(catalog, index, i, changed={eco.ids[i]}, new_id=eco.ids[i])
    assert est.sparse.refit_pending and est.sparse.state.fit is fit
    est.sparse.install_ready(catalog, index, 66, wait=True)
    assert est.sparse.state.fit is not fit and len(est.sparse.state.fit.reference) >= len(fit.reference)
    written = {r.model_id for r in catalog.written[-1]}
    assert {eco.ids[i] for i in range(50, 66)} <= written  # later models now refreshed by the refit
    est.close()


def test_exact_mode_refresh_is_estimate_scores(eco):
    """The exact index keeps the one exact path (``estimate_records`` on the full matrix)."""
    index = PhyloIndex(n_samples=eco.n_samples)
    for i in range(30):
        index.insert(eco.ids[i], eco.counts(i))
    catalog = _Catalog(_scores(eco, index, 24))
    est = _Estimator()
    est.refresh(catalog, index, 3, changed=set(index.ids), new_id=eco.ids[29])
    assert est.sparse is None and est.after_write(catalog, index, 3) == 0
    exact = estimate_scores(index.distance_matrix(), index.ids, catalog.scores, groups=catalog.cv_groups(index.ids))
    assert sorted((r.model_id, r.benchmark, r.estimate) for r in catalog.written[-1]) == sorted(
        (e.model_id, e.benchmark, e.estimate) for e in exact)
