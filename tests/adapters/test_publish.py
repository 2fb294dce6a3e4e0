"""Publishing: export files from a real DuckDB catalog, atomically, and a readable report."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pytest

from indexer.adapters.catalog import Catalog
from indexer.adapters.publish import EXPORT_FILES, declared_families, estimate_records, export, render_report, tree_svg
from indexer.core.tree.newick import parse_newick, to_newick
from indexer.core.tree.nj import neighbor_joining
from schemas.records import ModelRecord, ModelStatus, Score

GENOME = "g" * 64


def small_world(seed: int = 0):
    """Two clades of four models each (a base and three descendants) plus an out-group."""
    rng = np.random.default_rng(seed)
    ids = ["acme/base", "acme/tune-a", "acme/tune-b", "acme/tune-c",
           "other/base", "other/chat", "other/code", "other/math", "far/outgroup"]
    clade = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    pts = np.array([[0, 0], [4, 0], [9, 9]])[clade] + rng.normal(0, 0.3, (len(ids), 2))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) / 10
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    declared = {"acme/tune-a": ("acme/base",), "acme/tune-b": ("acme/base",),
                "other/chat": ("other/base",), "other/code": ("acme/base",)}  # the last is false
    models = [ModelRecord(id=m, author=m.split("/")[0], base_models=declared.get(m, ()),
                          created_at=t0 + timedelta(days=i), status=ModelStatus.indexed)
              for i, m in enumerate(ids)]
    return ids, d, models


@pytest.fixture()
def catalog(tmp_path):
    ids, d, models = small_world()
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    cat.upsert_models(models)
    for i, m in enumerate(ids[1:], 1):
        cat.add_distances(GENOME, m, ids[:i], np.exp(-d[i, :i]), d[i, :i])
    tree = neighbor_joining(d, ids)
    snap = cat.add_tree_snapshot(GENOME, to_newick(tree), "nj", "rebuild", len(ids))
    scores = [Score(model_id=m, benchmark="arc", value=v, source="test")
              for m, v in zip(ids[:6], (0.40, 0.45, 0.42, 0.44, 0.60, 0.62))]
    cat.import_scores(scores)
    est = estimate_records(cat, ids, d, snap)
    cat.replace_estimates(est)
    yield cat, ids, d, snap
    cat.close()


def test_export_writes_every_file_readable(catalog, tmp_path):
    cat, ids, d, snap = catalog
    out = tmp_path / "pub"
    written = export(cat, out)
    assert sorted(written) == sorted(EXPORT_FILES)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries behind
    tree = parse_newick((out / "tree.nwk").read_text())
    assert sorted(tree.leaf_names) == sorted(ids)
    con = duckdb.connect()
    n_pairs = con.execute(f"select count(*) from '{out / 'distances.parquet'}'").fetchone()[0]
    assert n_pairs == len(ids) * (len(ids) - 1)
    est = con.execute(f"select model_id, benchmark, estimate, low, high, snapshot from '{out / 'estimates.parquet'}'").fetchall()
    assert {r[0] for r in est} == set(ids[6:])  # only unscored models are estimated
    assert all(r[3] <= r[2] <= r[4] and r[5] == snap for r in est)
    csv_rows = con.execute(f"select count(*) from read_csv_auto('{out / 'estimates.csv'}')").fetchone()[0]
    assert csv_rows == len(est)
    assert con.execute(f"select count(*) from '{out / 'models.parquet'}'").fetchone()[0] == len(ids)
    page = (out / "report.html").read_text()
    assert "<svg" in page and page.count('class="leaf"') == len(ids)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert "https://" not in page
    assert "suspicious" in page  # the false declaration of other/code is shown


def test_export_refreshes_in_place(catalog, tmp_path):
    cat, ids, d, snap = catalog
    out = tmp_path / "pub"
    export(cat, out)
    first = (out / "report.html").read_text()
    cat.import_scores([Score(model_id="other/code", benchmark="arc", value=0.61, source="test")])
    cat.con.execute("delete from estimates where model_id = 'other/code'")
    export(cat, out)
    again = (out / "report.html").read_text()
    assert first != again and again.count("other/code") >= 1
    con = duckdb.connect()
    models = {r[0] for r in con.execute(f"select model_id from '{out / 'estimates.parquet'}'").fetchall()}
    assert "other/code" not in models


def test_declared_families_follow_the_chain():
    models = [{"id": "a/base", "author": "a", "base_models": []},
              {"id": "a/ft", "author": "a", "base_models": ["a/base"]},
              {"id": "b/ft2", "author": "b", "base_models": ["a/ft"]},
              {"id": "c/x", "author": "c", "base_models": ["gone/root"]},
              {"id": "d/solo", "author": "d", "base_models": []}]
    fam = declared_families(models)
    assert fam == {"a/base": "a/base", "a/ft": "a/base", "b/ft2": "a/base", "c/x": "gone/root", "d/solo": "d"}


def test_tree_svg_draws_one_label_per_leaf_and_escapes():
    tree = parse_newick("(('x/<b>':0.1,'y/a':0.2)0.9:0.05,'z/c':0.3);")
    svg = tree_svg(tree, {"y/a": "#ff0000"})
    assert svg.count('class="leaf"') == 3 and "&lt;b&gt;" in svg and "<b>" not in svg
    assert 'fill="#ff0000"' in svg and ">0.90<" in svg  # colour and support shown


def test_render_report_without_tree_or_estimates():
    page = render_report(newick=None, snapshot=None, models=[], estimates=[], scores=[], nearest={})
    assert page.startswith("<!DOCTYPE html>") and 'id="estimates"' in page
