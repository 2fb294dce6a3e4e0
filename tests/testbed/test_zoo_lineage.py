"""Lineage recovered from real models: probe every zoo model with the transformers backend at
the paper's genome size (the 128 genes of the built-in ``math`` genome, N=32), as the
pipeline probes them (the LoRA adapter on its base with peft, the GGUF re-upload from its
file, the exact copy not at all: the index gives it its twin's alleles), compute Nei
distances, and check each relation the zoo's true lineage implies
(``indexer.testbed.zoo_relations``): nearest neighbours are kin, the undeclared copies pair
with their originals, each upload of the mix lands beside its true parent, the fine-tune of
a fine-tune is nearer its parent, the out-group is farther than the family's root, the
lineage check's verdicts on the cards, and the cherries of the NJ tree.

Uncertainty: a relation is asserted only where a gene bootstrap (200 replicates, genes drawn
with replacement) supports it in at least ``SUPPORT`` of the replicates, and it must hold on
the data as probed. The margins measured against the noise floor (two probes of one model
with different seeds) are in docs/zoo.md; the margins and support this run measured are
printed (``-s``) and kept in ``artifacts/zoo_relations_seed<S>.json``.

The probe seed comes from ``PHYLOLM_ZOO_PROBE_SEED`` (default 0), so the test can be run with
other seeds: ``PHYLOLM_ZOO_PROBE_SEED=1 pytest tests/testbed/test_zoo_lineage.py``. Probes are cached
on disk (``<cache>/probes``, keyed by model, revision = the model's zoo key, genome,
parameters with the seed, and backend): the first run on a machine pays for them (ten
probes x about 25 s on 2 CPU cores); adding a zoo model costs only its own probe.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
# The first test pays for the module's probes (ten models at 128 x 32 on a cold cache, 4-8 min
# on an idle 2-core machine, several times that on a loaded one): more than the suite's
# per-test limit allows a hung engine.
pytestmark = pytest.mark.timeout(3600)

from indexer.core.distance import AlleleIndex, distance_from_similarity  # noqa: E402
from indexer.adapters.genome_files import builtin  # noqa: E402
from indexer.adapters.probers.base import ModelSource  # noqa: E402
from indexer.adapters.probers.cache import ProbeCache, probe_cached  # noqa: E402
from indexer.adapters.probers.transformers_backend import TransformersProber  # noqa: E402
from indexer.core.tree.nj import neighbor_joining  # noqa: E402
from indexer.testbed.zoo import GEMMA, ZOO, ZooModel, default_cache, zoo_ids  # noqa: E402
from indexer.testbed.zoo_relations import bootstrap_support, relations  # noqa: E402
from schemas.records import ProbeParams  # noqa: E402
from tests.helpers import ROOT  # noqa: E402
from tests.helpers.zoo import zoo_revision  # noqa: E402

GENES = 128
SEED = int(os.environ.get("PHYLOLM_ZOO_PROBE_SEED", "0"))
PARAMS = ProbeParams(seed=SEED)  # the paper's: N=32, temperature 0.7, top_p 1, 5 tokens
SUPPORT = 0.95  # bootstrap support a relation needs before it is asserted
REPLICATES = 200
ARTIFACTS = ROOT / "artifacts"


def _source(zoo_dir, spec: ZooModel) -> ModelSource:
    """What the pipeline probes for a zoo model: its snapshot; an adapter on its base's
    snapshot (peft); a GGUF re-upload from its one GGUF file."""
    rev = zoo_revision(zoo_dir, spec.id)
    if spec.make == "lora":
        base = spec.parents[0]
        return ModelSource(spec.id, rev, zoo_dir / base, adapter=zoo_dir / spec.id,
                           base=f"{base}@{zoo_revision(zoo_dir, base)}")
    if spec.make == "to_gguf":
        return ModelSource(spec.id, rev, zoo_dir / spec.id, gguf_file=spec.weights_file)
    return ModelSource(spec.id, rev, zoo_dir / spec.id)


@pytest.fixture(scope="module")
def zoo_index(zoo_dir):
    genome = builtin("math")
    assert len(genome.genes) == GENES
    cache = ProbeCache(default_cache() / "probes")
    index = AlleleIndex(n_genes=GENES, n_samples=PARAMS.n_samples)
    specs, counts = {m.id: m for m in ZOO}, {}
    with TransformersProber(device="cpu", dtype="float32") as prober:
        for mid in zoo_ids():
            spec = specs[mid]
            if spec.make == "copy":
                # As the index records an exact copy: its twin's alleles, never probed.
                index.add(mid, counts[spec.parents[0]])
                continue
            record, _ = probe_cached(prober, _source(zoo_dir, spec), genome, PARAMS, cache)
            assert record.genome_hash == genome.hash and record.alleles.n_genes == GENES
            assert record.params.seed == SEED
            index.add(mid, record.alleles.counts)
            counts[mid] = record.alleles.counts
    return index


@pytest.fixture(scope="module")
def evaluated(zoo_index):
    ids = zoo_index.ids
    D = zoo_index.distance_matrix()
    found = {r.name: r for r in relations(D, ids, neighbor_joining)}
    support = bootstrap_support(
        lambda w: distance_from_similarity(zoo_index.similarity_with_gene_weights(w)), ids, GENES,
        REPLICATES, seed=SEED, tree_builder=neighbor_joining)
    # What was measured is kept (and printed with -s): the margin of every relation and its
    # bootstrap support, for this seed.
    report = [{"relation": r.name, "holds": r.holds, "margin": r.margin, "support": support[r.name],
               "detail": r.detail} for r in found.values()]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"zoo_relations_seed{SEED}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nzoo relations at {GENES} genes x {PARAMS.n_samples} samples, probe seed {SEED}:")
    for row in report:
        m = "" if row["margin"] is None else f"margin {row['margin']:+.3f}  "
        print(f"  {row['relation']:75s} {m}support {row['support']:.3f}  ({row['detail']})")
    return found, support


def _check(evaluated, prefix: str) -> None:
    found, support = evaluated
    chosen = [r for name, r in found.items() if name.startswith(prefix)]
    assert chosen, f"no relation named {prefix}*"
    for r in chosen:
        assert r.holds, f"{r.name} does not hold: {r.detail}"
        assert support[r.name] >= SUPPORT, (f"{r.name}: bootstrap support {support[r.name]:.3f} < {SUPPORT} "
                                            f"({r.detail})")


@pytest.mark.parametrize("prefix", [
    "nearest-is-kin:", "copy-pairs-with-original:", "nearer-parent-than-grandparent:",
    "outgroup-farther-than-root", "clade:"])
def test_the_phylogeny_recovers_the_true_lineage(evaluated, prefix):
    _check(evaluated, prefix)


@pytest.mark.parametrize("prefix", ["declared-base-confirmed:", "false-claim-flagged:", "undeclared-copy-found:",
                                    "true-parent-found:"])
def test_the_lineage_check_reads_the_cards_right(evaluated, prefix):
    _check(evaluated, prefix)


@pytest.mark.parametrize("make", ["lora", "to_gguf", "copy"])
def test_each_upload_of_the_mix_lands_beside_its_true_parent(evaluated, make):
    """The adapter (probed on its base), the GGUF re-upload (probed from its file) and the
    exact copy (its twin's alleles): each one's nearest is its true parent, the parent's
    copies and descendants aside (``beside-true-parent``); margins in docs/zoo.md."""
    spec = next(m for m in ZOO if m.make == make)
    _check(evaluated, f"beside-true-parent:{spec.id}")


def test_the_lineage_checker_gives_the_verdicts_the_relations_promise(zoo_index):
    """The relations mirror ``check_lineage``'s rules; check the real checker agrees."""
    from indexer.core.lineage import check_lineage

    ids = zoo_index.ids
    declared = {m.id: m.declared_base for m in ZOO}
    created = {m.id: m.created_at for m in ZOO}
    from indexer.testbed.zoo_relations import copies, exact_copies

    # the exact copy as the index knows it: from the Hub's hashes
    findings = check_lineage(zoo_index.distance_matrix(), ids, declared, created, copies=exact_copies())
    kinds = {(f.kind, f.model_id, f.other_id) for f in findings}
    for m in ZOO:
        for base in m.declared_base:
            want = "confirmed" if base in m.parents else "suspicious"
            assert (want, m.id, base) in kinds, f"{m.id} -> {base}: expected {want}, got {sorted(kinds)}"
    near_copy = next(m for m in ZOO if m.make == "quantize")
    assert ("undeclared", near_copy.id, near_copy.parents[0]) in kinds
    for copy, twin in exact_copies().items():  # named as a copy (not again as undeclared)
        assert ("exact_copy", copy, twin) in kinds and ("undeclared", copy, twin) not in kinds
    # The liar is tied to its true parent by an undeclared finding, the parent or a re-upload
    # of it (a near-copy stands for its original, as in ``zoo_relations.kin``): the Q8_0
    # GGUF of the parent sits within the probe's noise of it (0.187 against 0.190 from the
    # liar in one cold run, 0.183 against 0.175 in another), and the checker names the later
    # upload of a close pair as the child, so the pair may come either way round.
    liar = next(m for m in ZOO if m.planted and m.declared_base)
    parent = liar.parents[0]
    family = {parent} | {c for c, orig in copies().items() if orig == parent}
    tied = {(a, b) for kind, a, b in kinds if kind == "undeclared"}
    assert any((liar.id, p) in tied or (p, liar.id) in tied for p in family), (family, sorted(tied))


def test_gemma_hangs_on_the_longest_edge(zoo_index):
    ids = zoo_index.ids
    tree = neighbor_joining(zoo_index.distance_matrix(), ids)
    lengths = {tree.label[v]: tree.length[v] for v in range(tree.n_nodes) if tree.is_leaf(v)}
    assert lengths[GEMMA] == max(lengths.values())
    assert lengths[GEMMA] > 1.5 * max(v for k, v in lengths.items() if k != GEMMA)
    assert np.isfinite(list(lengths.values())).all()
