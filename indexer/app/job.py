"""The job's configuration and the records that pass between its steps.

``JobConfig`` is everything a step needs (picklable, so a cluster runner can ship it); a
``ProbeOutcome`` is a listed model after the probe step; a ``PollReport`` is what one poll of
the Hub did; an ``UpdateSummary`` is what the writer did with one outcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from indexer.adapters import genome_files as genome_lib
from indexer.app import defaults
from schemas.records import ModelRecord, ModelStatus, ProbeParams, ProbeRecord, probe_key


@dataclass(frozen=True)


class JobConfig:
    """Everything a step needs; the defaults are ``indexer.app.defaults``'s, and
    ``indexer.app.settings.job_config`` builds one from the user's settings."""

    catalog: Path
    hub: str | None = None  # endpoint URL (a folder is served by indexer.app.hub.open_hub first)
    backend: str = defaults.JOB_BACKEND  # the backend that runs (``auto`` is resolved before)
    backend_options: tuple[tuple[str, object], ...] = ()  # keyword arguments of the prober
    genome: str = defaults.GENOME
    n_genes: int | None = None
    params: ProbeParams = field(default_factory=ProbeParams)
    cache_dir: Path = defaults.CACHE_DIR
    publish_dir: Path | None = None
    max_bytes: int = defaults.max_bytes(defaults.MAX_WEIGHTS_GB)  # weights budget, from metadata before download
    author: str | None = None
    search: str | None = None
    since: datetime | None = None
    limit: int | None = None
    model_ids: tuple[str, ...] = ()
    hub_timeout: float = defaults.HUB_TIMEOUT
    # With no watermark yet, a watch's first poll looks back this far (None: everything, as a
    # backfill does); older models are what `backfill` is for.
    first_window_hours: float | None = None
    probe_budget: int | None = None  # models probed per cycle (None: every new model)
    budget_seconds: float | None = None  # probe seconds per cycle, at the measured rate
    queue_order: str = defaults.QUEUE_ORDER  # rank | newest: which queued models a cycle takes first
    priority: str = defaults.PRIORITY  # see indexer.app.probe_queue
    use_queue: bool = False  # the watch: a cycle takes its budget from new models and the queue
    # Pre-quantization methods the backend runs (None: what indexer.adapters.probers.base.quant_methods
    # finds for it); quantized checkpoints of other methods are deferred.
    quant_methods: tuple[str, ...] | None = None
    index_mode: str = defaults.INDEX_MODE  # exact | sparse (indexer.app.writer)
    index_k: int = defaults.INDEX_K
    tree_every: int = defaults.TREE_EVERY
    export_share: float = defaults.EXPORT_SHARE  # publish_dir's share of the writer's time (IndexWriter.publish)
    catalog_memory_limit: str | None = defaults.CATALOG_MEMORY_LIMIT  # DuckDB's, on the writer's connection

    def load_genome(self) -> genome_lib.Genome:
        g = genome_lib.load(self.genome)
        return g.subset(self.n_genes) if self.n_genes else g


@dataclass(frozen=True)


class ProbeOutcome:
    """A listed model after the probe step: probed (with its record) or skipped/failed."""

    model: ModelRecord
    probe: ProbeRecord | None = None
    worker: str | None = None  # "host:pid" of the process whose probe step handled it

    @property
    def key(self) -> str:
        return f"{self.model.id}@{self.model.revision}"


@dataclass(frozen=True)


class PollReport:
    """What one poll of the Hub did, recorded by the writer in the ``polls`` table. ``complete``:
    the listing reached the watermark (else nothing new was recorded; ``error`` says why)."""

    poll_id: str
    started_at: datetime
    finished_at: datetime
    complete: bool
    error: str | None = None
    new_models: int = 0
    taken: int = 0
    queued: int = 0

    @property
    def key(self) -> str:
        return f"poll:{self.poll_id}"


@dataclass(frozen=True)


class UpdateSummary:
    model_id: str
    status: str
    reason: str | None = None
    snapshot: int | None = None
    n_models: int = 0
    nearest: tuple[tuple[str, float], ...] = ()
    timings_ms: tuple[tuple[str, float], ...] = ()
    rebuilt: bool = False
    probed_by: str | None = None  # "host:pid" of the probe step's process (ProbeOutcome.worker)
    written_by: str | None = None  # "host:pid" of the writer's process


def this_process() -> str:
    """``host:pid`` of the calling process: where a step ran, as outcomes and summaries record it."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def probe_id_for(model: ModelRecord, config: JobConfig, genome_hash: str) -> str:
    return probe_key(model.id, model.revision, genome_hash, config.params, config.backend)


def with_status(model: ModelRecord, status: ModelStatus, reason: str | None) -> ModelRecord:
    return model.model_copy(update={"status": status, "reason": reason})

