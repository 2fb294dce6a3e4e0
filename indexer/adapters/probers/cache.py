"""A content-addressed cache of probe records on disk.

A probe is determined by the model, its revision, the genome's hash, the sampling
parameters (seed included) and the backend: ``schemas.records.probe_key`` hashes exactly
these, and the cache stores each ``ProbeRecord`` as ``<dir>/<key[:2]>/<key>.json``. Asking
again for a probe whose key is stored returns the stored record and runs nothing.
Writes are atomic (temporary file, then rename), so concurrent workers never read half a
record; a corrupt entry is treated as missing and overwritten.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from indexer.core.genomes import Genome
from indexer.adapters.probers.base import ModelSource, Prober
from schemas.records import ProbeParams, ProbeRecord, probe_key


class ProbeCache:
    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> ProbeRecord | None:
        p = self.path(key)
        try:
            return ProbeRecord.model_validate_json(p.read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, record: ProbeRecord) -> Path:
        p = self.path(record.probe_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(record.model_dump_json())
        os.replace(tmp, p)
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


def _dump(record: ProbeRecord) -> str:  # pragma: no cover - kept for debugging
    return json.dumps(record.model_dump(mode="json"), indent=2)
