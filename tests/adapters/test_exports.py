"""The standard exports, each checked by its own tool's rules: the Auspice v2 dataset against
Auspice's JSON schema (augur's schema-export-v2.json, tests/data/auspice), the Taxonium JSONL
against taxoniumtools' own converter when it is installed (and its structure always), the
Newick by re-parsing it, and the Parquet tables by reading them."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from indexer.adapters.publish.auspice import auspice_json, taxonium_jsonl
from indexer.adapters.publish.explorer import explorer_data
from indexer.core.tree.newick import parse_newick
from tests.helpers.publish_world import IDS, UNSCORED, publish_world

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "auspice"


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return publish_world(tmp_path_factory.mktemp("exports"))


def auspice_validator():
    """A validator of Auspice v2 datasets: augur's schema with the schemas it refers to by id."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT6

    docs = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("schema-*.json"))]
    registry = referencing.Registry().with_resources(
        (d["$id"], referencing.Resource.from_contents(d, default_specification=DRAFT6)) for d in docs)
    main = next(d for d in docs if d["$id"] == "https://nextstrain.org/schemas/dataset/v2")
    return jsonschema.Draft6Validator(main, registry=registry)


def _leaves(node, out):
    stack = [node]
    while stack:
        n = stack.pop()
        if "children" in n:
            stack.extend(n["children"])
        else:
            out.append(n)
    return out


