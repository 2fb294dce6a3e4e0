"""The publish folder of a sparse (Hub-scale) index: a real DuckDB catalog, the real
``IndexWriter`` and the real exporter; the alleles are the simulator's (no model runs here).

A sparse catalog's full matrix is O(n^2) (80 GB at 100,000 models), so the export must not
ask for it: the lineage check runs on the neighbour graph (exact rows only for a declared
base outside its child's neighbours), the plots on the pairs they show, the held-out check
on the scored models; `phylolm estimate` fits on a bounded reference set. The findings and
the estimates are checked against the dense path on the full matrix computed here from the
same alleles.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from indexer.adapters.catalog import open_read_only
from indexer.adapters.catalog.queries import CatalogQueries
from indexer.adapters.publish import estimates_from_catalog, export
from indexer.app.job import JobConfig, ProbeOutcome
from indexer.app.writer import IndexWriter
from indexer.core.distance import AlleleIndex
from indexer.core.lineage import check_lineage
from indexer.core.predict import estimate_scores
from indexer.core.simulate import simulate_probes
from schemas.records import ProbeParams, Score
from tests.helpers.outcomes import simulated_outcome

N, K = 80, 6


def _declarations(eco, d, at) -> dict[str, list[str]]:
    """Bases to declare: the true nearest earlier model (a fine-tune's claim), the farthest
    earlier model (a false claim), a model that is not indexed, or nothing, in turn."""
    out: dict[str, list[str]] = {}
    for i in range(2, N):
        m, earlier = eco.ids[i], eco.ids[:i]
        row = [d[at[m], at[x]] for x in earlier]
        kind = i % 4
        if kind == 0:
            out[m] = [earlier[int(np.argmin(row))]]
        elif kind == 1:
            out[m] = [earlier[int(np.argmax(row))]]
        elif kind == 2:
            out[m] = ["gone/base-model"]
    return out


def _key(f: dict) -> tuple:
    return f["kind"], f["model_id"], f["other_id"]


def test_a_sparse_export_reads_no_full_matrix_and_matches_the_dense_path(tmp_path, monkeypatch):
    eco = simulate_probes(N, seed=11, n_genes=24, n_samples=16)
    index = AlleleIndex(n_samples=eco.n_samples, values=False)
    for i in sorted(range(N), key=lambda i: eco.ids[i]):
        index.add_unscored(eco.ids[i], eco.counts(i))
    ids, d = index.ids, index.distance_matrix()
    at = {m: i for i, m in enumerate(ids)}
    declared = _declarations(eco, d, at)

    def no_full_matrix(self):
        raise AssertionError("a sparse catalog's export asked for the full matrix (O(n^2))")

    monkeypatch.setattr(CatalogQueries, "complete_matrix", no_full_matrix)
    path, pub = tmp_path / "c.duckdb", tmp_path / "pub"
    writer = IndexWriter(JobConfig(catalog=path, backend="simulated", n_genes=eco.n_genes,
                                   params=ProbeParams(n_samples=eco.n_samples), index_mode="sparse", index_k=K,
                                   tree_every=10, publish_dir=pub))
    for i in range(N):
        out = simulated_outcome(writer, eco, i)
        model = out.model.model_copy(update={"base_models": declared.get(out.model.id, [])})
        assert writer.apply(ProbeOutcome(model, out.probe)).status == "indexed"
        if i in (40, 41, 60):  # a streaming job's exports: each check carries the last one's far ranks
            writer.publish()
    # scores for a third of the models, in two families: the held-out check reads their matrix
    scored = eco.ids[::3]
    writer.catalog.import_scores([Score(model_id=m, benchmark="arc", value=0.3 + 0.01 * i, source="test")
                                  for i, m in enumerate(scored)])
    writer.publish()
    carried = writer._far_ranks
    assert carried.entries and carried.refs == frozenset(ids)  # the final check carried them
    writer.close()

    got = pq.read_table(pub / "lineage.parquet").to_pylist()
    created = {m: i for i, m in enumerate(eco.ids)}
    want = [f.as_dict() for f in check_lineage(d, ids, declared, created)]
    # the graph holds each model's current k nearest (its own at its insert, and the later
    # models that entered its list), so the findings are the dense check's, rank for rank
    assert {_key(f) for f in got} == {_key(f) for f in want}
    by_key = {_key(f): f for f in want}
    for f in got:
        w = by_key[_key(f)]
        assert f["distance"] == pytest.approx(w["distance"], abs=1e-9, nan_ok=True)
        assert (f["nearest_id"], f["rank"]) == (w["nearest_id"], w["rank"])
    kinds = {f["kind"] for f in got}
    assert {"confirmed", "suspicious", "not_indexed"} <= kinds  # the claims above were told apart
    # a declared base far outside its child's k nearest was ranked on an exact row: of N - 1
    far = [f for f in got if f["kind"] == "suspicious"]
    assert far and all(f["rank"] > K for f in far)

    # the same from the catalog alone (`phylolm export`: the alleles loaded, not the writer's)
    with open_read_only(path) as reader:
        again = export(reader, tmp_path / "pub2")
        # `phylolm estimate`: the reference fit's estimates; below max_anchors models every
        # model is an anchor, so they are the dense path's on the full matrix
        estimates = {(e.model_id, e.benchmark): e for e in estimates_from_catalog(reader)}
        dense = estimate_scores(d, ids, reader.mean_scores(), groups=reader.cv_groups(ids))
    assert set(estimates) == {(e.model_id, e.benchmark) for e in dense} == {(m, "arc") for m in ids
                                                                            if m not in set(scored)}
    for e in dense:
        got_e = estimates[(e.model_id, e.benchmark)]
        assert (got_e.estimate, got_e.low, got_e.high) == pytest.approx((e.estimate, e.low, e.high), abs=1e-6)
    alone = pq.read_table(again["lineage.parquet"]).to_pylist()
    assert [(_key(f), f["rank"], f["nearest_id"]) for f in alone] == [(_key(f), f["rank"], f["nearest_id"])
                                                                        for f in got]
    for a, b in zip(alone, got):  # the same products, summed in another order
        assert a["distance"] == pytest.approx(b["distance"], abs=1e-12, nan_ok=True)
    # the held-out check ran on the scored models' exact distances: one point a scored model
    svg = (pub / "plots" / "estimated-vs-measured.svg").read_text()
    assert svg.count('class="point"') == len(scored)


def test_the_export_folder_takes_at_most_its_share_of_the_writers_time(tmp_path):
    """Within a run (``publish(final=False)``) the publish folder, written whole, is refreshed
    only when the time since the last export is at least (1/share - 1) times that export's
    length; the read-only snapshot is published every time, and a final publish always
    exports. The two shares here make the decision independent of the machine's speed:
    1.0 (always due) and 1e-9 (due a billion export-lengths after the last one)."""
    import json

    eco = simulate_probes(12, seed=4, n_genes=8, n_samples=8)

    def run(share: float, folder):
        pub = folder / "pub"
        writer = IndexWriter(JobConfig(catalog=folder / "c.duckdb", backend="simulated", n_genes=8,
                                       params=ProbeParams(n_samples=8), index_mode="sparse", index_k=4,
                                       publish_dir=pub, export_share=share))
        refreshed, shown = [], []
        for i in range(12):
            writer.apply(simulated_outcome(writer, eco, i))
            if i >= 2:
                refreshed.append(writer.publish(final=False))
                shown.append(json.loads((pub / "manifest.json").read_text())["snapshot"])
        published = writer.catalog.latest_snapshot()[0]
        assert writer.publish(final=True)
        final = json.loads((pub / "manifest.json").read_text())["snapshot"]
        writer.close()
        return refreshed, shown, published, final

    refreshed, shown, published, final = run(1.0, tmp_path / "always")
    assert all(refreshed) and len(set(shown)) == len(shown) and final == published
    refreshed, shown, published, final = run(1e-9, tmp_path / "rare")
    assert refreshed == [True] + [False] * 9  # the first export, then none within the run
    assert set(shown) == {shown[0]} and shown[0] < published
    assert final == published  # the bundle's end brings the folder up to date
