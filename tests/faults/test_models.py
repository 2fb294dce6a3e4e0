"""Model faults: real repositories that are broken or hostile, served by the project's Hub
endpoint and met by a real `phylolm watch --once` with the transformers backend.

The models are tiny randomly initialised Llama models built here with ``transformers`` (one
layer, hidden size 32) and a byte-level BPE tokenizer trained here with ``tokenizers``, saved
as safetensors: real weights, real loading, real sampling, in seconds on a CPU. Each fault is
made for real: files missing, truncated or overwritten with noise, a pickle checkpoint whose
unpickling would write a marker file, a repository whose code would write a marker file if it
were ever imported, NaN weights that make sampling raise partway through a probe, and so on.

For every fault the watch goes on (the good model uploaded last is indexed), the faulty model
ends ``skipped`` (refused by policy) or ``failed`` with a reason, the catalog stays
consistent, a second watch changes nothing, and no marker file exists.
"""
from __future__ import annotations

import json
import pickle
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.catalog_checks import assert_consistent, listing, query, statuses, table_counts

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
GENES = 3
BUDGET_GB = 0.001  # 1 MB of weights: the tiny models fit, the "large" one does not


# ---- building real tiny models -------------------------------------------------------------

def _tokenizer(dest: Path):
    """A byte-level BPE tokenizer trained on the genome's first genes (vocabulary 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from indexer.adapters import genome_files as genomes

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(genomes.load("math").subset(8).genes), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(dest)
    return fast


def _llama(dest: Path, tokenizer, *, seed: int, hidden: int = 32) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def _card(folder: Path, repo_id: str, created_at: datetime) -> None:
    (folder / "README.md").write_text(
        f"---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n\n# {repo_id}\n")
    (folder / ".hub.json").write_text(json.dumps({"created_at": created_at.isoformat()}))


class _Evil:
    """Unpickling this writes the marker file: proof that a pickle was (never) loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _edit_tensors(folder: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _no_weights(d: Path, marker: Path) -> None:
    (d / "model.safetensors").unlink()


def _missing_shard(d: Path, marker: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    save_file({k: tensors[k] for k in keys[:half]}, str(d / "model-00001-of-00002.safetensors"),
              metadata={"format": "pt"})  # shard 2 of 2 was never uploaded
    shard = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shard}))


def _missing_tensor(d: Path, marker: Path) -> None:
    _edit_tensors(d, lambda t: t.pop("model.norm.weight"))


def _truncated(d: Path, marker: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _noise(d: Path, marker: Path) -> None:
    (d / "model.safetensors").write_bytes(np.random.default_rng(7).bytes(20_000))


def _pickle_only(d: Path, marker: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(marker)))


def _remote_code(d: Path, marker: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="evil", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (d / "config.json").write_text(json.dumps(config))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
    (d / "modeling_evil.py").write_text(code)
    (d / "configuration_evil.py").write_text(code)


def _remote_tokenizer(d: Path, marker: Path) -> None:
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "tokenization_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n")


def _unknown_arch(d: Path, marker: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (d / "config.json").write_text(json.dumps(config))


def _broken_tokenizer(d: Path, marker: Path) -> None:
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Frobnicate"}}))


def _nan_weights(d: Path, marker: Path) -> None:
    # Loads fine; the first forward pass gives NaN logits and sampling raises mid-probe.
    _edit_tensors(d, lambda t: t.__setitem__("model.norm.weight", np.full_like(t["model.norm.weight"], np.nan)))


def _wrong_shape(d: Path, marker: Path) -> None:
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.weight", np.zeros((7, 5), np.float32)))


def _pickle_beside_safetensors(d: Path, marker: Path) -> None:
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(marker)))


# (repo id, how it is broken, expected status, words the reason must contain)
FAULTS = [
    ("bad/no-weights", _no_weights, "skipped", "no safetensors"),
    ("bad/missing-shard", _missing_shard, "failed", "model-00002-of-00002"),
    ("bad/missing-tensor", _missing_tensor, "failed", "lacks 1 tensor"),
    ("bad/truncated", _truncated, "failed", "SafetensorError"),
    ("bad/noise-safetensors", _noise, "failed", "SafetensorError"),
    ("bad/pickle-only", _pickle_only, "skipped", "pickle-only"),
    ("bad/remote-code", _remote_code, "skipped", "remote code"),
    ("bad/remote-tokenizer", _remote_tokenizer, "skipped", "remote code"),
    ("bad/unknown-arch", _unknown_arch, "skipped", "frobnicator"),
    ("bad/broken-tokenizer", _broken_tokenizer, "failed", "cannot load"),
    ("bad/too-large", None, "skipped", "too large"),
    ("bad/nan-weights", _nan_weights, "failed", "multinomial"),
    ("bad/wrong-shape", _wrong_shape, "failed", "mismatch"),
    ("good/pickle-beside-safetensors", _pickle_beside_safetensors, "indexed", None),
]
GOOD = ["good/alpha", "good/omega"]  # first and last upload: the watch must reach the last one