def test_auspice_export_is_a_valid_auspice_v2_dataset(pub):
    doc = json.loads((pub / "auspice.json").read_text())
    errors = sorted(auspice_validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    leaves = _leaves(doc["tree"], [])
    assert sorted(n["name"] for n in leaves) == sorted(IDS)
    keys = {c["key"] for c in doc["meta"]["colorings"]}
    assert {"family", "author", "relation", "lineage", "score_arc", "score_mmlu"} <= keys
    solo = next(n for n in leaves if n["name"] == "beta/code")
    assert solo["node_attrs"]["lineage"] == {"value": "suspicious"}
    assert solo["node_attrs"]["url"].endswith("/beta/code")
    divs = [n["node_attrs"]["div"] for n in leaves]
    assert min(divs) > 0


def test_the_validator_catches_a_broken_dataset(pub):
    doc = json.loads((pub / "auspice.json").read_text())
    del doc["meta"]["updated"]
    doc["tree"]["node_attrs"] = {"family": "not an object"}
    assert len(list(auspice_validator().iter_errors(doc))) >= 2


def test_auspice_export_of_a_deep_tree_needs_no_recursion(tmp_path):
    n = 3000  # a ladder: deeper than Python's recursion limit
    newick = "(" * (n - 1) + "m/0," + ",".join(f"m/{i}:0.1)" for i in range(1, n)) + ";"
    tree = parse_newick(newick)
    data = explorer_data(tree, [{"id": f"m/{i}", "author": "m"} for i in range(n)])
    text = auspice_json(data, updated="2025-01-01")
    assert text.count('"name":"m/') == n
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(4 * n + 100)
    try:
        assert len(_leaves(json.loads(text)["tree"], [])) == n
    finally:
        sys.setrecursionlimit(old)


def _taxonium(path: Path) -> tuple[dict, list[dict]]:
    with gzip.open(path, "rt") as f:
        lines = [json.loads(x) for x in f]
    return lines[0], lines[1:]


def test_taxonium_export_has_taxoniums_structure(pub):
    header, nodes = _taxonium(pub / "tree.jsonl.gz")
    assert header["total_nodes"] == len(nodes) and header["config"]["num_tips"] == len(IDS)
    assert [n["node_id"] for n in nodes] == list(range(len(nodes)))
    ys = [n["y"] for n in nodes]
    assert ys == sorted(ys)  # taxonium streams nodes sorted on y
    roots = [n for n in nodes if n["parent_id"] == n["node_id"]]
    assert len(roots) == 1 and roots[0]["x_dist"] == 0
    by_id = {n["node_id"]: n for n in nodes}
    for n in nodes:
        assert n["parent_id"] in by_id and by_id[n["parent_id"]]["x_dist"] <= n["x_dist"]
        assert n["is_tip"] == (n["num_tips"] == 1 and n["name"] != "")
    tips = {n["name"]: n for n in nodes if n["is_tip"]}
    assert sorted(tips) == sorted(IDS)
    assert tips["beta/code"]["meta_lineage"] == "suspicious"
    assert {f"meta_{k}" for k in ("family", "author", "relation", "lineage")} <= set(tips["acme/base"])


def test_taxonium_export_matches_taxoniumtools(pub, tmp_path):
    """taxoniumtools' own newick_to_taxonium on the exported tree.nwk and a metadata table,
    compared with our file: the same tips with the same clades and the same metadata."""
    pytest.importorskip("taxoniumtools", reason="taxoniumtools not installed (pip install taxoniumtools)")
    header, ours = _taxonium(pub / "tree.jsonl.gz")
    meta = tmp_path / "meta.tsv"
    cols = [k[5:] for k in ours[0] if k.startswith("meta_")]
    tips = [n for n in ours if n["is_tip"]]
    meta.write_text("strain\t" + "\t".join(cols) + "\n" + "".join(
        n["name"] + "\t" + "\t".join(str(n[f"meta_{c}"]) for c in cols) + "\n" for n in tips))
    # their converter reads the Newick from the root we drew from: our tree, rooted, as Newick
    newick = tmp_path / "rooted.nwk"
    newick.write_text(_newick_of(ours))
    out = tmp_path / "theirs.jsonl.gz"
    r = subprocess.run([sys.executable, "-m", "taxoniumtools.newick_to_taxonium", "-i", str(newick), "-o", str(out),
                        "-m", str(meta), "-c", ",".join(cols)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        r = subprocess.run([sys.executable, "-c", "from taxoniumtools.newick_to_taxonium import main; main()",
                            "-i", str(newick), "-o", str(out), "-m", str(meta), "-c", ",".join(cols)],
                           capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _, theirs = _taxonium(out)
    assert len(theirs) == len(ours)
    assert _clades(theirs) == _clades(ours)
    t_tips = {n["name"]: n for n in theirs if n["is_tip"]}
    for n in tips:
        for c in cols:
            assert str(t_tips[n["name"]][f"meta_{c}"]) == str(n[f"meta_{c}"]), (n["name"], c)
        assert abs(t_tips[n["name"]]["x_dist"] - n["x_dist"]) < 1e-3 * max(1.0, n["x_dist"])
    assert set(theirs[0]) <= set(ours[0]) | {"clades"}


def _newick_of(nodes: list[dict]) -> str:
    kids: dict[int, list[dict]] = {}
    root = None
    for n in nodes:
        if n["parent_id"] == n["node_id"]:
            root = n
        else:
            kids.setdefault(n["parent_id"], []).append(n)

    def text(n, parent_x):  # shallow test trees: recursion is fine here
        length = n["x_dist"] - parent_x
        name = n["name"].replace("'", "''")
        body = f"'{name}'" if n["is_tip"] else "(" + ",".join(text(c, n["x_dist"]) for c in kids[n["node_id"]]) + ")"
        return f"{body}:{length:.6f}"
    return text(root, 0.0).rsplit(":", 1)[0] + ";"


def _clades(nodes: list[dict]) -> set[frozenset]:
    by_id = {n["node_id"]: n for n in nodes}
    below: dict[int, set] = {}
    for n in nodes:
        if n["is_tip"]:
            v = n
            while True:
                below.setdefault(v["node_id"], set()).add(n["name"].strip("'"))
                if v["parent_id"] == v["node_id"]:
                    break
                v = by_id[v["parent_id"]]
    return {frozenset(s) for s in below.values()}


def test_newick_keeps_quoted_ids_and_the_parquet_tables_read(pub):
    tree = parse_newick((pub / "tree.nwk").read_text())
    assert sorted(tree.leaf_names) == sorted(IDS)
    models = pq.read_table(pub / "models.parquet")
    assert sorted(models.column("id").to_pylist()) == sorted(IDS)
    scores = pq.read_table(pub / "scores.parquet")
    assert set(scores.column("model_id").to_pylist()) == set(IDS) - UNSCORED
    lineage = pq.read_table(pub / "lineage.parquet").to_pylist()
    assert any(f["kind"] == "suspicious" and f["model_id"] == "beta/code" for f in lineage)
    est = pq.read_table(pub / "estimates.parquet")
    assert set(est.column("model_id").to_pylist()) == UNSCORED
    assert pq.read_table(pub / "distances.parquet").num_rows == len(IDS) * (len(IDS) - 1)
