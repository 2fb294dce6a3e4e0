"""The transformers prober: repository policy, and the fast sampler against the naive one.

The sampler tests run on the zoo's real SmolLM2-135M-Instruct (a few genes, so they take
seconds); the policy tests use hand-made repositories that are refused before anything of
theirs is read as code or pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from indexer.core.alleles import allele_of  # noqa: E402
from indexer.adapters.genome_files import builtin  # noqa: E402
from indexer.adapters.probers.base import ModelSource, ProbeError, get_prober  # noqa: E402
from indexer.adapters.probers.checkpoint import check_repository  # noqa: E402
from indexer.adapters.probers.transformers_backend import (  # noqa: E402
    TransformersProber,
    _allele_is_final,
    _draw,
    naive_sample_alleles,
)
from schemas.records import ProbeParams  # noqa: E402
from tests.helpers.zoo import zoo_revision  # noqa: E402

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 2, "vocab_size": 32}


# -- policy --------------------------------------------------------------------------------------
def _repo(tmp_path: Path, config: dict | None, files: dict[str, bytes]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    if config is not None:
        (repo / "config.json").write_text(json.dumps(config))
    for name, data in files.items():
        (repo / name).write_bytes(data)
    # Code that would leave a mark if anything imported it.
    marker = tmp_path / "EXECUTED"
    (repo / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    return repo


@pytest.mark.parametrize("config, files, words", [
    (LLAMA_CONFIG, {"pytorch_model.bin": b"\x80\x04not really a pickle"}, "pickle-only"),
    (LLAMA_CONFIG, {}, "no safetensors"),
    ({**LLAMA_CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_evil.Evil"}},
     {"model.safetensors": b"{}"}, "remote code"),
    ({**LLAMA_CONFIG, "model_type": "evil-arch"}, {"model.safetensors": b"{}"}, "unknown"),
    ({**LLAMA_CONFIG, "model_type": "resnet"}, {"model.safetensors": b"{}"}, "no causal language model"),
    (None, {"model.safetensors": b"{}"}, "no config.json"),
])
def test_unsafe_or_unusable_repositories_are_refused_before_loading(tmp_path, config, files, words):
    repo = _repo(tmp_path, config, files)
    with pytest.raises(ProbeError) as err:
        check_repository(repo)
    assert err.value.skip and words in str(err.value)
    # And through the prober, as a pipeline would call it.
    with TransformersProber(device="cpu") as prober, pytest.raises(ProbeError) as err2:
        prober.probe(ModelSource("bad/repo", "main", repo), builtin("math").subset(2), ProbeParams(n_samples=2))
    assert err2.value.skip
    assert not (tmp_path / "EXECUTED").exists()


def test_tokenizer_remote_code_is_refused(tmp_path):
    repo = _repo(tmp_path, LLAMA_CONFIG, {"model.safetensors": b"{}"})
    (repo / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}))
    with pytest.raises(ProbeError, match="remote code") as err:
        check_repository(repo)
    assert err.value.skip


def test_probe_needs_a_local_snapshot():
    with TransformersProber(device="cpu") as prober, pytest.raises(ProbeError, match="local snapshot"):
        prober.probe(ModelSource("someone/model"), builtin("math").subset(1), ProbeParams())


def test_registry_builds_the_transformers_prober():
    from importlib.metadata import version as installed

    prober = get_prober("transformers", device="cpu", genes_per_batch=4)
    assert isinstance(prober, TransformersProber) and prober.backend == "transformers" and prober.device == "cpu"
    # Recorded with every probe: the engine's and torch's installed versions, and the dtype.
    assert prober.version() == f"transformers {installed('transformers')}; torch {installed('torch')}; {prober.dtype_name}"
    assert prober.dtype_name in ("float32", "bfloat16")  # "auto" on a CPU


# -- sampling pieces -----------------------------------------------------------------------------
def test_allele_finality_waits_for_whole_characters():
    assert not _allele_is_final(" \nab")
    assert _allele_is_final(" \nabcd")
    assert not _allele_is_final("ab\ufffd")  # a multi-byte character still arriving
    assert _allele_is_final("abcde\ufffd")  # the cut character lies past the allele


def test_draw_follows_the_tempered_distribution_and_nucleus():
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    drawn = _draw(logits, [n], ProbeParams(temperature=0.7), gen)[0]
    freq = np.bincount(drawn, minlength=4) / n
    expected = torch.softmax(logits[0] / 0.7, -1).numpy()
    assert np.abs(freq - expected).max() < 0.01
    # top_p 0.8: the smallest prefix of the sorted distribution reaching 0.8 (tokens 0 and 1)
    drawn = _draw(logits, [n], ProbeParams(temperature=0.7, top_p=0.8), gen)[0]
    assert set(drawn) == {0, 1}
    # counts per row: each row gets exactly its count
    rows = _draw(torch.zeros(3, 5), [1, 7, 3], ProbeParams(), gen)
    assert [len(r) for r in rows] == [1, 7, 3]


# -- the fast sampler on a real model ------------------------------------------------------------
@pytest.fixture(scope="module")
def smol(zoo_dir):
    prober = TransformersProber(device="cpu", dtype="float32")
    source = ModelSource(SMOL, zoo_revision(zoo_dir, SMOL), zoo_dir / SMOL)
    lm, tok = prober.load(source)
    yield prober, source, lm, tok
    prober.close()


def test_probe_record_counts_and_determinism(smol):
    prober, source, _, _ = smol
    genome = builtin("math").subset(6)
    params = ProbeParams(n_samples=16, seed=3)
    rec = prober.probe(source, genome, params)
    assert rec.backend == "transformers" and rec.genome_hash == genome.hash and rec.params == params
    assert "float32" in rec.backend_version
    assert rec.alleles.n_genes == 6
    for c in rec.alleles.counts:
        assert sum(c.values()) == 16 and all(len(a) <= 4 for a in c)
    again = prober.probe(source, genome, params)
    assert again.alleles.counts == rec.alleles.counts  # same seed, same alleles
    other = prober.probe(source, genome, ProbeParams(n_samples=16, seed=4))
    assert other.alleles.counts != rec.alleles.counts


def test_batching_does_not_change_what_is_sampled(smol, zoo_dir):
    """Genes are regrouped by length; each gene's counts stay attached to that gene."""
    _, source, _, _ = smol
    genome = builtin("math").subset(6)
    params = ProbeParams(n_samples=64, seed=0)
    one = TransformersProber(device="cpu", dtype="float32", genes_per_batch=1).generate(source, genome, params)
    six = TransformersProber(device="cpu", dtype="float32", genes_per_batch=6).generate(source, genome, params)
    # Different random streams, same distribution: each gene's modal allele agrees
    # wherever it clearly dominates.
    for a, b in zip(one.counts, six.counts):
        top_a = max(a, key=a.get)
        if a[top_a] >= 40:
            assert b.get(top_a, 0) >= 20


