"""Lineage recovered from real models: probe every zoo model with the transformers backend,
compute Nei distances, build the neighbour-joining tree, and check that it says what the
zoo's recipe says.

Genome: the first 64 genes of the built-in ``math`` genome at the paper's N=32 (half the
paper's G, to keep the default test run short; the lineage is still recovered, with a
margin, at this size). Probes are cached on disk (``<cache>/probes``, keyed by model,
revision = the zoo's recipe hash, genome, parameters and backend), so only the first run on
a machine pays for them (about 8 x 15-40 s on 2 CPU cores).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from indexer.distance import distance_from_similarity, nei_similarity  # noqa: E402
from indexer.genomes import builtin  # noqa: E402
from indexer.probers.base import ModelSource  # noqa: E402
from indexer.probers.cache import ProbeCache, probe_cached  # noqa: E402
from indexer.probers.transformers_backend import TransformersProber  # noqa: E402
from indexer.tree.compare import is_monophyletic  # noqa: E402
from indexer.tree.nj import neighbor_joining  # noqa: E402
from indexer.zoo import GEMMA, SMOLLM2, ZOO, default_cache, zoo_ids  # noqa: E402
from schemas.records import ProbeParams  # noqa: E402
from tests.zoo_models import zoo_dir, zoo_revision  # noqa: E402,F401

GENES = 64
PARAMS = ProbeParams()  # the paper's: N=32, temperature 0.7, top_p 1, 5 tokens, seed 0


@pytest.fixture(scope="module")
def zoo_distances(zoo_dir):
    genome = builtin("math").subset(GENES)
    cache = ProbeCache(default_cache() / "probes")
    revision = zoo_revision(zoo_dir)
    ids = zoo_ids()
    counts = {}
    with TransformersProber(device="cpu", dtype="float32") as prober:
        for mid in ids:
            record, _ = probe_cached(prober, ModelSource(mid, revision, zoo_dir / mid), genome, PARAMS, cache)
            assert record.genome_hash == genome.hash and record.alleles.n_genes == GENES
            counts[mid] = record.alleles.counts
    n = len(ids)
    s = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            s[i, j] = s[j, i] = nei_similarity(counts[ids[i]], counts[ids[j]], PARAMS.n_samples)
    return ids, distance_from_similarity(s)


def _relatives() -> dict[str, set[str]]:
    """Direct relatives in the true genealogy: parents and children."""
    rel: dict[str, set[str]] = {m.id: set() for m in ZOO}
    for m in ZOO:
        for p in m.parents:
            rel[m.id].add(p)
            rel[p].add(m.id)
    return rel


def test_every_models_nearest_neighbour_is_a_direct_relative(zoo_distances):
    """Each fine-tune lands beside its parent (or its own child / its merge), the merge
    beside one of its parents, the quantised copy beside its original and back."""
    ids, d = zoo_distances
    rel = _relatives()
    masked = d + np.diag(np.full(len(ids), np.inf))
    for i, mid in enumerate(ids):
        if mid == GEMMA:
            continue
        nearest = ids[int(np.argmin(masked[i]))]
        assert nearest in rel[mid], f"{mid}: nearest is {nearest}, relatives are {sorted(rel[mid])}"
    q, base = ids.index("zoo/SmolLM2-135M-Instruct-int8"), ids.index(SMOLLM2)
    assert ids[int(np.argmin(masked[q]))] == SMOLLM2 and ids[int(np.argmin(masked[base]))] == ids[q]
    # the fine-tune of a fine-tune is nearer its parent than its grandparent
    ftft, ft = ids.index("zoo/smollm2-ft-poetry-shanties"), ids.index("zoo/smollm2-ft-poetry")
    assert d[ftft, ft] < d[ftft, base]
    # the merge is nearer each of its parents than the other fine-tunes are to them
    merge, rec = ids.index("zoo/smollm2-merge-poetry-recipes"), ids.index("zoo/smollm2-ft-recipes")
    assert d[merge, ft] < d[ft, rec] and d[merge, rec] < d[ft, rec]


def test_gemma_is_outside_the_smollm2_clade(zoo_distances):
    ids, d = zoo_distances
    g = ids.index(GEMMA)
    smol = [i for i in range(len(ids)) if i != g]
    within = d[np.ix_(smol, smol)].max()
    assert d[g, smol].min() > within, "gemma is nearer some SmolLM2 model than SmolLM2 models are to each other"
    assert d[g, smol].min() > 2 * within  # by a wide margin: another family


def _cherry_partner(tree, name: str) -> str | None:
    """The other leaf of ``name``'s cherry, if it is in one."""
    for partner in tree.leaf_names:
        if partner != name and is_monophyletic(tree, [name, partner]):
            return partner
    return None


def test_neighbour_joining_tree_recovers_the_lineage(zoo_distances):
    ids, d = zoo_distances
    tree = neighbor_joining(d, ids)
    assert sorted(tree.leaf_names) == sorted(ids)
    # gemma hangs on an edge far longer than any other: another family, the natural root
    lengths = {tree.label[v]: tree.length[v] for v in range(tree.n_nodes) if tree.is_leaf(v)}
    others = [lengths[m] for m in ids if m != GEMMA]
    assert lengths[GEMMA] > 3 * max(others)
    # Within the SmolLM2 clade (the tree rooted on the out-group, i.e. without it):
    smol = [m for m in ids if m != GEMMA]
    keep = [ids.index(m) for m in smol]
    clade = neighbor_joining(d[np.ix_(keep, keep)], smol)
    # the quantised re-upload and its original form a cherry, the chess fine-tune beside them
    assert _cherry_partner(clade, SMOLLM2) == "zoo/SmolLM2-135M-Instruct-int8"
    assert is_monophyletic(clade, [SMOLLM2, "zoo/SmolLM2-135M-Instruct-int8", "zoo/smollm2-ft-chess"])
    # the fine-tune of a fine-tune beside its parent
    assert _cherry_partner(clade, "zoo/smollm2-ft-poetry-shanties") == "zoo/smollm2-ft-poetry"
    # the merge beside one of its parents
    assert _cherry_partner(clade, "zoo/smollm2-merge-poetry-recipes") in ("zoo/smollm2-ft-poetry",
                                                                           "zoo/smollm2-ft-recipes")
