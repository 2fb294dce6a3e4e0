"""The packaged reference data: the PhyloLM paper's 127 models, their similarity matrix and
their Open LLM Leaderboard v1 scores (see ``indexer/data/reference/PROVENANCE.md``).

Read through ``importlib.resources`` so it works from an installed wheel.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from indexer.core.distance import distance_from_similarity
from indexer.core.predict import BENCHMARKS
from schemas.records import Score

LEADERBOARD_V1 = "leaderboard-v1"
REFERENCE_SETS = (LEADERBOARD_V1,)


def _text(name: str) -> str:
    return resources.files("indexer").joinpath("data", "reference", name).read_text(encoding="utf-8")


def provenance() -> str:
    """The PROVENANCE note of the reference data (Markdown)."""
    return _text("PROVENANCE.md")


@dataclass(frozen=True)
class PaperMatrix:
    """The paper's 127 models: ids, families, similarity S and distance D = -log S."""

    ids: tuple[str, ...]
    families: tuple[str, ...]
    similarity: np.ndarray
    distance: np.ndarray


@lru_cache(maxsize=1)
def paper_matrix() -> PaperMatrix:
    models = list(csv.DictReader(io.StringIO(_text("paper_models_127.csv"))))
    rows = list(csv.reader(io.StringIO(_text("sim_math_completion127_digitized.csv"))))
    header, body = rows[0][1:], rows[1:]
    engines = [m["engine"] for m in models]
    if header != engines or [r[0] for r in body] != engines:
        raise RuntimeError("reference matrix and model list disagree on the model order")
    s = np.array([[float(x) for x in r[1:]] for r in body])
    s.setflags(write=False)
    d = distance_from_similarity(s)
    d.setflags(write=False)
    return PaperMatrix(tuple(m["model_id"] for m in models), tuple(m["family"] for m in models), s, d)


@lru_cache(maxsize=1)
def _leaderboard_rows() -> tuple[dict[str, str], ...]:
    return tuple(csv.DictReader(io.StringIO(_text("leaderboard_v1_scores.csv"))))


def leaderboard_v1_scores() -> list[Score]:
    """Every (model, benchmark) score of the vendored leaderboard v1 table."""
    out = []
    for row in _leaderboard_rows():
        for bench in BENCHMARKS:
            if row[bench].strip():
                out.append(Score(model_id=row["model_id"], benchmark=bench, value=float(row[bench]),
                                 source=f"{LEADERBOARD_V1}:{row['source']}"))
    return out


def reference_scores(name: str) -> list[Score]:
    """A named reference score set (only ``leaderboard-v1`` for now)."""
    if name != LEADERBOARD_V1:
        raise ValueError(f"unknown reference score set {name!r}; known: {', '.join(REFERENCE_SETS)}")
    return leaderboard_v1_scores()


def paper_score_matrix(benchmarks=BENCHMARKS) -> np.ndarray:
    """127 x len(benchmarks) scores in the paper's model order, NaN where there is none."""
    pm = paper_matrix()
    pos = {m: i for i, m in enumerate(pm.ids)}
    y = np.full((len(pm.ids), len(benchmarks)), np.nan)
    col = {b: j for j, b in enumerate(benchmarks)}
    for s in leaderboard_v1_scores():
        if s.model_id in pos and s.benchmark in col:
            y[pos[s.model_id], col[s.benchmark]] = s.value
    return y
