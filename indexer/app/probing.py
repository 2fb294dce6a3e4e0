"""The probe step: download (safetensors and metadata only) and probe one model.

A PEFT/LoRA adapter (its snapshot has ``adapter_config.json`` and no ``config.json``) is
probed as base + adapter: the base is the one its ``adapter_config.json`` names
(``base_model_name_or_path``, what peft itself would load), else the one the Hub's lineage
records for it (relation ``adapter``); it is screened and downloaded like any model
(``Watcher.fetch_base``) within the budget the adapter's own weights leave, and a base that
is missing, gated, too large or unsupported makes the adapter ``skipped`` with that reason.
The record names the base used (``adapter_of``: "id@commit"), the probe's backend version
says "adapter on id@commit", and the declared base joins the model's ``base_models`` so the
lineage check takes it as the declared parent.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from indexer.errors import PhylolmError
from indexer.adapters.probers.base import ModelSource, Prober, ProbeError, get_prober
from indexer.adapters.probers.cache import ProbeCache
from indexer.adapters.probers.checkpoint import adapter_base, check_adapter, is_adapter
from schemas.records import ModelRecord, ModelStatus
from indexer.app.job import JobConfig, ProbeOutcome, probe_id_for, with_status as _with

log = logging.getLogger("phylolm")


class ProbeStep:
    """Download (safetensors and metadata only) and probe one model; failures become records.

    Probes are kept in the probe cache (``indexer.adapters.probers.cache``) under
    ``cache_dir/probes/<probe id>.json`` (the id hashes model, revision, genome, parameters and
    backend), so a job killed after probing and restarted does not pay for the same probe twice.
    """

    BREAKER = 3  # identical engine failures in a row that stop the job

    def __init__(self, config: JobConfig):
        from indexer.app.hub import watcher_for

        self.config = config
        self.genome = config.load_genome()
        self.watcher = watcher_for(config)
        self.scrub = self.watcher.client.scrub
        self.cache = ProbeCache(config.cache_dir / "probes")
        self._prober: Prober | None = None
        self._failures: list[str] = []

    @property
    def prober(self) -> Prober:
        if self._prober is None:  # built on first use: a job with nothing new loads no engine
            self._prober = get_prober(self.config.backend, **dict(self.config.backend_options))
        return self._prober

    def _engine(self) -> Prober:
        """The prober, or a ``PhylolmError`` that stops the job: an engine that cannot start
        (unknown or uninstalled backend, no such device) is no fault of the model, and recording
        it as the model's final status would lose every model of the run."""
        try:
            return self.prober
        except Exception as e:
            raise PhylolmError(f"backend {self.config.backend!r} cannot start: "
                               f"{self.scrub(' '.join(str(e).split()))[:300]}") from None

    def _trip(self, reason: str) -> None:
        """Stop the job when the engine fails the same way on ``BREAKER`` models in a row:
        then the engine is broken (a device gone, an endpoint down), not the models, and
        failing them all would only burn their retries. Models already failed are retried."""
        self._failures.append(reason[:120])
        if len(self._failures) >= self.BREAKER and len(set(self._failures[-self.BREAKER:])) == 1:
            raise PhylolmError(f"the {self.config.backend} backend failed {self.BREAKER} models in a row "
                               f"with the same error, stopping: {reason[:300]}")

    def __call__(self, model: ModelRecord) -> ProbeOutcome:
        if model.status in (ModelStatus.skipped, ModelStatus.failed, ModelStatus.queued, ModelStatus.deferred):
            return ProbeOutcome(model)  # recorded as it is: refused, failed, or waiting
        if model.copy_of:
            return ProbeOutcome(model)  # an exact copy: the writer reuses its twin's alleles
        cached = self.cache.get(probe_id_for(model, self.config, self.genome.hash))
        if cached is not None:
            _, on, base = cached.backend_version.rpartition(ADAPTER_MARK)  # the mark comes last
            if on and base:  # an adapter's probe: its record names the base it was probed on
                model = _as_adapter(model, base.split("@")[0], base)
            return ProbeOutcome(_with(model, ModelStatus.probed, None), cached)
        prober = self._engine()
        try:
            path = None
            if self.config.backend != "openai":
                model, path = self.watcher.fetch(model, self.config.cache_dir / "models")
                if path is None:
                    return ProbeOutcome(model)
            if path is not None and not model.weight_hashes:
                model = model.model_copy(update={"weight_hashes": snapshot_weight_hashes(Path(path))})
            source = ModelSource(model.id, model.revision, Path(path) if path else None, model.gguf_file)
            if path is not None and is_adapter(Path(path)):
                model, source = self._on_base(model, Path(path))
                if source is None:
                    return ProbeOutcome(model)
            record = prober.probe(source, self.genome, self.config.params)
        except ProbeError as e:
            status = ModelStatus.skipped if e.skip else ModelStatus.failed
            return ProbeOutcome(_with(model, status, self.scrub(str(e))[:500]))
        except Exception as e:  # one bad model never stops the job; the reason is kept
            reason = f"{type(e).__name__}: {self.scrub(' '.join(str(e).split()))[:400]}"
            log.warning("probe of %s failed: %s", model.id, reason)
            self._trip(reason.replace(model.id, "<model>"))
            return ProbeOutcome(_with(model, ModelStatus.failed, reason))
        self._failures.clear()
        self.cache.put(record)
        return ProbeOutcome(_with(model, ModelStatus.probed, None), record)

    def _on_base(self, model: ModelRecord, adapter: Path) -> tuple[ModelRecord, ModelSource | None]:
        """An adapter's record and the source that probes it on its base; (record skipped or
        failed with the reason, None) when its base cannot be had. Raises ``ProbeError(skip)``
        for an adapter that cannot be applied safely (``check_adapter``)."""
        config = check_adapter(adapter)
        named = adapter_base(config)
        hub = model.base_models if model.base_model_relation in (None, "adapter") else ()
        base = named or (hub[0] if hub else None)
        if base is None:
            return _with(model, ModelStatus.skipped, "adapter names no base model (base_model_name_or_path) "
                         "and the Hub records none"), None
        if hub and named and named not in hub:
            log.info("%s: adapter_config.json names %s, the Hub records %s; probing on %s",
                     model.id, named, ", ".join(hub), named)
        own = sum(f.stat().st_size for f in adapter.glob("*.safetensors"))
        found = self.watcher.fetch_base(base, self.config.cache_dir / "models", self.config.max_bytes - own)
        if found.path is None:
            return _with(_as_adapter(model, base, None), found.status or ModelStatus.skipped, found.reason), None
        pinned = f"{base}@{found.revision}"
        model = _as_adapter(model, base, pinned)
        return model, ModelSource(model.id, model.revision, found.path, adapter=adapter, base=pinned)

    def close(self) -> None:
        if self._prober is not None:
            self._prober.close()
            self._prober = None


ADAPTER_MARK = "; adapter on "  # what Prober.probe appends to an adapter probe's backend version


def _as_adapter(model: ModelRecord, base: str, pinned: str | None) -> ModelRecord:
    """``model`` as an adapter of ``base``: its declared bases include it (the lineage check's
    declared parent), its relation is ``adapter``, ``adapter_of`` the base probed on."""
    bases = model.base_models if base in model.base_models else (*model.base_models, base)
    return model.model_copy(update={"base_models": bases, "adapter_of": pinned,
                                    "base_model_relation": model.base_model_relation or "adapter"})


def snapshot_weight_hashes(folder: Path) -> tuple[str, ...]:
    """Sorted sha256 of a downloaded snapshot's root-level safetensors: the LFS sha256 the Hub
    lists (the download was verified against them). The Hub cache names an LFS blob by its
    sha256, so the file is read only when the blob's name is not one."""
    import hashlib

    out = []
    for f in sorted(folder.glob("*.safetensors")):
        blob = Path(os.path.realpath(f)).name
        if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob):
            out.append(blob)
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return tuple(sorted(out))

