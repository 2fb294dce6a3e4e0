"""The sparse mode's estimator (``indexer.core.predict.refresh``): per-insert predictions
from the distances to a frozen fit's reference set equal ``estimate_scores`` on the full
matrix when the fit is the same; the anchor cap; refits swapped in atomically; the
reference block's distances equal the index's own."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from indexer.core.predict import FittedPredictors, KinshipStack, estimate_scores
from indexer.core.predict.refresh import RefitPolicy, RefreshingEstimates, estimate_all, fit_reference
from tests.helpers.kinship import toy_ecosystem


def _toy(n=30, seed=1):
    ids, d, ability = toy_ecosystem(n, seed)
    scores = {(m, "arc"): float(a) for m, a in zip(ids[:20], ability[:20])}
    scores.update({(m, "mmlu"): float(0.8 * a) for m, a in zip(ids[:16], ability[:16])})
    return ids, d, scores


def _on(d, ids, calls=None):
    pos = {m: i for i, m in enumerate(ids)}

    def distances(a, b):
        if calls is not None:
            calls.append((len(a), len(b)))
        return d[np.ix_([pos[m] for m in a], [pos[m] for m in b])]

    return distances


@pytest.mark.parametrize("method", ["kinship-stack", "kinship-ensemble"])
def test_new_model_estimate_equals_estimate_scores_with_the_same_fit(method):
    ids, d, scores = _toy()
    groups = {m: m.split("/")[0] for m in ids}
    # estimate_scores fitted on the first 29 models, then model 29 inserted (no refit:
    # the scored set is unchanged; the joint fit keeps its 29 anchors)
    cache = FittedPredictors(anchor_refit_fraction=0.1)
    estimate_scores(d[:29, :29], ids[:29], scores, method=method, groups=groups, cache=cache)
    exact = estimate_scores(d, ids, scores, changed={ids[29]}, method=method, groups=groups, cache=cache)
    calls = []
    fit = fit_reference(ids[:29], scores, _on(d, ids, calls), method, groups)
    assert calls == [(len(fit.reference), len(fit.reference))]  # one block: the reference set's
    calls.clear()
    state = RefreshingEstimates(method)
    state.swap(fit)
    new = state.predict_new([ids[29]], _on(d, ids, calls))
    assert calls == [(1, len(fit.reference))]  # the new model against the reference set, nothing else
    assert len(fit.reference) == (29 if method == "kinship-stack" else 20)
    assert sorted((e.model_id, e.benchmark) for e in new) == [(ids[29], "arc"), (ids[29], "mmlu")]
    want = {(e.model_id, e.benchmark): e for e in exact}
    for e in new:
        assert e == want[(e.model_id, e.benchmark)]


@pytest.mark.parametrize("method", ["kinship-stack", "kinship-ensemble"])
def test_a_refit_over_every_model_is_estimate_scores(method):
    """While the index is within the anchor cap, a refit's estimates are the exact path's."""
    ids, d, scores = _toy()
    exact = {(e.model_id, e.benchmark): e for e in estimate_scores(d, ids, scores, method=method)}
    fit = fit_reference(ids, scores, _on(d, ids), method)
    every = {(e.model_id, e.benchmark): e for e in estimate_all(fit, ids, _on(d, ids), chunk=7)}
    assert every.keys() == exact.keys()
    for k, e in every.items():
        assert e.estimate == pytest.approx(exact[k].estimate, abs=1e-12)
        assert (e.low, e.high) == pytest.approx((exact[k].low, exact[k].high), abs=1e-12)


def test_joint_anchors_are_capped_and_keep_every_scored_model():
    ids, d, scores = _toy(60)
    fit = fit_reference(ids, scores, _on(d, ids), "kinship-stack", max_anchors=25)
    scored = {m for m, _ in scores}
    assert len(fit.reference) == 25 and scored <= set(fit.reference)
    assert list(fit.reference) == [m for m in ids if m in fit.reference]  # index order
    assert fit.joint.anchors.size == 25
    again = fit_reference(ids, scores, _on(d, ids), "kinship-stack", max_anchors=10)
    assert set(again.reference) == scored  # the scored models are never dropped
    est = again.predict(ids[40:], d[40:][:, [ids.index(m) for m in again.reference]])
    assert len(est) == 2 * 20 and all(0 <= e.low <= e.estimate <= e.high <= 1 for e in est)


def test_joint_predict_all_is_each_benchmarks_predict(paper):
    pm, y = paper
    joint = KinshipStack().fit_joint(pm.distance, y[:, :3], np.array(pm.families))
    rows = pm.distance[:9]
    together = joint.predict_all(rows)
    for k, f in joint.fitted.items():
        for a, b in zip(together[k], f.predict(rows)):
            assert np.array_equal(a, b)


def test_refit_policy():
    ids, d, scores = _toy()
    state = RefreshingEstimates("kinship-ensemble", RefitPolicy(every_inserts=3, scored_fraction=0.1))
    assert state.refit_due(None, scores)  # no fit yet
    state.swap(state.refit(ids, scores, _on(d, ids)))
    assert not state.refit_due(None, scores)
    state.predict_new([ids[29]], _on(d, ids))
    state.predict_new([ids[28]], _on(d, ids))
    assert not state.refit_due(None, scores)
    state.predict_new([ids[27]], _on(d, ids))
    assert state.refit_due(None, scores)  # every 3 inserts
    state.swap(state.fit)
    more = dict(scores)
    more[(ids[25], "arc")] = 0.5
    assert not state.refit_due(None, more)  # 1 new score of 36: under 10%
    more.update({(ids[i], "arc"): 0.5 for i in range(21, 25)})
    assert state.refit_due(None, more)
    changed = dict(scores)
    changed[(ids[0], "arc")] = 0.1
    assert state.refit_due(None, changed)  # a changed score always
    assert state.refit_due(lambda m: m != ids[3], scores)  # a reference model gone


def test_a_refit_in_another_thread_is_swapped_in_atomically():
    """Predictions use the installed fit while a refit runs; the new one only once swapped."""
    ids, d, scores = _toy()
    state = RefreshingEstimates("kinship-ensemble")
    state.swap(state.refit(ids[:29], scores, _on(d, ids)))
    old = state.predict_new([ids[29]], _on(d, ids))
    more = dict(scores)
    more.update({(m, "arc"): 0.9 for m in ids[20:26]})  # new scores: the refit will differ
    started, release = threading.Event(), threading.Event()
    base = _on(d, ids)

    def slow(a, b):
        started.set()
        assert release.wait(10)
        return base(a, b)

    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("fit", state.refit(ids, more, slow)))
    worker.start()
    assert started.wait(10)
    during = state.predict_new([ids[29]], _on(d, ids))
    assert during == old and state.fit.scores == scores  # the old fit, untouched
    release.set()
    worker.join(30)
    assert state.predict_new([ids[29]], _on(d, ids)) == old  # finished, not yet swapped
    state.swap(out["fit"], inserts_since=1)
    after = state.predict_new([ids[29]], _on(d, ids))
    assert after != old and state.inserts_since_fit == 2 and state.n_swaps == 2


def test_reference_rows_distances_equal_the_index_blocks():
    from indexer.core.distance import AlleleIndex, distance_from_similarity
    from indexer.core.simulate import simulate_probes

    eco = simulate_probes(60, seed=3)
    alleles = AlleleIndex(n_samples=eco.n_samples)
    for i in range(40):
        alleles.add_unscored(eco.ids[i], eco.counts(i))
    ref_rows = np.array([1, 5, 7, 20, 33])
    ref = alleles.reference(ref_rows)
    for i in range(40, 60):  # later inserts bring columns the block has never seen
        alleles.add_unscored(eco.ids[i], eco.counts(i))
    rows = np.array([0, 5, 41, 59])
    want = distance_from_similarity(alleles.similarity_block(rows, ref_rows))
    want[rows[:, None] == ref_rows[None, :]] = 0.0
    np.testing.assert_allclose(ref.distances(rows), want, rtol=0, atol=1e-12)
    assert ref.distances(rows)[1, 1] == 0.0
