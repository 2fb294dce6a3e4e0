"""Pydantic records for everything that crosses a module boundary.

The domain core works on plain numpy arrays and dicts; these records are what adapters
(catalog, hub, probers, pipelines) hand each other, validated on the way in.
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Hub ids are "owner/name" (or a bare name); each part is letters, digits, '-', '_', '.',
# and never '..' (so an id can never walk out of a folder it names).
_MODEL_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_model_id(value: str) -> str:
    """Return ``value`` if it is a well-formed Hub model id, else raise ``ValueError``."""
    if not isinstance(value, str) or not _MODEL_ID.match(value) or ".." in value:
        shown = value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80] + "..."
        raise ValueError(f"not a valid model id: {shown!r} (expected 'owner/name')")
    return value


ModelId = Annotated[str, Field(min_length=1, max_length=192)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelStatus(str, Enum):
    discovered = "discovered"  # listed on the Hub, not yet probed
    queued = "queued"  # waiting for a later cycle's probe budget (see `priority`)
    deferred = "deferred"  # needs a backend that is not running (e.g. a GPU for GPTQ)
    probed = "probed"  # alleles stored, not yet in the index
    indexed = "indexed"  # distances, tree leaf and estimates written
    skipped = "skipped"  # refused by policy (remote code, pickle-only, gated, too large...)
    failed = "failed"  # an error while probing; reason says which


class ModelRecord(Frozen):
    """A model repository as the watcher sees it (from Hub metadata, before any download)."""

    id: ModelId
    revision: str = "main"
    created_at: datetime | None = None
    author: str | None = None
    base_models: tuple[str, ...] = ()
    base_model_relation: str | None = None  # finetune | merge | quantized | adapter
    license: str | None = None
    pipeline_tag: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    status: ModelStatus = ModelStatus.discovered
    reason: str | None = None
    attempt: int = Field(default=0, ge=0)  # failed probes of this revision so far (a retry has > 0)
    downloads: int | None = Field(default=None, ge=0)  # from the Hub's listing, for the priority
    likes: int | None = Field(default=None, ge=0)
    priority: float | None = None  # rank score of a queued model (higher: probed sooner)
    # Sorted LFS sha256 of the root-level weight files, as the Hub lists them (empty: unknown).
    weight_hashes: tuple[str, ...] = ()
    copy_of: str | None = None  # an indexed model with identical weight files (see README)
    gguf_file: str | None = None  # a GGUF-only repository: the file chosen to probe
    adapter_of: str | None = None  # a PEFT/LoRA adapter: the base it was probed on ("id@commit")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        return check_model_id(v)


class ProbeParams(Frozen):
    """Sampling parameters of a probe; the defaults are the PhyloLM paper's."""

    n_samples: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=0.7, gt=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=5, ge=1, le=256)
    seed: int = Field(default=0, ge=0)

    def digest(self) -> str:
        """Stable hash of the parameters (part of every probe's cache key)."""
        return sha256_json(self.model_dump(mode="json"))[:16]


class AlleleCounts(Frozen):
    """The alleles sampled for every gene of a genome: ``counts[g][allele] = count``.

    Every gene's counts sum to ``n_samples``: each sample yields exactly one allele
    (possibly the empty string).
    """

    genome_hash: str
    n_samples: int = Field(ge=1)
    counts: tuple[dict[str, int], ...]

    @model_validator(mode="after")
    def _each_gene_sums_to_n(self) -> "AlleleCounts":
        for g, per_gene in enumerate(self.counts):
            total = sum(per_gene.values())
            if total != self.n_samples or any(c <= 0 for c in per_gene.values()):
                raise ValueError(
                    f"gene {g}: allele counts sum to {total}, expected {self.n_samples} positive counts"
                )
        return self

    @property
    def n_genes(self) -> int:
        return len(self.counts)


class ProbeRecord(Frozen):
    """One probe of one model revision: what determined it and what it produced."""

    probe_id: str  # the cache key: hash of model, revision, genome, params, backend
    model_id: ModelId
    revision: str
    genome_hash: str
    backend: str
    backend_version: str
    params: ProbeParams
    alleles: AlleleCounts
    seconds: float = Field(ge=0.0)
    started_at: datetime
    gguf_file: str | None = None  # the GGUF file probed, for a GGUF-only repository


class Estimate(Frozen):
    """A benchmark estimate with its interval, and where it came from."""

    model_id: ModelId
    benchmark: str
    estimate: float
    low: float
    high: float
    method: str
    snapshot: int | None = None  # tree_snapshots.snapshot_id the estimate was computed at

    _valid_id = field_validator("model_id")(lambda cls, v: check_model_id(v))

    @model_validator(mode="after")
    def _ordered(self) -> "Estimate":
        if not (self.low <= self.estimate <= self.high):
            raise ValueError(f"interval [{self.low}, {self.high}] does not contain {self.estimate}")
        return self


class Score(Frozen):
    """A measured benchmark score (a fraction in [0, 1])."""

    model_id: ModelId
    benchmark: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$")
    value: float = Field(ge=0.0, le=1.0)
    source: str = Field(min_length=1, max_length=512)

    _valid_id = field_validator("model_id")(lambda cls, v: check_model_id(v))


def sha256_json(obj: object) -> str:
    """SHA-256 of a canonical JSON encoding (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def probe_key(model_id: str, revision: str, genome_hash: str, params: ProbeParams, backend: str) -> str:
    """Cache key of a probe: everything that determines its alleles."""
    return sha256_json(
        {"model": model_id, "revision": revision, "genome": genome_hash,
         "params": params.model_dump(mode="json"), "backend": backend}
    )[:32]
