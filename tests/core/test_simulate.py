"""The simulated ecosystem and the `simulated` backend that probes its repositories."""
import json

import numpy as np
import pytest
import yaml

from indexer.adapters.genome_files import builtin
from indexer.adapters.probers.base import ModelSource, ProbeError, get_prober
from indexer.adapters.probers.simulated import write_repositories
from indexer.core.simulate import SHAPES, simulate
from indexer.core.tree import parse_newick, robinson_foulds
from schemas.records import ProbeParams, check_model_id


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_are_binary_trees_on_valid_model_ids(shape):
    eco = simulate(40, seed=1, n_genes=8, shape=shape)
    assert len(eco.ids) == len(set(eco.ids)) == 40
    assert all(check_model_id(m) for m in eco.ids)
    assert set(eco.truth.leaf_node) == set(eco.ids)
    internal = [v for v in range(eco.truth.n_nodes) if eco.truth.children[v]]
    assert all(len(eco.truth.children[v]) == 2 for v in internal)
    assert np.allclose(eco.probs.sum(axis=2), 1.0)


def test_deterministic_and_seed_dependent():
    a, b, c = simulate(30, seed=4, n_genes=8), simulate(30, seed=4, n_genes=8), simulate(30, seed=5, n_genes=8)
    assert a.ids == b.ids and np.array_equal(a.probs, b.probs)
    assert robinson_foulds(a.truth, b.truth) == 0.0
    assert not np.array_equal(a.probs, c.probs)
    assert a.sample_counts(3, 32, seed=9) == b.sample_counts(3, 32, seed=9)
    assert a.sample_counts(3, 32, seed=9) != a.sample_counts(3, 32, seed=10)


def test_upload_order_follows_the_tree():
    eco = simulate(80, seed=2, n_genes=4)
    created = dict(zip(eco.ids, eco.created_at))
    assert eco.created_at == sorted(eco.created_at)
    bases = [(m, b) for m, b in zip(eco.ids, eco.base_model) if b]
    assert bases, "some models declare a base model"
    for model, base in bases:
        assert created[base] < created[model]


def test_divergence_grows_with_tree_distance():
    eco = simulate(60, seed=3, n_genes=64)
    from indexer.core.distance import AlleleIndex
    index = AlleleIndex(n_samples=32)
    for i, m in enumerate(eco.ids):
        index.add(m, eco.sample_counts(i, 32))
    d = index.distance_matrix()
    path = eco.truth.path_distances(eco.ids)
    iu = np.triu_indices(60, 1)
    assert np.corrcoef(d[iu], path[iu])[0, 1] > 0.7


def test_repositories_look_like_hub_repos_and_probe_like_a_real_backend(tmp_path):
    eco = simulate(12, seed=6, n_genes=16)
    write_repositories(eco, tmp_path)
    truth = parse_newick((tmp_path / "truth.nwk").read_text())
    assert set(truth.leaf_node) == set(eco.ids) and robinson_foulds(truth, eco.truth) == 0.0
    child = next(i for i, b in enumerate(eco.base_model) if b)
    folder = tmp_path / eco.ids[child]
    assert json.loads((folder / "config.json").read_text())["model_type"] == "simulated"
    front = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert front["base_model"] == [eco.base_model[child]] and front["pipeline_tag"] == "text-generation"
    sidecar = json.loads((folder / ".hub.json").read_text())
    assert sidecar["author"] == eco.ids[child].split("/")[0]
    assert sidecar["created_at"] == eco.created_at[child].isoformat()

    prober = get_prober("simulated")
    genome = builtin("math").subset(16)
    params = ProbeParams(n_samples=32, seed=7)
    rec = prober.probe(ModelSource(eco.ids[child], path=folder), genome, params)
    assert rec.backend == "simulated" and rec.alleles.genome_hash == genome.hash
    assert all(sum(g.values()) == 32 for g in rec.alleles.counts)
    again = prober.probe(ModelSource(eco.ids[child], path=folder), genome, params)
    assert again.alleles.counts == rec.alleles.counts
    # the file stores probabilities to 8 digits: the same draws as the in-memory ecosystem
    assert rec.alleles.counts == eco.sample_counts(child, 32, seed=7)
    with pytest.raises(ProbeError, match="genes"):
        prober.probe(ModelSource(eco.ids[child], path=folder), builtin("math").subset(8), params)
    with pytest.raises(ProbeError, match="not a simulated repository"):
        prober.probe(ModelSource("x/y", path=tmp_path), genome, params)


def test_probed_ecosystem_has_real_like_diversity():
    from indexer.core.simulate import simulate_probes

    eco = simulate_probes(300, seed=5, n_genes=16)
    assert len(eco.ids) == 300 and set(eco.truth.leaf_node) == set(eco.ids)
    counts = eco.counts(17)
    assert len(counts) == 16 and all(sum(g.values()) == 32 for g in counts)
    # real probes show about 17 distinct alleles per gene at 32 samples
    assert 15.0 <= eco.distinct_alleles_per_gene() <= 19.5
    again = simulate_probes(300, seed=5, n_genes=16)
    assert again.counts(17) == counts and again.ids == eco.ids
