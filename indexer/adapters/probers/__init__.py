"""The probers adapter: one interface over many inference engines (``base``), the backends
(``simulated``, ``transformers_backend``, ``vllm_backend``, ``openai_backend``), what the local
backends share about a checkpoint on disk (``checkpoint``), and the probe cache (``cache``).
The backends know nothing of each other: what two of them share lives in ``base`` or
``checkpoint``."""

from indexer.adapters.probers.base import (AUTO, BACKENDS, FALLBACK_BACKEND, ModelSource, Prober, ProbeError,
                                           get_prober, quant_methods, resolve_backend)
from indexer.adapters.probers.simulated import write_repositories

__all__ = ["AUTO", "BACKENDS", "FALLBACK_BACKEND", "ModelSource", "Prober", "ProbeError", "get_prober",
           "quant_methods", "resolve_backend", "write_repositories"]
