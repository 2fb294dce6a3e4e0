"""The ``vllm`` prober: one ``generate`` over the whole genome, many models per engine.

Every gene is a request with ``SamplingParams(n=N, temperature, top_p, max_tokens, seed)``
(the paper's parameters by default); vLLM batches all of them, shares each prompt's prefill
among its N samples, and decodes with paged attention. On GPUs each gene's request gets its
own seed, derived from the probe's seed and the gene's index; the CPU build crashes on
per-request seeds, so there the probe's seed is set as the engine's random state right
before its ``generate`` (what a fresh ``LLM(seed=...)`` starts from), which makes a probe
reproducible whether its engine is fresh or has served other models.

The engine runs in a worker process (``python -m indexer.adapters.probers.vllm_backend``,
JSON lines over pipes) that one ``VLLMProber`` keeps across ``probe`` calls until
``close``: starting an engine costs tens of seconds and dominates a probe on a GPU, so with
``reuse_engine`` (the default) one engine serves every model it can:

- a full checkpoint whose **engine key** matches the running engine's (``engine_key``: the
  config apart from its name, the generation config, the tokenizer files, the names, shapes
  and dtypes of the safetensors tensors, and the engine settings) has its weights reloaded
  in place from its folder (vLLM's ``reload_weights``), then the prefix cache is reset;
- a PEFT/LoRA adapter is served on its base's engine (the base's weights swapped back in if
  another model's are loaded) with a ``LoRARequest`` of its own id. An engine started
  without LoRA (or with a smaller ``max_lora_rank``) is restarted once with it; full models
  then run on that engine too (with no LoRA request, its outputs are the plain engine's:
  bit-identical on the CPU build);
- anything else (another key, a vLLM without in-place reload, a reload that fails) gets a
  fresh worker and engine: the old worker's exit releases every byte the engine held (GPU
  memory included), which in-process teardown of vLLM engines does not guarantee.

How each probe's engine was had ("fresh engine", "weights swapped", "running engine",
"adapter on running engine"...) is logged, kept in ``last_engine`` and written into the
record's backend version ("; engine: ..."). It does not enter the probe key, and need not:
the tensors loaded in place are those a fresh load of the same folder gives (the key makes
sure of the same tensor names), the random state is reset per probe, and on the CPU build a
swapped-in fine-tune's alleles equal a fresh engine's exactly (tests/adapters/probers/
test_vllm.py). ``reuse_engine=False`` gives the one-engine-per-model behaviour (a worker per
probe). In-place reload is used where this vLLM has it (``Worker.reload_weights``) and, on
CPU, where the engine runs in the worker's own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
set by default there) so that the random state can be reset.

The worker's interpreter is the current one when it has vLLM, else ``PHYLOLM_VLLM_PYTHON``
(a separate virtual environment holding vLLM and this project, as ``.ci/vllm-env.sh``
builds).

Safety: the same repository policy as the transformers backend (safetensors only, no remote
code; ``checkpoint.check_repository``), and the engine loads with ``trust_remote_code=False`` and
``load_format="safetensors"``; an adapter must pass ``checkpoint.check_adapter``.

Cost: a fresh worker and engine is 25-60 s on CPU (interpreter start, vLLM's import, model
load); a weight swap of a 135M model about 2 s; then one batched generation of G*N sequences of
``max_tokens`` tokens. Measured on the vLLM CPU build only (``phylolm bench probe --by-kind``,
docs/vllm.md); not on a GPU.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from indexer.core.alleles import count_alleles
from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError, gene_seed
from indexer.adapters.probers.checkpoint import check_adapter, check_repository, resolve_dtype
from schemas.records import AlleleCounts, ProbeParams

PYTHON_ENV = "PHYLOLM_VLLM_PYTHON"
_TAIL = 1500  # characters of a failed worker's stderr kept in the error
_LOG_LINES = 4000  # lines of the worker's log kept (vLLM logs a few dozen per engine start)
log = logging.getLogger("phylolm")

# How a probe's engine was had (``VLLMProber.last_engine``; "; engine: ..." in the record).
FRESH, SWAPPED, RUNNING = "fresh engine", "weights swapped", "running engine"
ADAPTER_FRESH = "adapter on fresh engine"
ADAPTER_RUNNING = "adapter on running engine"
ADAPTER_SWAPPED = "adapter on running engine, base weights swapped in"


class VLLMProber(Prober):
    """Probe local safetensors snapshots with vLLM in a worker process kept across probes.

    Options: ``python`` (worker interpreter; default: this one if it has vLLM, else
    ``$PHYLOLM_VLLM_PYTHON``), ``dtype`` (vLLM's, default "auto"), ``max_model_len``
    (genes are short: 1024 tokens), ``gpu_memory_utilization``, ``enforce_eager``,
    ``timeout`` (seconds for one model, engine start included), ``reuse_engine`` (keep the
    engine across models and swap weights in place where the key matches; default on; off:
    a fresh worker and engine per model), and ``engine`` (any further ``LLM(...)`` keyword
    arguments, JSON-serialisable). ``engine_starts`` counts the engines started, as the
    workers report them; ``last_engine`` says how the last probe's engine was had.
    """

    backend = "vllm"

    def __init__(self, python: str | None = None, dtype: str = "auto", max_model_len: int = 1024,
                 gpu_memory_utilization: float = 0.85, enforce_eager: bool | None = None,
                 timeout: float = 1800.0, reuse_engine: bool | str = True, engine: dict[str, Any] | None = None):
        self.python = python or _default_python()
        self.engine = {"dtype": dtype, "max_model_len": max_model_len,
                       "gpu_memory_utilization": gpu_memory_utilization, **(engine or {})}
        if enforce_eager is not None:
            self.engine["enforce_eager"] = enforce_eager
        self.timeout = timeout
        self.reuse_engine = _flag(reuse_engine, "reuse_engine")
        self._version: str | None = None
        self._worker: _WorkerProcess | None = None
        self.engine_starts = 0  # engines started by this prober's workers, as they report it
        self.last_engine = ""  # how the last probe's engine was had (FRESH, SWAPPED, ...)
        self.last_timings: dict[str, float] = {}  # engine start / swap and generation of the last probe
        self.last_log = ""  # the worker's log lines of the last probe (vLLM writes them to stderr)

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

    def probe_note(self) -> str:
        return f"; engine: {self.last_engine}" if self.last_engine else ""

    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        if model.path is None:
            raise ProbeError(f"{model.model_id}: the vllm backend probes local snapshots; "
                             "download the repository first (ModelSource.path)")
        self.last_engine = ""
        check_repository(Path(model.path))
        path = str(Path(model.path).resolve())
        request: dict[str, Any] = {"model": path, "genes": list(genome.genes),
                                   "params": params.model_dump(mode="json"), "engine": self.engine}
        rank = None
        if model.adapter is not None:
            config = check_adapter(Path(model.adapter))
            rank = lora_rank(int(config["r"]))
            request["lora"] = {"name": model.model_id, "path": str(Path(model.adapter).resolve()), "rank": rank}
        key = engine_key(Path(path), self.engine)
        try:
            answer = self._serve(model.model_id, key, rank, request)
        finally:
            if not self.reuse_engine:
                self.close()
        self._version = answer["version"]
        self.last_timings = answer.get("timings", {})
        self.last_engine = answer["engine"]
        log.info("vllm: %s on %s (%s)", model.model_id, self.last_engine,
                 ", ".join(f"{k} {v:.1f}" for k, v in self.last_timings.items()))
        counts = tuple({str(k): int(v) for k, v in c.items()} for c in answer["counts"])
        return AlleleCounts(genome_hash=genome.hash, n_samples=params.n_samples, counts=counts)

    def _serve(self, model_id: str, key: str, rank: int | None, request: dict) -> dict:
        """The worker's answer to ``request``, on the running worker where it can serve it, else
        on a fresh one; a failed in-place reload is retried once on a fresh worker."""
        why = self._restart_reason(key, rank, request["model"])
        if why:
            log.info("vllm: a fresh engine for %s (%s)", model_id, why)
            self.close()
        fresh = self._worker is None
        answer = self._ask(model_id, key, rank, request)
        if "error" in answer and answer.get("swap_failed") and not fresh:
            log.warning("vllm: in-place weight reload failed for %s (%s); a fresh engine", model_id, answer["error"])
            self.close()
            answer = self._ask(model_id, key, rank, request)
        if "error" in answer:
            self.close()  # the engine's state after a failure is unknown: the next model gets a fresh one
            reason, cause = answer["error"], _root_cause(self.last_log)
            if cause:
                reason = f"{reason} [engine: {cause}]"
            raise ProbeError(f"{model_id}: vLLM worker failed: {reason}", skip=bool(answer.get("skip")))
        return answer

    def _restart_reason(self, key: str, rank: int | None, path: str) -> str | None:
        """Why the running worker cannot serve a model of engine key ``key`` (adapter rank
        ``rank``) from ``path``, or None when it can (or none runs)."""
        w = self._worker
        if w is None:
            return None
        if not w.alive():
            return "the previous worker has ended"
        if w.key != key:
            return "another engine key: architecture, tokenizer or engine settings differ"
        if rank is not None and (w.lora_rank or 0) < rank:
            return f"an adapter of max_lora_rank {rank} on an engine started with " + (
                f"max_lora_rank {w.lora_rank}" if w.lora_rank else "no LoRA")
        if w.loaded != path and not w.can_swap:
            return "this vLLM cannot reload weights in place here"
        return None

    def _ask(self, model_id: str, key: str, rank: int | None, request: dict) -> dict:
        if self._worker is None:
            self._worker = _WorkerProcess([self.python, "-m", "indexer.adapters.probers.vllm_backend"],
                                          key=key, lora_rank=rank)
        w = self._worker
        mark = w.log_mark()
        try:
            answer = w.ask({**request, "lora_rank": w.lora_rank}, self.timeout)
        except OSError as e:
            self.close()
            raise ProbeError(f"vLLM interpreter {self.python!r} cannot run ({e})") from None
        finally:
            self.last_log = w.log_since(mark)
        if answer is None:
            timed_out = w.alive()
            self.close()
            if timed_out:
                raise ProbeError(f"{model_id}: vLLM worker ran past {self.timeout:.0f} s")
            cause = _root_cause(self.last_log)
            raise ProbeError(f"{model_id}: vLLM worker failed: it ended without an answer"
                             + (f" [engine: {cause}]" if cause else f": {_tail(self.last_log)}"))
        self.engine_starts += int(answer.get("started", 0))
        if "error" not in answer:
            w.loaded = request["model"]
        w.can_swap = bool(answer.get("can_swap", False))
        return answer

    def close(self) -> None:
        """End the worker (and its engine); the next probe starts a fresh one. Cost: up to 30 s
        for the engine to exit before it is killed."""
        w, self._worker = self._worker, None
        if w is not None:
            w.stop()


def _flag(value: bool | str, name: str) -> bool:
    """A boolean option given as a bool or as text (settings, command-line options)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: {value!r} is not true or false")


# -- what must match for a weight swap ---------------------------------------------------------
# Keys of config files that say where and how a file was loaded, not what the model is.
_LOADER_KEYS = frozenset({"_name_or_path", "name_or_path", "transformers_version", "_commit_hash",
                          "local_files_only", "is_local", "cache_dir", "_from_model_config"})
# Tokenizer files compared byte for byte (tokenizer_config.json is compared as JSON, above keys aside).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json",
                    "added_tokens.json")