def _chi2_homogeneity(a: dict[str, int], b: dict[str, int]) -> tuple[float, int]:
    """Chi-squared statistic and degrees of freedom of a 2 x k table, alleles with small
    expected counts pooled into one cell (so the chi-squared approximation holds)."""
    na, nb = sum(a.values()), sum(b.values())
    keys = sorted(set(a) | set(b))
    big, rest_a, rest_b = [], 0, 0
    for k in keys:
        total = a.get(k, 0) + b.get(k, 0)
        if total * min(na, nb) / (na + nb) >= 5:
            big.append((a.get(k, 0), b.get(k, 0)))
        else:
            rest_a, rest_b = rest_a + a.get(k, 0), rest_b + b.get(k, 0)
    if rest_a + rest_b:
        big.append((rest_a, rest_b))
    if len(big) < 2:
        return 0.0, 0
    stat = 0.0
    for ca, cb in big:
        t = ca + cb
        for c, n in ((ca, na), (cb, nb)):
            e = t * n / (na + nb)
            stat += (c - e) ** 2 / e
    return stat, len(big) - 1


def _combined_p(tables: list[tuple[float, int]]) -> float:
    from scipy.stats import chi2

    stat = sum(s for s, _ in tables)
    dof = sum(d for _, d in tables)
    return float(chi2.sf(stat, dof)) if dof else 1.0


def test_fast_sampler_matches_naive_generate(smol):
    """The prefix-tree sampler with early stop draws alleles from the same distribution as
    ``generate(num_return_sequences=N, top_k=0)``: a chi-squared homogeneity test over
    several genes does not reject, while the same test does reject a sampler at another
    temperature (so it has the power to notice a wrong sampler)."""
    prober, source, lm, tok = smol
    genome = builtin("math").subset(4)
    n = 128
    fast = prober.generate(source, genome, ProbeParams(n_samples=n, seed=11)).counts
    naive = [naive_sample_alleles(lm, tok, g, ProbeParams(n_samples=n), seed=100 + i)
             for i, g in enumerate(genome.genes)]
    p_same = _combined_p([_chi2_homogeneity(a, b) for a, b in zip(fast, naive)])
    assert p_same > 1e-3, (p_same, fast, naive)
    hot = prober.generate(source, genome, ProbeParams(n_samples=n, seed=12, temperature=1.4)).counts
    p_hot = _combined_p([_chi2_homogeneity(a, b) for a, b in zip(hot, naive)])
    assert p_hot < 1e-3, p_hot
    # allele diversity is the naive sampler's too
    distinct_fast = np.mean([len(c) for c in fast])
    distinct_naive = np.mean([len(c) for c in naive])
    assert abs(distinct_fast - distinct_naive) <= 0.35 * max(distinct_fast, distinct_naive)


def test_naive_reference_alleles_are_the_paper_definition(smol):
    _, _, lm, tok = smol
    counts = naive_sample_alleles(lm, tok, "The derivative of x^2 is", ProbeParams(n_samples=8), seed=0)
    assert sum(counts.values()) == 8
    assert all(a == allele_of(a) for a in counts)


def test_missing_tensor_is_refused(smol, zoo_dir, tmp_path):
    """A checkpoint that lacks a tensor would be filled with random values by transformers."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "torn"
    shutil.copytree(zoo_dir / SMOL, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with TransformersProber(device="cpu") as prober, pytest.raises(ProbeError, match="lacks 1 tensor"):
        prober.probe(ModelSource("bad/torn", "main", folder), builtin("math").subset(1), ProbeParams(n_samples=2))
