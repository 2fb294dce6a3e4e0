"""A small real catalog to publish: two declared families and an out-group, declared
relations of several kinds, measured scores on two benchmarks for most models, estimates
for the rest. Shared by the explorer, export and browser tests."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from indexer.adapters.catalog import Catalog
from indexer.adapters.publish import estimates_from_catalog, export
from indexer.core.tree.newick import to_newick
from indexer.core.tree.nj import neighbor_joining
from schemas.records import ModelRecord, ModelStatus, Score

GENOME = "e" * 64
IDS = ["acme/base", "acme/tune-1", "acme/tune-2", "acme/base-int8", "beta/base", "beta/chat",
       "beta/lora", "beta/code", "gamma/solo", "gamma/merge"]
DECLARED = {"acme/tune-1": (("acme/base",), "finetune"), "acme/tune-2": (("acme/base",), "finetune"),
            "acme/base-int8": (("acme/base",), "quantized"), "beta/chat": (("beta/base",), "finetune"),
            "beta/lora": (("beta/base",), "adapter"), "beta/code": (("gamma/solo",), "finetune"),  # false
            "gamma/merge": (("gamma/solo", "beta/base"), "merge")}
UNSCORED = {"acme/tune-2", "beta/lora", "gamma/merge"}


def world(seed: int = 3):
    rng = np.random.default_rng(seed)
    centre = np.array([[0, 0]] * 4 + [[3, 0]] * 4 + [[8, 8], [5, 4]])
    pts = centre + rng.normal(0, 0.25, centre.shape)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) / 5
    quality = {"acme": 0.40, "beta": 0.60, "gamma": 0.50}
    scores = [Score(model_id=m, benchmark=b, value=quality[m.split("/")[0]] + off + rng.normal(0, 0.01),
                    source="test") for m in IDS if m not in UNSCORED for b, off in (("arc", 0.0), ("mmlu", 0.1))]
    return d, scores


def publish_world(folder: Path) -> Path:
    """Build the catalog under ``folder`` and export it to ``folder/pub``; returns that."""
    d, scores = world()
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with Catalog(folder / "c.duckdb", create=True) as cat:
        cat.upsert_models([ModelRecord(id=m, author=m.split("/")[0], base_models=DECLARED.get(m, ((), None))[0],
                                       base_model_relation=DECLARED.get(m, ((), None))[1],
                                       created_at=t0 + timedelta(days=20 * i), status=ModelStatus.indexed)
                           for i, m in enumerate(IDS)])
        for i in range(1, len(IDS)):
            cat.add_distances(GENOME, IDS[i], IDS[:i], np.exp(-d[i, :i]), d[i, :i])
        cat.add_tree_snapshot(GENOME, to_newick(neighbor_joining(d, IDS)), "nj", "rebuild", len(IDS))
        cat.import_scores(scores)
        cat.replace_estimates(estimates_from_catalog(cat))
        export(cat, folder / "pub")
    return folder / "pub"
