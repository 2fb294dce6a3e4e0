"""The job's defaults, each stated once.

``Settings`` (what a user gets without a config file, variable or option) and ``JobConfig``
(what a job built in code gets) both read them from here, the CLI's help texts quote them,
and the adapters take the values as arguments (``ScreenPolicy.max_bytes``,
``HubClient(timeout=...)``) rather than keeping defaults of their own that could drift. The
sampling parameters' defaults are the paper's, stated with ``schemas.records.ProbeParams``.
"""
from __future__ import annotations

from pathlib import Path

from indexer.adapters.probers.base import AUTO, FALLBACK_BACKEND
from indexer.cache import default_cache_dir

CATALOG = Path("phylolm.duckdb")
# The prober: vLLM where a GPU and vLLM are present, else transformers (see resolve_backend).
BACKEND = AUTO
# The backend of a JobConfig that names none: what `auto` resolves to without a GPU (a
# JobConfig holds the backend that runs, never `auto`).
JOB_BACKEND = FALLBACK_BACKEND
GENOME = "math"
CACHE_DIR = default_cache_dir()  # downloads, probes, listing cursors, the zoo (indexer.cache)
MAX_WEIGHTS_GB = 16.0  # models whose weights exceed this (from metadata) are skipped
HUB_TIMEOUT = 10.0  # seconds per Hub request
INTERVAL = 300.0  # seconds between polls of `watch`
FIRST_WINDOW_HOURS = 24.0  # with no watermark yet, how far back the first watch poll looks
QUEUE_ORDER = "rank"  # which queued models a cycle takes first (indexer.app.probe_queue)
PRIORITY = "downloads=1,likes=2,related=2,size=-0.5"  # the queue's priority terms
# The index: exact (every pair stored, the dense matrix in memory: up to a few thousand
# models) or sparse (each model's k nearest; the Hub-scale index, deploy/SCALE.md).
INDEX_MODE = "exact"
INDEX_K = 32  # sparse mode: the nearest models kept per model (exact distances)
TREE_EVERY = 100  # sparse mode: a whole tree stored every so many inserts at least
# ... or every this share of the index's size when that is more: the whole trees stored then
# add up to about 1 / TREE_SHARE Newicks' worth of bytes per model (O(n) in all, where a
# fixed interval made them O(n^2)); a restart re-inserts at most this share of the models.
TREE_SHARE = 0.02
# The export folder (publish_dir) is rewritten whole, O(n): between two bundle ends it is
# refreshed at most this share of the writer's time (13 s an export at 20,000 models).
EXPORT_SHARE = 0.1
# DuckDB's memory limit on the writer's connection; None: DuckDB's own (80 % of the RAM).
# Not capped by default: DuckDB refuses work past the limit rather than slowing down (a
# 2GB cap failed a publish's Parquet merge at 50,000 models, OutOfMemoryException).
CATALOG_MEMORY_LIMIT: str | None = None


def max_bytes(weights_gb: float) -> int:
    """The weights budget in bytes for a budget in GB (10^9 bytes, as the Hub counts)."""
    return int(weights_gb * 1e9)