@pytest.fixture(scope="module")
def faulty_models(tmp_path_factory) -> dict:
    """Built once: a hub folder with every faulty repository between two good ones, and the
    same faulty snapshots as plain folders for the backend-level checks."""
    root = tmp_path_factory.mktemp("models")
    marker = root / "MARKER-code-or-pickle-ran"
    base = root / "base"
    tokenizer = _tokenizer(base)
    _llama(base, tokenizer, seed=0)
    hub = root / "hub"
    folders = {}

    def publish(repo_id: str, folder: Path, i: int) -> None:
        dest = hub / repo_id
        shutil.copytree(folder, dest)
        _card(dest, repo_id, T0 + timedelta(minutes=i))
        folders[repo_id] = dest

    publish(GOOD[0], base, 0)
    for i, (repo_id, fault, _, _) in enumerate(FAULTS, 1):
        work = root / "work" / repo_id
        if fault is None:  # too large: a wider model, 3 MB of weights
            _llama(work, tokenizer, seed=5, hidden=256)
        else:
            shutil.copytree(base, work)
            fault(work, marker)
        publish(repo_id, work, i)
    _llama(root / "work" / GOOD[1], tokenizer, seed=1)
    publish(GOOD[1], root / "work" / GOOD[1], len(FAULTS) + 1)
    return {"hub": hub, "marker": marker, "folders": folders, "root": root}


def _watch_once(faulty_models: dict, tmp_path: Path):
    env = {"PHYLOLM_CACHE_DIR": str(tmp_path / "cache"), "PHYLOLM_MAX_WEIGHTS_GB": str(BUDGET_GB),
           "PHYLOLM_DEVICE": "cpu"}
    return run_cli("watch", "--once", "--hub", str(faulty_models["hub"]), "--catalog", str(tmp_path / "c.duckdb"),
                   "--backend", "transformers", "--genes", str(GENES), "--samples", "4",
                   "--first-window", "200000", cwd=tmp_path, env=env)  # uploads dated 2024


