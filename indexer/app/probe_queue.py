"""Which new models a cycle probes when there are more than its budget: a stated priority.

Hundreds to thousands of text-generation repositories appear on the Hub a day, and one GPU
probes tens to hundreds an hour, so each cycle of the watch takes a probe budget (models
and/or seconds) and the rest wait, ``queued``, for later cycles. Pure functions: no I/O.

The priority of a model is a weighted sum of terms (``PriorityWeights``, set as a string such
as ``"downloads=1,likes=2,related=2,size=-0.5"``, the default: ``indexer.app.defaults.PRIORITY``):

- ``downloads``, ``likes``: log10(1 + count), from the Hub's listing (what people use);
- ``related``: 1 when a declared base model is already indexed (its position in the tree is
  immediately informative: a lineage check), else 0;
- ``size``: weights in GB (a negative weight prefers small models, cheaper to probe);
- ``age``: days since upload (a negative weight prefers fresh uploads).

Ties go to the newest upload. The queue order ``rank`` takes the highest priorities first;
``newest`` takes the newest uploads first whatever their priority.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable
from schemas.records import ModelRecord

QUEUE_ORDERS = ("rank", "newest")
TERMS = ("downloads", "likes", "related", "size", "age")


@dataclass(frozen=True)
class PriorityWeights:
    """The weight of each term (``parse`` a string such as ``indexer.app.defaults.PRIORITY``)."""

    downloads: float
    likes: float
    related: float
    size: float
    age: float

    @classmethod
    def parse(cls, text: str) -> "PriorityWeights":
        """``"downloads=1,likes=2"`` -> weights (terms not named weigh 0); ValueError if bad."""
        values = {t: 0.0 for t in TERMS}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in TERMS:
                raise ValueError(f"priority: {part!r} is not TERM=WEIGHT with TERM one of {', '.join(TERMS)}")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"priority: {value.strip()!r} is not a number (in {part!r})") from None
            if not math.isfinite(values[name]):
                raise ValueError(f"priority: weight of {name} must be finite")
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{t}={getattr(self, t):g}" for t in TERMS if getattr(self, t))


def priority(record: ModelRecord, weights: PriorityWeights, indexed: set[str],
             now: datetime | None = None) -> float:
    """The record's priority score (higher: probed sooner)."""
    now = now or datetime.now(timezone.utc)
    score = weights.downloads * math.log10(1 + (record.downloads or 0))
    score += weights.likes * math.log10(1 + (record.likes or 0))
    if weights.related and any(b in indexed for b in record.base_models):
        score += weights.related
    if weights.size and record.size_bytes is not None:
        score += weights.size * record.size_bytes / 1e9
    if weights.age and record.created_at is not None:
        score += weights.age * max(0.0, (now - record.created_at).total_seconds() / 86400)
    return round(score, 9)


def order(records: Iterable[ModelRecord], how: str = "rank") -> list[ModelRecord]:
    """Records best first: by priority then upload time (``rank``), or by upload time (``newest``)."""
    if how not in QUEUE_ORDERS:
        raise ValueError(f"queue order {how!r}: expected one of {', '.join(QUEUE_ORDERS)}")
    far = datetime.min.replace(tzinfo=timezone.utc)

    def newest(r: ModelRecord) -> float:
        return -(r.created_at or far).timestamp()

    if how == "newest":
        return sorted(records, key=lambda r: (newest(r), r.id))
    return sorted(records, key=lambda r: (-(r.priority or 0.0), newest(r), r.id))


def budget_models(models: int | None, seconds: float | None, seconds_per_probe: float | None) -> int | None:
    """How many models a cycle probes: at most ``models``, and as many as fit in ``seconds`` at
    the measured ``seconds_per_probe`` (at least one; one when no probe has been timed yet).
    None: no budget, every candidate is probed."""
    limits = []
    if models is not None:
        limits.append(max(0, models))
    if seconds is not None:
        limits.append(max(1, int(seconds // seconds_per_probe)) if seconds_per_probe else 1)
    return min(limits) if limits else None
