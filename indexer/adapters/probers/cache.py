"""The probe cache: probe records on disk, keyed by everything that determines a probe.

A probe is determined by the model, its revision, the genome's hash, the sampling
parameters (seed included) and the backend: ``schemas.records.probe_key`` hashes exactly
these, and the cache stores each ``ProbeRecord`` as ``<dir>/<key>.json`` (a job's cache is
``<cache_dir>/probes/``). Asking again for a probe whose key is stored returns the stored
record and runs nothing, so a job killed after probing and restarted does not pay for the
same probe twice. Writes are atomic (a temporary file in the same folder, then a rename), so
concurrent workers never read half a record; an entry that does not parse (a torn write from
before atomic writes, a disk error) is removed and the probe is run again.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober
from schemas.records import ProbeParams, ProbeRecord, probe_key


class ProbeCache:
    """Probe records under ``directory``, one JSON file per probe key."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> ProbeRecord | None:
        """The stored record of probe ``key``, or None (not stored, or unreadable: then removed)."""
        p = self.path(key)
        try:
            text = p.read_text("utf-8")
        except OSError:
            return None
        try:
            record = ProbeRecord.model_validate_json(text)
        except ValueError:
            record = None
        if record is None or record.probe_id != key:
            p.unlink(missing_ok=True)  # torn or foreign: probe again
            return None
        return record

    def put(self, record: ProbeRecord) -> Path:
        """Store ``record`` under its probe id, atomically; returns the file."""
        p = self.path(record.probe_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{record.probe_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record.model_dump_json())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p


def probe_cached(prober: Prober, model: ModelSource, genome: Genome, params: ProbeParams,
                 cache: ProbeCache | None) -> tuple[ProbeRecord, bool]:
    """The probe record for ``model``, from ``cache`` when present; ``(record, was_cached)``."""
    key = probe_key(model.model_id, model.revision, genome.hash, params, prober.backend)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit, True
    record = prober.probe(model, genome, params)
    if cache is not None:
        cache.put(record)
    return record, False