def test_watch_survives_every_model_fault(faulty_models, tmp_path):
    first = _watch_once(faulty_models, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    catalog = tmp_path / "c.duckdb"
    got = statuses(catalog)
    assert set(got) == {r for r, *_ in FAULTS} | set(GOOD)  # every model has a record
    for repo_id, _, status, words in FAULTS:
        st, reason = got[repo_id]
        assert st == status, (repo_id, st, reason)
        if words:
            assert reason and words.lower() in reason.lower(), (repo_id, reason)
    for repo_id in GOOD:
        assert got[repo_id] == ("indexed", None)
    n_indexed = len(GOOD) + sum(s == "indexed" for _, _, s, _ in FAULTS)
    assert_consistent(catalog, n_indexed)

    # Nothing a repository shipped was run: no code imported, no pickle loaded, none downloaded.
    assert not faulty_models["marker"].exists()
    cache = tmp_path / "cache"
    downloaded = [p for p in cache.rglob("*") if p.is_file()]
    assert downloaded and not [p for p in downloaded if p.suffix in (".py", ".bin", ".pkl", ".pt")]
    payloads = (b"remote code ran", pickle.dumps(_Evil(faulty_models["marker"])))
    assert not [p for p in downloaded if any(x in p.read_bytes() for x in payloads)]
    mixed = {p.name for p in cache.glob("models/models--good--pickle-beside-safetensors/snapshots/*/*")}
    assert "model.safetensors" in mixed and "pytorch_model.bin" not in mixed, mixed
    # The model over budget was skipped from metadata: nothing of it was fetched.
    assert not [p for p in cache.rglob("*") if "too-large" in str(p)]
    assert not [p for p in cache.rglob("*") if "remote-code" in str(p) or "pickle-only" in str(p)]

    # Later watches retry only the failures (a failure may be transient), up to MAX_ATTEMPTS
    # per revision, then nothing: final statuses are not retried, nothing is doubled.
    from indexer.adapters.catalog import MAX_ATTEMPTS

    def data_rows() -> dict[str, int]:
        # the polls table records each run by design: one row more per watch, nothing else
        counts = table_counts(catalog)
        return {t: n for t, n in counts.items() if t != "polls"}, counts.get("polls", 0)

    before, polls = data_rows()
    failed = sorted(r for r, (st, _) in got.items() if st == "failed")
    assert failed
    for attempt in range(2, MAX_ATTEMPTS + 2):
        again = _watch_once(faulty_models, tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "indexed " not in again.stdout, again.stdout
        retried = sorted(line.split()[1] for line in again.stdout.splitlines() if line.startswith("failed "))
        assert retried == (failed if attempt <= MAX_ATTEMPTS else []), (attempt, again.stdout)
        now, polls_now = data_rows()
        assert now == before and statuses(catalog) == got
        assert polls_now == polls + attempt - 1
    attempts = dict(query(catalog, "select id, attempts from models where status = 'failed'"))
    assert attempts == {r: MAX_ATTEMPTS for r in failed}
    assert not faulty_models["marker"].exists()


# ---- the backend alone, without the Hub's screen in front of it ------------------------------

@pytest.mark.parametrize("repo_id, words", [
    ("bad/pickle-only", "pickle-only"),
    ("bad/remote-code", "remote code"),
    ("bad/remote-tokenizer", "remote code"),
    ("bad/unknown-arch", "unknown"),
])
def test_backend_refuses_unsafe_snapshots_itself(faulty_models, repo_id, words):
    """Defence in depth: handed the full snapshot (code and pickle included, as if the screen
    had let it through), the transformers backend refuses it before loading anything."""
    from indexer.adapters import genome_files as genomes
    from indexer.adapters.probers.base import ModelSource, ProbeError
    from indexer.adapters.probers.transformers_backend import TransformersProber
    from schemas.records import ProbeParams

    folder = faulty_models["folders"][repo_id]
    assert any(p.suffix in (".py", ".bin") for p in folder.iterdir()) or repo_id == "bad/unknown-arch"
    before = listing(folder)
    with TransformersProber(device="cpu") as prober, pytest.raises(ProbeError) as err:
        prober.probe(ModelSource(repo_id, "main", folder), genomes.load("math").subset(GENES), ProbeParams(n_samples=2))
    assert err.value.skip and words in str(err.value)
    assert not faulty_models["marker"].exists() and listing(folder) == before


def test_backend_refuses_a_checkpoint_missing_tensors(faulty_models, tmp_path):
    """transformers only reports missing tensors and initialises them at random: probing that
    would index a model nobody uploaded. The backend must refuse it."""
    from indexer.adapters import genome_files as genomes
    from indexer.adapters.probers.base import ModelSource, ProbeError
    from indexer.adapters.probers.transformers_backend import TransformersProber
    from schemas.records import ProbeParams

    folder = tmp_path / "missing-tensor"
    shutil.copytree(faulty_models["folders"][GOOD[0]], folder)
    _edit_tensors(folder, lambda t: t.pop("model.norm.weight"))
    with TransformersProber(device="cpu") as prober, pytest.raises(ProbeError) as err:
        prober.probe(ModelSource("bad/missing-tensor", "main", folder), genomes.load("math").subset(GENES),
                     ProbeParams(n_samples=2))
    assert "model.norm.weight" in str(err.value) and not err.value.skip


# ---- the simulated backend meeting a corrupt repository -------------------------------------

def test_simulated_backend_crash_is_recorded(tmp_path):
    hub = tmp_path / "hub"
    r = run_cli("simulate", "--models", "4", "--seed", "2", "--genes", "8", "--samples", "8", "--out", str(hub))
    assert r.returncode == 0, r.stderr
    repos = sorted((p for p in hub.glob("*/*") if p.is_dir()),
                   key=lambda p: json.loads((p / ".hub.json").read_text())["created_at"])
    torn = repos[1] / "alleles.json"
    torn.write_text(torn.read_text()[:200])  # cut off mid-file
    doc = json.loads((repos[2] / "alleles.json").read_text())
    doc["genes"][3]["p"] = [float("nan")] * len(doc["genes"][3]["p"])
    (repos[2] / "alleles.json").write_text(json.dumps(doc))  # NaN probabilities (as json.dumps writes them)
    catalog = tmp_path / "c.duckdb"
    r = run_cli("backfill", "--hub", str(hub), "--catalog", str(catalog), "--backend", "simulated", "--genes", "8",
                "--samples", "8", cwd=tmp_path, env={"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    got = statuses(catalog)
    ids = [f"{p.parent.name}/{p.name}" for p in repos]
    assert got[ids[1]][0] == "failed" and "unreadable" in got[ids[1]][1]
    assert got[ids[2]][0] == "failed" and "invalid probabilities" in got[ids[2]][1]
    assert got[ids[0]][0] == got[ids[3]][0] == "indexed"
    assert_consistent(catalog, 2)


def test_engine_that_cannot_start_stops_the_job_and_loses_nothing(tmp_path):
    """A backend that cannot start (here an OpenAI-compatible endpoint configured with a
    non-HTTP URL) is the job's fault, not the models': the job stops with one clear error and
    records nothing, and the next run with a working backend indexes every model."""
    hub = tmp_path / "hub"
    assert run_cli("simulate", "--models", "3", "--seed", "6", "--genes", "8", "--samples", "8",
                   "--out", str(hub)).returncode == 0
    catalog = tmp_path / "c.duckdb"
    args = ["backfill", "--hub", str(hub), "--catalog", str(catalog), "--genes", "8", "--samples", "8"]
    env = {"PHYLOLM_CACHE_DIR": str(tmp_path / "cache")}
    broken = run_cli(*args, "--backend", "openai", cwd=tmp_path, env={**env, "OPENAI_BASE_URL": "ftp://nowhere"})
    assert broken.returncode != 0
    last = broken.stderr.strip().splitlines()[-1]
    assert last.startswith("error: backend 'openai' cannot start") and "base_url" in last, last
    assert not catalog.exists() or not [s for s, _ in statuses(catalog).values() if s in ("failed", "skipped")]
    fixed = run_cli(*args, "--backend", "simulated", cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert_consistent(catalog, 3)
