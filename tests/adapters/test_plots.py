"""The publish folder's SVG plots: well-formed, one mark per datum, and the held-out
estimates behind them computed once per set of scores."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

import indexer.adapters.publish as publish
from indexer.adapters.catalog import Catalog
from indexer.adapters.publish.plots import (distance_by_relation, estimated_vs_measured, interval_coverage,
                                            relation_distances)
from tests.helpers.publish_world import IDS, UNSCORED, publish_world

SVG = "{http://www.w3.org/2000/svg}"


def _rows():
    return [{"model_id": f"m/{i}", "benchmark": b, "truth": t, "estimate": t + 0.02, "low": t - lo, "high": t + 0.1}
            for i, (t, lo) in enumerate([(0.4, 0.1), (0.5, -0.05), (0.6, 0.1)]) for b in ("arc", "mmlu")]


def test_estimated_vs_measured_draws_each_score_with_its_interval():
    root = ET.fromstring(estimated_vs_measured(_rows()))
    points = root.findall(f".//{SVG}g[@class='point']")
    assert len(points) == 6
    outside = [g for g in points if g.find(f"{SVG}circle").get("fill") == "#d62728"]
    assert len(outside) == 2  # the model whose interval (low > truth) misses, on both benchmarks


def test_interval_coverage_is_the_share_inside():
    root = ET.fromstring(interval_coverage(_rows()))
    bars = {r.get("data-benchmark"): float(r.get("data-coverage")) for r in root.iter(f"{SVG}rect")
            if r.get("class") == "coverage"}
    assert bars == {"arc": pytest.approx(2 / 3, abs=1e-4), "mmlu": pytest.approx(2 / 3, abs=1e-4)}


def test_distance_by_relation_groups_declared_pairs():
    ids = ["a/base", "a/ft", "a/q", "b/x"]
    d = np.array([[0, .1, .02, .9], [.1, 0, .12, .9], [.02, .12, 0, .9], [.9, .9, .9, 0]])
    models = [{"id": "a/ft", "base_models": ["a/base"], "base_model_relation": "finetune"},
              {"id": "a/q", "base_models": ["a/base"], "base_model_relation": "quantized"},
              {"id": "a/base"}, {"id": "b/x"}]
    at = {m: i for i, m in enumerate(ids)}
    groups = relation_distances(ids, lambda pairs: [d[at[a], at[b]] for a, b in pairs], models)
    assert groups["finetune"] == [0.1] and groups["quantized"] == [0.02]
    assert sorted(groups["no declared relation"]) == [0.12, 0.9, 0.9, 0.9]
    root = ET.fromstring(distance_by_relation(groups))
    assert len(root.findall(f".//{SVG}circle")) == 6


def test_empty_inputs_say_why():
    for svg in (estimated_vs_measured([]), interval_coverage([]), distance_by_relation({})):
        assert "no " in ET.fromstring(svg).find(f"{SVG}text").text


def test_heldout_estimates_are_refitted_only_when_scores_change(tmp_path, monkeypatch):
    publish_world(tmp_path)
    calls = []
    real = publish._heldout
    monkeypatch.setattr(publish, "_heldout", lambda *a: calls.append(1) or real(*a))
    publish._HELDOUT_MEMO.clear()
    with Catalog(tmp_path / "c.duckdb") as cat:
        first = publish.heldout_estimates(cat)
        assert {r["model_id"] for r in first} == set(IDS) - UNSCORED
        assert publish.heldout_estimates(cat) == first and len(calls) == 1
        from schemas.records import Score
        cat.import_scores([Score(model_id="beta/lora", benchmark="arc", value=0.61, source="test")])
        assert "beta/lora" in {r["model_id"] for r in publish.heldout_estimates(cat)} and len(calls) == 2
