"""The probers adapter: one interface over many inference engines (``base``), the backends
(``simulated``, ``transformers_backend``, ``vllm_backend``, ``openai_backend``), what the local
backends share about a checkpoint on disk (``checkpoint``), and the probe cache (``cache``).
The backends know nothing of each other: what two of them share lives in ``base`` or
``checkpoint``."""