_MAX_HEADER = 100 << 20  # bytes of a safetensors JSON header read at most


def engine_key(path: Path, engine: dict) -> str:
    """The engine key of a checkpoint folder under ``engine`` settings: two checkpoints with the
    same key load into one engine, the second by an in-place weight reload.

    Hashes ``config.json`` and ``generation_config.json`` (without the keys that only say where
    they were loaded from), the tokenizer files (``tokenizer_config.json`` likewise as JSON),
    the names, dtypes and shapes of the tensors in the root-level ``*.safetensors`` (read from
    their headers: the same names mean an in-place reload sets every tensor a fresh load
    sets), and the engine settings. Reads JSON and file headers only; O(tokenizer bytes).
    """
    h = hashlib.sha256()

    def add(label: str, blob: bytes) -> None:
        h.update(label.encode() + b"\0" + hashlib.sha256(blob).digest())

    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            try:
                doc = json.loads(f.read_text("utf-8"))
            except (ValueError, UnicodeDecodeError):
                doc = f.read_bytes().hex()  # compared as bytes; the policy checks refuse bad configs
            if isinstance(doc, dict):
                doc = {k: v for k, v in doc.items() if k not in _LOADER_KEYS}
            add(name, json.dumps(doc, sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        f = path / name
        if f.is_file():
            add(name, f.read_bytes())
    tensors: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(_tensor_layout(f))
    add("tensors", json.dumps(tensors, sort_keys=True).encode())
    add("engine", json.dumps(engine, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _tensor_layout(f: Path) -> dict[str, Any]:
    """{tensor name: [dtype, shape]} from a safetensors file's header (8-byte length, JSON)."""
    with f.open("rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        if not 0 < n <= _MAX_HEADER:
            return {f"{f.name}: unreadable header": None}
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            return {f"{f.name}: unreadable header": None}
    return {k: [v.get("dtype"), v.get("shape")] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


# -- the worker process, seen from the prober --------------------------------------------------
class _WorkerProcess:
    """One worker process: requests and answers as JSON lines (the worker moves vLLM's own
    output off stdout, so a line there is always an answer); stderr drained by a thread into
    the last ``_LOG_LINES`` lines. Its own process group, ended whole by ``stop``; the worker
    ends itself when this process goes (``exit_with_parent``)."""

    def __init__(self, cmd: list[str], key: str = "", lora_rank: int | None = None):
        self.key, self.lora_rank = key, lora_rank
        self.loaded: str | None = None  # the checkpoint folder whose weights the engine holds
        self.can_swap = False  # the worker's word, after its first answer
        env = {**_worker_env(), PARENT_ENV: str(os.getpid())}  # see exit_with_parent
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, start_new_session=True, bufsize=1)
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._lines = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read_answers, name="vllm-worker-out", daemon=True).start()
        threading.Thread(target=self._read_log, name="vllm-worker-err", daemon=True).start()
        # A prober dropped without close() must not leave an engine holding memory.
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)

    def _read_answers(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                self._answers.put(line)
        self._answers.put(None)

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self._log.append(line)
                self._lines += 1

    def log_mark(self) -> int:
        with self._lock:
            return self._lines

    def log_since(self, mark: int) -> str:
        with self._lock:
            n = min(self._lines - mark, len(self._log))
            return "".join(list(self._log)[len(self._log) - n:]) if n > 0 else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: dict, timeout: float) -> dict | None:
        """Send one request; its answer, or None when the worker ends or ``timeout`` passes."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                self._answers.put(None)  # keep saying "ended" to later calls
                return None
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict):
                return answer

    def stop(self, grace: float = 30.0) -> None:
        """End the worker: EOF on its stdin (it exits, releasing the engine), then the group's
        SIGKILL after ``grace`` seconds."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._finalizer()  # kills what is left of the group (engine processes included)
        self.proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


PARENT_ENV = "PHYLOLM_WORKER_PARENT"


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In the worker: end its whole process group (vLLM's engine processes included) as soon as
    the job that started it is gone — killed by SIGTERM or SIGKILL, which run no cleanup — so an
    engine never outlives its job holding a GPU. A daemon thread polls the parent's pid."""
    import signal

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
class EngineHost:
    """The worker's engine: started on the first request's model, then kept. A later request
    for another folder reloads the weights in place (the prober sends only models of the
    engine's key); an adapter request adds a ``LoRARequest`` with an id of its own."""

    def __init__(self) -> None:
        self.llm = None
        self.loaded: str | None = None
        self.lora_ids = 0
        self.per_gene_seed = False

    def can_swap(self) -> bool:
        """In-place reload is there (``Worker.reload_weights``, ``LLM.collective_rpc``) and the
        random state can be reset per probe: on a GPU each gene has its own seed; on CPU the
        engine must run in this process (V1 multiprocessing off)."""
        from vllm import LLM

        try:
            from vllm.v1.worker.gpu_worker import Worker
        except ImportError:
            return False
        if not (hasattr(LLM, "collective_rpc") and hasattr(Worker, "reload_weights")):
            return False
        if self.per_gene_seed:
            return True
        import vllm.envs as envs

        return not envs.VLLM_ENABLE_V1_MULTIPROCESSING

    def serve(self, request: dict) -> dict:
        """Probe one model: every gene sampled, allele counts per gene (as JSON)."""
        import torch
        import vllm
        from vllm import SamplingParams

        params = ProbeParams(**request["params"])
        genes: list[str] = request["genes"]
        lora = request.get("lora")
        timings: dict[str, float] = {}
        started = 0
        t0 = time.perf_counter()
        if self.llm is None:
            self._start(request, params)
            how, started = FRESH, 1
            timings["engine_start_seconds"] = time.perf_counter() - t0
        elif request["model"] != self.loaded:
            try:
                self._swap(request["model"])
            except Exception as e:
                return {"error": f"weight reload: {type(e).__name__}: {' '.join(str(e).split())[:800]}",
                        "swap_failed": True, "can_swap": self.can_swap()}
            how = SWAPPED
            timings["swap_seconds"] = time.perf_counter() - t0
        else:
            how = RUNNING
        lora_request = None
        if lora:  # the base's engine serves the adapter (vLLM loads adapter_model.safetensors)
            from vllm.lora.request import LoRARequest

            self.lora_ids += 1  # a distinct id: vLLM caches adapters by id
            lora_request = LoRARequest(str(lora["name"]), self.lora_ids, str(lora["path"]))
            how = {FRESH: ADAPTER_FRESH, SWAPPED: ADAPTER_SWAPPED, RUNNING: ADAPTER_RUNNING}[how]
        sampling = [SamplingParams(n=params.n_samples, temperature=params.temperature, top_p=params.top_p,
                                   top_k=-1 if _top_k_needs_minus_one() else 0, max_tokens=params.max_tokens,
                                   seed=gene_seed(params.seed, g) if self.per_gene_seed else None,
                                   skip_special_tokens=True)
                    for g in range(len(genes))]
        _reset_random_state(params.seed)
        t1 = time.perf_counter()
        outputs = self.llm.generate(genes, sampling, use_tqdm=False, lora_request=lora_request)
        timings["generate_seconds"] = time.perf_counter() - t1
        by_prompt = [count_alleles(c.text for c in out.outputs) for out in outputs]
        return {"version": f"vllm {vllm.__version__}; torch {torch.__version__}", "counts": by_prompt,
                "engine": how, "started": started, "can_swap": self.can_swap(), "timings": timings}

    def _start(self, request: dict, params: ProbeParams) -> None:
        import torch
        from vllm import LLM

        engine = dict(request.get("engine") or {})
        # Per-request seeds crash the CPU build's sampler ("CPU Generator does not use offset"):
        # there the probe's seed is set as the engine's random state before each generate.
        self.per_gene_seed = torch.cuda.is_available()
        if not self.per_gene_seed:
            engine = cpu_engine_settings(engine)
        rank = request.get("lora_rank") or (request.get("lora") or {}).get("rank")
        if rank:
            engine.update(enable_lora=True, max_lora_rank=int(rank), max_loras=1)
        self.llm = LLM(model=request["model"], trust_remote_code=False, load_format="safetensors",
                       seed=params.seed, **engine)
        self.loaded = request["model"]

    def _swap(self, model: str) -> None:
        """Reload the weights in place from ``model``'s folder, then drop the prefix cache
        (its blocks hold the previous model's keys and values)."""
        if not self.can_swap():
            raise RuntimeError("this vLLM cannot reload weights in place here")
        self.loaded = None  # half-loaded weights are no model's
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model, "is_checkpoint_format": True})
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("the prefix cache could not be reset")
        self.loaded = model


def _reset_random_state(seed: int) -> None:
    """The random state a fresh ``LLM(seed=seed)`` samples from (vLLM seeds Python, NumPy and
    torch, on every device, and again after its warm-up), so a probe on an engine that served
    other models draws what a fresh engine would."""
    try:
        from vllm.utils.torch_utils import set_random_seed
    except ImportError:  # older releases keep it elsewhere
        import random

        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return
    set_random_seed(seed)


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
    """Serve requests (JSON lines on stdin) until EOF, one answer line each on stdout. vLLM's own
    output goes to stderr, so stdout carries answers only."""
    if os.environ.get(PARENT_ENV, "").isdigit():
        exit_with_parent(int(os.environ[PARENT_ENV]))
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import torch

    if not torch.cuda.is_available():
        # On CPU the engine runs in this process: then the probe's random state can be set
        # right before its generate (see _reset_random_state), and nothing is re-imported.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    host = EngineHost()
    status = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = host.serve(json.loads(line))
        except Exception as e:  # the parent turns this into a ProbeError with the reason
            answer = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:1000]}"}
        answers.write(json.dumps(answer) + "\n")
        if "error" in answer and not answer.get("swap_failed"):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_main())
