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
# DuckDB's buffer pool on the writer's connection. DuckDB's own default is 80 % of the RAM,
# which a writer on a large catalog fills with cached pages (the OS keeps its own cache of
# the file besides); the insert path touches a few recent pages per transaction.
CATALOG_MEMORY_LIMIT = "2GB"


def max_bytes(weights_gb: float) -> int:
    """The weights budget in bytes for a budget in GB (10^9 bytes, as the Hub counts)."""
    return int(weights_gb * 1e9)
