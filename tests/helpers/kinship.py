"""A toy ecosystem for the predictors' tests: points in 3-D as models, their Euclidean
distances as D, a smooth score along the first axis, five authors."""
from __future__ import annotations

import numpy as np


def toy_ecosystem(n: int = 30, seed: int = 1) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, D, score in (0, 1)) for ``n`` models."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    score = 1 / (1 + np.exp(-pts[:, 0]))
    ids = [f"org{i % 5}/m{i}" for i in range(n)]
    return ids, d, score
