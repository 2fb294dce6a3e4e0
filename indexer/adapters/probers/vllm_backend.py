"""The ``vllm`` prober: one ``LLM(...)`` per model, one ``generate`` over the whole genome.

Every gene is a request with ``SamplingParams(n=N, temperature, top_p, max_tokens, seed)``
(the paper's parameters by default); vLLM batches all of them, shares each prompt's prefill
among its N samples, and decodes with paged attention. On GPUs each gene's request gets its
own seed, derived from the probe's seed and the gene's index; the CPU build crashes on
per-request seeds, so there the engine's seed alone makes a probe reproducible.

The engine runs in a worker process, one per model: the worker's exit releases every byte
of memory the engine held (GPU memory included) before the next model loads, which
in-process teardown of vLLM engines does not guarantee. The worker's interpreter is the
current one when it has vLLM, else ``PHYLOLM_VLLM_PYTHON`` (a separate virtual environment
holding vLLM and this project, as ``.ci/vllm-env.sh`` builds); the request and the answer
cross the pipe as JSON. ``python -m indexer.adapters.probers.vllm_backend`` is that worker.

Safety: the same repository policy as the transformers backend (safetensors only, no remote
code; ``checkpoint.check_repository``), and the engine loads with ``trust_remote_code=False`` and
``load_format="safetensors"``.

Cost: engine start (about 30 s on CPU, model load and warm-up included) plus one batched
generation of G*N sequences of ``max_tokens`` tokens.

A PEFT/LoRA adapter (``ModelSource.adapter``) is served by its base's engine: the engine
starts on the base with ``enable_lora=True`` and ``max_lora_rank`` the smallest rank vLLM
accepts that holds the adapter's ``r`` (``lora_rank``), and every gene's request carries a
``LoRARequest`` for the adapter folder (safetensors; ``checkpoint.check_adapter``). One worker
per probe still means one engine start per adapter: keeping a base's engine for all its
adapters is the many-models-per-engine step (issue #14, point 6), not done here. Run on the
vLLM CPU build (tests/adapters/probers/test_vllm.py), not yet on a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from indexer.core.alleles import count_alleles
from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError, gene_seed
from indexer.adapters.probers.checkpoint import check_adapter, check_repository, resolve_dtype
from schemas.records import AlleleCounts, ProbeParams

PYTHON_ENV = "PHYLOLM_VLLM_PYTHON"
_TAIL = 1500  # characters of a failed worker's stderr kept in the error


class VLLMProber(Prober):
    """Probe local safetensors snapshots with vLLM, one worker process per model.

    Options: ``python`` (worker interpreter; default: this one if it has vLLM, else
    ``$PHYLOLM_VLLM_PYTHON``), ``dtype`` (vLLM's, default "auto"), ``max_model_len``
    (genes are short: 1024 tokens), ``gpu_memory_utilization``, ``enforce_eager``,
    ``timeout`` (seconds for one model, engine start included), and ``engine`` (any further
    ``LLM(...)`` keyword arguments, JSON-serialisable).
    """

    backend = "vllm"

    def __init__(self, python: str | None = None, dtype: str = "auto", max_model_len: int = 1024,
                 gpu_memory_utilization: float = 0.85, enforce_eager: bool | None = None,
                 timeout: float = 1800.0, engine: dict[str, Any] | None = None):
        self.python = python or _default_python()
        self.engine = {"dtype": dtype, "max_model_len": max_model_len,
                       "gpu_memory_utilization": gpu_memory_utilization, **(engine or {})}
        if enforce_eager is not None:
            self.engine["enforce_eager"] = enforce_eager
        self.timeout = timeout
        self._version: str | None = None
        self.last_timings: dict[str, float] = {}  # engine start and generation of the last probe
        self.last_log = ""  # the last worker's log (vLLM writes it to stderr)

    def version(self) -> str:
        if self._version is None:
            try:
                out = subprocess.run([self.python, "-c", "import vllm, torch; print(f'vllm {vllm.__version__}; "
                                      "torch {torch.__version__}')"], capture_output=True, text=True, timeout=300)
            except OSError as e:
                raise ProbeError(f"vLLM interpreter {self.python!r} cannot run ({e})") from None
            if out.returncode != 0:
                raise ProbeError(f"vLLM is not importable by {self.python!r}: {_tail(out.stderr)}")
            self._version = out.stdout.strip().splitlines()[-1]
        return self._version

    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        if model.path is None:
            raise ProbeError(f"{model.model_id}: the vllm backend probes local snapshots; "
                             "download the repository first (ModelSource.path)")
        check_repository(Path(model.path))
        request = {"model": str(Path(model.path).resolve()), "genes": list(genome.genes),
                   "params": params.model_dump(mode="json"), "engine": self.engine}
        if model.adapter is not None:
            config = check_adapter(Path(model.adapter))
            request["lora"] = {"name": model.model_id, "path": str(Path(model.adapter).resolve()),
                               "rank": lora_rank(int(config["r"]))}
        try:
            done = _run_worker_group([self.python, "-m", "indexer.adapters.probers.vllm_backend"], json.dumps(request),
                                     self.timeout)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"{model.model_id}: vLLM worker ran past {self.timeout:.0f} s") from None
        except OSError as e:
            raise ProbeError(f"vLLM interpreter {self.python!r} cannot run ({e})") from None
        answer = _last_json_line(done.stdout)
        self.last_log = (done.stdout or "") + (done.stderr or "")
        if done.returncode != 0 or answer is None or "error" in answer:
            reason = (answer or {}).get("error") or _tail(done.stderr)
            cause = _root_cause(self.last_log)
            if cause:
                reason = f"{reason} [engine: {cause}]"
            raise ProbeError(f"{model.model_id}: vLLM worker failed: {reason}",
                             skip=bool((answer or {}).get("skip")))
        self._version = answer["version"]
        self.last_timings = answer.get("timings", {})
        counts = tuple({str(k): int(v) for k, v in c.items()} for c in answer["counts"])
        return AlleleCounts(genome_hash=genome.hash, n_samples=params.n_samples, counts=counts)


def _run_worker_group(cmd: list[str], stdin: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the worker in its own process group, so that a timeout or an interrupt ends the
    engine processes vLLM starts below it too (they would outlive a killed worker)."""
    import signal

    env = {**_worker_env(), PARENT_ENV: str(os.getpid())}  # see exit_with_parent
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


PARENT_ENV = "PHYLOLM_WORKER_PARENT"


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In the worker: end its whole process group (vLLM's engine processes included) as soon as
    the job that started it is gone — killed by SIGTERM or SIGKILL, which run no cleanup — so an
    engine never outlives its job holding a GPU. A daemon thread polls the parent's pid."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        if os.getpgrp() == os.getpid():  # the group is ours (started with start_new_session)
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _default_python() -> str:
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    env = os.environ.get(PYTHON_ENV)
    if env:
        return env
    raise ProbeError(f"vLLM is not installed here: pip install '.[vllm]' (GPU), or build the CPU "
                     f"environment with .ci/vllm-env.sh and set {PYTHON_ENV} to its python")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The worker must import this checkout's package, whichever environment runs it: the
    # checkout's root is three folders up (indexer/adapters/probers/).
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU: plenty for short genes
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _tail(text: str) -> str:
    return " ".join((text or "").strip().split())[-_TAIL:] or "no output"


def _root_cause(stderr: str) -> str:
    """The last error lines of a worker's log (vLLM's engine process logs its traceback
    there, while the front end only reports that the engine died)."""
    lines = [ln.strip() for ln in (stderr or "").splitlines()]
    hits = [ln for ln in lines if ("Error" in ln or "Exception" in ln or "Killed" in ln)
            and "EngineDeadError" not in ln and "Warning" not in ln]
    return " | ".join(hits[-3:])[-_TAIL:]


def _last_json_line(text: str) -> dict | None:
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# -- an OpenAI-compatible server on loopback ---------------------------------------------------
class VLLMServer:
    """``vllm serve`` for one local model on loopback, as a context manager.

    Starts the server with the vLLM interpreter (as ``VLLMProber`` finds it), waits until
    ``/v1/models`` answers (or the process dies, or ``startup_timeout`` passes), and stops it
    (SIGTERM, then SIGKILL) on exit. ``base_url`` is what ``OpenAIProber`` takes.
    """

    def __init__(self, model_path: Path | str, served_model_name: str, port: int | None = None,
                 python: str | None = None, max_model_len: int = 1024, startup_timeout: float = 600.0,
                 extra_args: tuple[str, ...] = ()):
        self.model_path, self.name = str(Path(model_path).resolve()), served_model_name
        self.port = port or _free_port()
        self.python = python or _default_python()
        self.max_model_len, self.startup_timeout, self.extra_args = max_model_len, startup_timeout, extra_args
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> "VLLMServer":
        import tempfile
        import urllib.request

        check_repository(Path(self.model_path))
        self._log = tempfile.TemporaryFile(mode="w+b")
        t0 = time.perf_counter()
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", str(self.max_model_len), "--load-format", "safetensors",
               "--uvicorn-log-level", "warning", *self._cpu_args(), *self.extra_args]
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=_worker_env(),
                                      start_new_session=True)
        while True:
            status = self._proc.poll()
            if status is not None:
                tail = self._read_log()
                self._proc = None
                self.__exit__(None, None, None)
                raise ProbeError(f"vllm serve exited with status {status}: {_tail(tail)}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > self.startup_timeout:
                self.__exit__(None, None, None)
                raise ProbeError(f"vllm serve did not answer within {self.startup_timeout:.0f} s")
            time.sleep(1.0)
        self.startup_seconds = time.perf_counter() - t0
        return self

    def _cpu_args(self) -> list[str]:
        """On a CPU build, the in-process prober's engine settings (``cpu_engine_settings``) as
        command-line flags, unless ``extra_args`` sets them."""
        probe = subprocess.run([self.python, "-c", "import torch; print(torch.cuda.is_available())"],
                               capture_output=True, text=True, timeout=120, env=_worker_env())
        if probe.stdout.strip() != "False":
            return []
        settings = cpu_engine_settings({})
        given = " ".join(self.extra_args)
        return ((["--enforce-eager"] if settings["enforce_eager"] and "--enforce-eager" not in given else [])
                + (["--dtype", settings["dtype"]] if "--dtype" not in given else []))

    def __exit__(self, *exc) -> None:
        import signal

        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_engine_settings(engine: dict) -> dict:
    """``engine`` (``LLM(...)`` keyword arguments) as a CPU build runs it: eager mode (graph
    compilation costs minutes at engine start and gains little for 5-token generations; eager
    starts in about 30 s) and fp32 where bf16 would be emulated (many times slower)."""
    engine = dict(engine)
    engine.setdefault("enforce_eager", True)
    engine.pop("gpu_memory_utilization", None)
    if engine.get("dtype", "auto") == "auto":
        engine["dtype"] = resolve_dtype("auto", "cpu")
    return engine


# The values vLLM's LoRAConfig accepts for max_lora_rank (its ``MaxLoRARanks``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(r: int) -> int:
    """The ``max_lora_rank`` an engine needs for an adapter of rank ``r``: the smallest value
    vLLM accepts that is at least ``r``; ``ProbeError(skip)`` above vLLM's largest."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ProbeError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]})", skip=True)


# -- the worker (runs in the vLLM interpreter) ------------------------------------------------
def run_worker(request: dict) -> dict:
    """Load one model, sample every gene, return allele counts per gene (as JSON)."""
    import vllm
    import torch
    from vllm import LLM, SamplingParams

    params = ProbeParams(**request["params"])
    genes: list[str] = request["genes"]
    engine = dict(request.get("engine") or {})
    if not torch.cuda.is_available():
        engine = cpu_engine_settings(engine)
    lora = request.get("lora")
    lora_request = None
    if lora:  # the base's engine serves the adapter (vLLM loads adapter_model.safetensors)
        from vllm.lora.request import LoRARequest

        engine.update(enable_lora=True, max_lora_rank=int(lora["rank"]), max_loras=1)
        lora_request = LoRARequest(str(lora["name"]), 1, str(lora["path"]))
    t0 = time.perf_counter()
    llm = LLM(model=request["model"], trust_remote_code=False, load_format="safetensors",
              seed=params.seed, **engine)
    t1 = time.perf_counter()
    # Per-request seeds crash the CPU build's sampler ("CPU Generator does not use offset"):
    # on CPU the engine's seed (LLM(seed=...)) alone makes a probe reproducible.
    per_gene_seed = torch.cuda.is_available()
    sampling = [SamplingParams(n=params.n_samples, temperature=params.temperature, top_p=params.top_p,
                               top_k=-1 if _top_k_needs_minus_one() else 0, max_tokens=params.max_tokens,
                               seed=gene_seed(params.seed, g) if per_gene_seed else None,
                               skip_special_tokens=True)
                for g in range(len(genes))]
    outputs = llm.generate(genes, sampling, use_tqdm=False, lora_request=lora_request)
    t2 = time.perf_counter()
    by_prompt = [count_alleles(c.text for c in out.outputs) for out in outputs]
    return {"version": f"vllm {vllm.__version__}; torch {torch.__version__}", "counts": by_prompt,
            "timings": {"engine_start_seconds": t1 - t0, "generate_seconds": t2 - t1}}


def _top_k_needs_minus_one() -> bool:
    """vLLM disables top-k with -1 in older releases and 0 in newer ones; both mean "off"."""
    import inspect

    from vllm import SamplingParams

    try:
        default = inspect.signature(SamplingParams).parameters["top_k"].default
    except (KeyError, TypeError, ValueError):
        default = getattr(SamplingParams(), "top_k", 0)
    return default == -1


def _main() -> int:
    if os.environ.get(PARENT_ENV, "").isdigit():
        exit_with_parent(int(os.environ[PARENT_ENV]))
    try:
        request = json.loads(sys.stdin.read())
        answer = run_worker(request)
    except Exception as e:  # the parent turns this into a ProbeError with the reason
        print(json.dumps({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:1000]}"}), flush=True)
        return 1
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
