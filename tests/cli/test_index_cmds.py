"""The index commands through the real `phylolm` entry point: simulate, bench index, tree, nearest."""
import json

from indexer.adapters.catalog import Catalog
from indexer.core.phylo_index import PhyloIndex
from indexer.core.simulate import simulate
from indexer.core.tree import parse_newick
from indexer.core.tree.compare import robinson_foulds


def test_simulate_writes_a_hub_and_the_truth(cli, tmp_path):
    r = cli("simulate", "--models", "15", "--genes", "8", "--seed", "2", "--out", "hub", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    hub = tmp_path / "hub"
    truth = parse_newick((hub / "truth.nwk").read_text())
    assert info["models"] == 15 and truth.n_leaves == 15
    for model_id in truth.leaf_node:
        assert (hub / model_id / "alleles.json").is_file() and (hub / model_id / ".hub.json").is_file()
    bad = cli("simulate", "--models", "5", "--shape", "spiral", "--out", "x")
    assert bad.returncode == 2 and "shape" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_index_reports_its_figures(cli):
    r = cli("bench", "index", "--models", "40", "--genes", "16", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["models"], res["genes"]) == (40, 16)  # the run asked for
    for key in ("insert_ms_median", "insert_ms_p95", "amortised_rebuild_ms_per_insert", "nj_seconds_at_n",
                "nj_over_insert_median", "nrf_incremental_truth", "nrf_nj_truth"):
        assert isinstance(res[key], (int, float)) and res[key] >= 0, (key, res.get(key))
    assert 0 <= res["nrf_incremental_truth"] <= 1 and 0 <= res["nrf_nj_truth"] <= 1
    assert res["insert_ms_p95"] >= res["insert_ms_median"] > 0
    two = json.loads(cli("bench", "index", "--models", "20", "--genes", "8", "--seeds", "2", "--json").stdout)
    assert two["seeds"] == [0, 1] and "mean_nrf_nj_truth" in two


def test_bench_index_stream_reports_recall_rss_and_quality(cli):
    # backend exact: the default install has no hnswlib; the figures are the same fields
    r = cli("bench", "index", "--stream", "--models", "60", "--genes", "16", "-k", "10", "--candidates", "10",
            "--backend", "exact", "--recall-queries", "20", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["models"], res["mode"], res["k"]) == (60, "sparse", 10)
    assert res["recall_at_10_lists"] == 1.0 and res["recall_at_10_search"] == 1.0  # exact by construction
    assert res["insert_ms_p95"] >= res["insert_ms_median"] > 0 and res["peak_rss_mib"] > 0
    assert 0 <= res["nrf_incremental_truth"] <= 1 and 0 <= res["nrf_nj_truth"] <= 1
    assert 10 <= res["distinct_alleles_per_gene"] <= 20
    assert res["insert_ms_by_stretch"][-1]["n_to"] == 60
    bad = cli("bench", "index", "--stream", "--models", "50", "-k", "9", "--candidates", "4")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_bench_index_peers_reports_side_by_side(cli):
    r = cli("bench", "index", "--peers", "--models", "40", "--queries", "5", "--genes", "16", "-k", "8",
            "--candidates", "8", "--backend", "exact", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["models"], res["queries"], res["backbone"]) == (40, 5, "nj")
    pl = res["placement"]
    assert pl["backbone_models"] == 35 and len(pl["ours_sparse"]["deltas"]) == 5
    assert pl["apples"] == "not installed" or pl["apples"]["placed"] + pl["apples"]["unplaced"] == 5
    assert res["full_builds"]["ours"]["seconds"] > 0
    human = cli("bench", "index", "--peers", "--models", "40", "--queries", "5", "--genes", "16", "-k", "8",
                "--candidates", "8", "--backend", "exact", "--backbone", "index", "--nj-max", "10")
    assert human.returncode == 0 and "delta error" in human.stdout and "not run" in human.stdout, human.stderr
    for bad in (("--peers", "--stream"), ("--peers", "--queries", "39"), ("--peers", "--backbone", "upgma")):
        b = cli("bench", "index", "--models", "40", *bad)
        assert b.returncode != 0 and "Traceback" not in b.stderr, bad


def _leaf_names(node: dict) -> list[str]:
    """The leaves of a tree in the JSON form (``{"name"}`` leaves, ``{"children"}`` inside)."""
    return [node["name"]] if "children" not in node else [n for c in node["children"] for n in _leaf_names(c)]


def test_tree_and_nearest_read_the_catalog(cli, tmp_path):
    eco = simulate(12, seed=5, n_genes=16)
    index = PhyloIndex("g" * 64, 32)
    path = tmp_path / "cat.duckdb"
    with Catalog(path, create=True) as cat:
        for i, m in enumerate(eco.ids):
            r = index.insert(m, eco.sample_counts(i, 32))
            cat.add_distances("g" * 64, m, eco.ids[:i], r.similarity, r.distance)
        cat.add_tree_snapshot("g" * 64, index.newick(), "incremental", "insert", len(eco.ids), eco.ids[-1])
    target = eco.ids[4]
    near = cli("nearest", target, "-k", "3", "--catalog", str(path), "--json")
    assert near.returncode == 0, near.stderr
    got = [row["model_id"] for row in json.loads(near.stdout)]
    assert got == [m for m, _ in index.nearest(target, 3)]
    tree = cli("tree", "--catalog", str(path))
    assert tree.returncode == 0, tree.stderr
    assert set(parse_newick(tree.stdout.strip()).leaf_node) == set(eco.ids)
    nj = cli("tree", "--method", "nj", "--format", "json", "--catalog", str(path))
    assert nj.returncode == 0, nj.stderr
    assert sorted(_leaf_names(json.loads(nj.stdout))) == sorted(eco.ids)
    ascii_ = cli("tree", "--format", "ascii", "--catalog", str(path))
    assert ascii_.returncode == 0 and all(m in ascii_.stdout for m in eco.ids)
    missing = cli("nearest", "nobody/none", "--catalog", str(path))
    assert missing.returncode == 2 and "no distances" in missing.stderr


def test_backfill_on_the_sparse_index_then_read_it(cli, tmp_path):
    """`backfill --index-mode sparse` through the real entry point: `distances` holds each
    model's k nearest, `nearest --exact` computes the full row and agrees with an exact
    catalog of the same models, the published tree has every model, and the catalog refuses
    to be continued in the other mode."""
    hub = tmp_path / "hub"
    assert cli("simulate", "--models", "24", "--seed", "6", "--genes", "16", "--samples", "16",
               "--out", str(hub)).returncode == 0
    job = ["--hub", str(hub), "--backend", "simulated", "--genes", "16", "--samples", "16"]
    r = cli("backfill", *job, "--catalog", "sparse.duckdb", "--index-mode", "sparse", "--index-k", "4")
    assert r.returncode == 0, r.stderr
    r = cli("backfill", *job, "--catalog", "exact.duckdb")
    assert r.returncode == 0, r.stderr

    def sql(catalog, query):
        res = cli("sql", "--catalog", catalog, "--json", query)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    n = sql("exact.duckdb", "select count(*) as n from models where status = 'indexed'")[0]["n"]
    assert n == 24
    pairs = sql("sparse.duckdb", "select count(*) as n from distance_pairs")[0]["n"]
    # each insert's 4 nearest and the earlier models whose 4 nearest it entered, not every pair
    assert sum(min(i, 4) for i in range(n)) <= pairs <= 2 * sum(min(i, 4) for i in range(n)) < n * (n - 1) // 2
    assert sql("exact.duckdb", "select count(*) as n from distance_pairs")[0]["n"] == n * (n - 1) // 2
    # so the sparse `distances` hold every model's 4 nearest now, the exact catalog's
    top4 = ("select model_a, model_b from (select model_a, model_b, row_number() over (partition by model_a "
            "order by distance, model_b) as r from distances) where r <= 4 order by model_a, model_b")
    assert sql("sparse.duckdb", top4) == sql("exact.duckdb", top4)
    model = sql("sparse.duckdb", "select id from models order by id limit 1")[0]["id"]
    got = json.loads(cli("nearest", model, "-k", "6", "--exact", "--catalog", "sparse.duckdb", "--json").stdout)
    want = json.loads(cli("nearest", model, "-k", "6", "--catalog", "exact.duckdb", "--json").stdout)
    assert [g["model_id"] for g in got] == [w["model_id"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["distance"] - w["distance"]) < 1e-9 and abs(g["similarity"] - w["similarity"]) < 1e-9
    tree = cli("tree", "--catalog", "sparse.duckdb")
    assert tree.returncode == 0 and parse_newick(tree.stdout.strip()).n_leaves == n
    # a fresh NJ of the sparse index joins the whole matrix computed from its alleles: the
    # same tree as NJ of the exact catalog's stored pairs (same alleles, same distances)
    nj = {c: cli("tree", "--method", "nj", "--catalog", c) for c in ("sparse.duckdb", "exact.duckdb")}
    assert all(r.returncode == 0 for r in nj.values()), nj["sparse.duckdb"].stderr
    assert robinson_foulds(*(parse_newick(r.stdout.strip()) for r in nj.values())) == 0
    refused = cli("tree", "--method", "nj", "--nj-max", "10", "--catalog", "sparse.duckdb")
    assert refused.returncode == 2 and "--nj-max 24" in refused.stderr and "Traceback" not in refused.stderr
    layout = {r["key"]: r["value"] for r in sql("sparse.duckdb", "select key, value from meta "
                                                                 "where key like 'index_%'")}
    assert (layout["index_mode"], layout["index_k"]) == ("sparse", "4")
    bad = cli("backfill", *job, "--catalog", "sparse.duckdb")
    assert bad.returncode == 2 and "sparse, k = 4" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_estimates_refresh_reports_its_figures(cli):
    """`bench estimates --refresh-at N`: the sparse mode's per-insert estimate refresh on a
    simulated index, through the real entry point (a small N: the figures are read, not timed)."""
    r = cli("bench", "estimates", "--refresh-at", "300", "--scored", "40", "--queries", "10", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["models"], res["queries"], res["scored_models"]) == (300, 10, 40)
    assert res["reference_models"] == 290  # every model outside the timed inserts: fewer than max_anchors
    assert 0 < res["refresh_ms"]["median"] <= res["refresh_ms"]["max"]
    assert res["max_abs_diff_vs_similarity_block"] < 1e-9  # the reference rows' distances are exact
    bad = cli("bench", "estimates", "--refresh-at", "300", "--queries", "300")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
