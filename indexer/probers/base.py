"""The prober interface: one small surface over many inference engines.

Like vLLM's offline API (``LLM(...)`` then ``generate(prompts, SamplingParams(...))``), a
prober is built once for a backend and then asked to ``probe`` a model with a genome and
sampling parameters; what comes back is the allele counts per gene, with everything that
determined them. Backends register themselves by name in ``BACKENDS``.
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from indexer.genomes import Genome
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
        return ProbeRecord(
            probe_id=probe_key(model.model_id, model.revision, genome.hash, params, self.backend),
            model_id=model.model_id, revision=model.revision, genome_hash=genome.hash,
            backend=self.backend, backend_version=self.version(), params=params,
            alleles=alleles, seconds=seconds, started_at=started,
        )

    def close(self) -> None:
        """Release engines and memory held between probes (no-op by default)."""

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


BACKENDS: dict[str, str] = {
    # name -> "module:Class", imported lazily so that torch/vllm load only when used
    "simulated": "indexer.probers.simulated:SimulatedProber",
    "transformers": "indexer.probers.transformers_backend:TransformersProber",
    "vllm": "indexer.probers.vllm_backend:VLLMProber",
    "openai": "indexer.probers.openai_backend:OpenAIProber",
}


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
