"""The prober interface: one small surface over many inference engines.

Like vLLM's offline API (``LLM(...)`` then ``generate(prompts, SamplingParams(...))``), a
prober is built once for a backend and then asked to ``probe`` a model with a genome and
sampling parameters; what comes back is the allele counts per gene, with everything that
determined them. Backends register themselves by name in ``BACKENDS``.
"""
from __future__ import annotations

import abc
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from indexer.core.genomes import Genome
from schemas.records import AlleleCounts, ProbeParams, ProbeRecord, probe_key


class ProbeError(RuntimeError):
    """A model that could not be probed; ``skip`` marks refusals by policy (never retried)."""

    def __init__(self, message: str, *, skip: bool = False):
        super().__init__(message)
        self.skip = skip


@dataclass(frozen=True)
class ModelSource:
    """What a prober needs to find a model: its id and revision, and for local backends
    the folder holding a snapshot of the repository (safetensors, config, tokenizer)."""

    model_id: str
    revision: str = "main"
    path: Path | None = None
    gguf_file: str | None = None  # a GGUF-only repository: the file in ``path`` to load
    # A PEFT/LoRA adapter: ``path`` is its base's snapshot, ``adapter`` the adapter's folder
    # (adapter_config.json, adapter_model.safetensors), ``base`` the base's "id@commit".
    adapter: Path | None = None
    base: str | None = None


class Prober(abc.ABC):
    backend: ClassVar[str]

    @abc.abstractmethod
    def version(self) -> str:
        """Engine name and version, recorded with every probe."""

    @abc.abstractmethod
    def generate(self, model: ModelSource, genome: Genome, params: ProbeParams) -> AlleleCounts:
        """Sample ``params.n_samples`` continuations of every gene; return allele counts."""

    def probe(self, model: ModelSource, genome: Genome, params: ProbeParams) -> ProbeRecord:
        """``generate``, timed and wrapped in the record the catalog stores."""
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        alleles = self.generate(model, genome, params)
        seconds = time.perf_counter() - t0
        # The note (how the engine was had, say) goes before the adapter mark, which readers
        # parse from the end; neither enters the probe key (see ``probe_note``).
        version = (self.version() + self.probe_note()
                   + (f"; adapter on {model.base}" if model.adapter is not None else ""))
        return ProbeRecord(
            probe_id=probe_key(model.model_id, model.revision, genome.hash, params, self.backend),
            model_id=model.model_id, revision=model.revision, genome_hash=genome.hash,
            backend=self.backend, backend_version=version, params=params,
            alleles=alleles, seconds=seconds, started_at=started, gguf_file=model.gguf_file,
        )

    def probe_note(self) -> str:
        """Said of the last ``generate`` in the record's backend version ("; engine: ..."), or "".
        Not part of the probe key: a note must only describe how equal alleles were had."""
        return ""

    def close(self) -> None:
        """Release engines and memory held between probes (no-op by default)."""

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BACKENDS: dict[str, str] = {
    # name -> "module:Class", imported lazily so that torch/vllm load only when used
    "simulated": "indexer.adapters.probers.simulated:SimulatedProber",
    "transformers": "indexer.adapters.probers.transformers_backend:TransformersProber",
    "vllm": "indexer.adapters.probers.vllm_backend:VLLMProber",
    "openai": "indexer.adapters.probers.openai_backend:OpenAIProber",
}


def gene_seed(seed: int, gene_index: int) -> int:
    """Seed of one gene's request: distinct per gene, stable per probe seed (fits in 63 bits).
    Shared by the backends that send each gene as its own request (vLLM on a GPU, an
    OpenAI-compatible API), so that one probe seed means the same per-gene seeds in both."""
    return (seed * 1_000_003 + gene_index) % (1 << 63)


AUTO = "auto"  # vLLM where a GPU and vLLM are present, else FALLBACK_BACKEND
FALLBACK_BACKEND = "transformers"  # runs anywhere torch does, CPU included


def gpu_present() -> tuple[bool, str]:
    """Whether an NVIDIA GPU is visible to this process, and how that was told (without
    importing torch: the driver's device list, else ``nvidia-smi -L``)."""
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False, "CUDA_VISIBLE_DEVICES hides every GPU"
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True, "an NVIDIA GPU is present"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        if "GPU" in listed:
            return True, "nvidia-smi lists a GPU"
    return False, "no GPU found"


def vllm_present() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return True, "vLLM is installed"
    if os.environ.get("PHYLOLM_VLLM_PYTHON"):
        return True, "PHYLOLM_VLLM_PYTHON names a vLLM environment"
    return False, "vLLM is not installed"


def resolve_backend(backend: str) -> tuple[str, str]:
    """The backend a name stands for, and why: ``auto`` is vLLM where a GPU and vLLM are
    present, ``FALLBACK_BACKEND`` (transformers) otherwise; any other name is itself."""
    if backend != AUTO:
        return backend, "chosen explicitly"
    gpu, why_gpu = gpu_present()
    vllm, why_vllm = vllm_present()
    if gpu and vllm:
        return "vllm", f"auto: {why_gpu} and {why_vllm}"
    return FALLBACK_BACKEND, f"auto: {why_gpu if not gpu else why_vllm}"


# Pre-quantization methods (quantization_config.quant_method) each backend runs on a GPU.
# On CPU neither transformers nor the vLLM CPU build runs them: such checkpoints are deferred.
VLLM_GPU_QUANT_METHODS = ("gptq", "awq", "bitsandbytes", "compressed-tensors", "fp8", "gptq_marlin",
                          "awq_marlin", "marlin", "modelopt", "mxfp4")
# transformers needs a kernel package per method (fp8 is native).
TRANSFORMERS_GPU_QUANT_PACKAGES = {"bitsandbytes": ("bitsandbytes",), "gptq": ("gptqmodel", "auto_gptq"),
                                   "awq": ("awq",), "compressed-tensors": ("compressed_tensors",), "fp8": ()}


def quant_methods(backend: str, device: str | None = None) -> frozenset[str]:
    """The pre-quantization methods ``backend`` can load here, with "gguf" for GGUF files
    ("*": any; the openai backend
    probes what an endpoint already serves). Decided without starting an engine, so the
    listing can defer (and later re-offer) quantized checkpoints."""
    import importlib.util

    if backend == "openai":
        return frozenset({"*"})
    gguf = frozenset({"gguf"}) if backend == "transformers" else frozenset()  # its GGUF loader, CPU or GPU
    if backend not in ("vllm", "transformers") or (device or "").startswith("cpu") or not gpu_present()[0]:
        return gguf
    if backend == "vllm":
        return frozenset(VLLM_GPU_QUANT_METHODS)
    return gguf | frozenset(m for m, pkgs in TRANSFORMERS_GPU_QUANT_PACKAGES.items()
                            if not pkgs or any(importlib.util.find_spec(p) is not None for p in pkgs))


def get_prober(backend: str, **options) -> Prober:
    """Build the prober for ``backend`` (one of ``BACKENDS``) with backend options."""
    import importlib

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[backend].split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ProbeError(f"backend {backend!r} is not installed here ({e.name or e}); "
                         f"see the README's install extras") from None
    return getattr(mod, cls)(**options)
