"""Built-in genomes: size, length rule, stable hashes, provenance; user genomes from JSONL."""
import json

import pytest

from indexer.adapters import genome_files
from indexer.core import genomes


@pytest.mark.parametrize("name", genome_files.BUILTIN)
def test_builtin_genomes(name):
    g = genome_files.builtin(name)
    assert len(g) == 128
    assert all(20 <= len(t) <= 99 for t in g.genes)
    assert len(set(g.genes)) == 128
    assert g.license and g.source
    assert g.hash == genomes.genome_hash(g.genes) and len(g.hash) == 64


def test_math_genes_come_from_the_paper_pool(shared_anchors):
    pool = set(json.loads((shared_anchors / "phylolm" / "math_params_genes_4096.json").read_text()))
    assert set(genome_files.builtin("math").genes) <= pool


def test_code_genome_spans_languages():
    import importlib.resources as r
    lines = r.files("indexer").joinpath("data/genomes/code.jsonl").read_text().splitlines()[1:]
    langs = {json.loads(line)["language"] for line in lines}
    assert len(langs) >= 4


def test_hash_depends_on_order_and_boundaries():
    assert genomes.genome_hash(["ab", "c"]) != genomes.genome_hash(["a", "bc"])
    assert genomes.genome_hash(["a", "b"]) != genomes.genome_hash(["b", "a"])


def test_user_genome_from_jsonl(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"genome": "mine", "license": "CC0"}\n{"text": "Once upon"}\n\n{"text": "def f("}\n')
    g = genome_files.load(str(f))
    assert g.genes == ("Once upon", "def f(") and g.name == "mine" and g.license == "CC0"
    assert g.subset(1).genes == ("Once upon",) and g.subset(1).hash != g.hash


@pytest.mark.parametrize("body, msg", [
    ('{"text": 3}\n', "string field"),
    ('not json\n', "not JSON"),
    ('', "no genes"),
])
def test_bad_user_genome(tmp_path, body, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text(body)
    with pytest.raises(genomes.GenomeError, match=msg):
        genome_files.load(str(f))


def test_unknown_genome_name():
    with pytest.raises(genomes.GenomeError, match="no genome named"):
        genome_files.load("physics")
