"""Probe outcomes built from the simulator's allele counts, for tests that drive the real
``IndexWriter`` without running a model."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from indexer.app.job import ProbeOutcome, probe_id_for
from schemas.records import AlleleCounts, ModelRecord, ModelStatus, ProbeRecord

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def simulated_outcome(writer, eco, i: int) -> ProbeOutcome:
    """The outcome of probing simulated model ``i`` of ``eco`` (uploaded ``i`` minutes after T0)."""
    cfg, g = writer.config, writer.genome
    model = ModelRecord(id=eco.ids[i], revision="r1", status=ModelStatus.discovered,
                        created_at=T0 + timedelta(minutes=i))
    probe = ProbeRecord(probe_id=probe_id_for(model, cfg, g.hash), model_id=model.id, revision="r1",
                        genome_hash=g.hash, backend="simulated", backend_version="simulate_probes seed 3",
                        params=cfg.params, alleles=AlleleCounts(genome_hash=g.hash, n_samples=eco.n_samples,
                                                                counts=eco.counts(i)),
                        seconds=0.0, started_at=T0)
    return ProbeOutcome(model, probe)
