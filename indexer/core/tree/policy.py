"""When the incrementally maintained tree is due for a full neighbour-joining rebuild.

Insertion is O(n) per model and NJ is roughly O(n^2..n^3): rebuilding whenever the index
has grown by a fixed fraction ``growth`` since the last rebuild bounds the amortised rebuild
cost per insertion to about cost_NJ(n) / (growth * n) (a geometric series: the last rebuild
dominates), while every leaf inserted since the last rebuild was placed on a tree at least
1 / (1 + growth) of the current size. ``growth=None`` never rebuilds (pure incremental).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RebuildPolicy:
    growth: float | None = 0.5  # rebuild once n >= (1 + growth) * n_at_last_rebuild
    min_models: int = 4  # up to this size every insertion rebuilds (NJ is trivial there)
    max_inserts: int | None = None  # also rebuild after this many insertions, if set

    def __post_init__(self) -> None:
        if self.growth is not None and self.growth <= 0:
            raise ValueError("growth must be positive (or None for never)")
        if self.min_models < 3:
            raise ValueError("min_models must be at least 3")

    def due(self, n_models: int, n_at_last_rebuild: int, inserts_since: int) -> bool:
        if n_models <= self.min_models:
            return True
        if self.max_inserts is not None and inserts_since >= self.max_inserts:
            return True
        return self.growth is not None and n_models >= (1.0 + self.growth) * max(n_at_last_rebuild, 1)

    @classmethod
    def never(cls) -> "RebuildPolicy":
        return cls(growth=None)
