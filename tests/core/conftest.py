"""Fixtures of the domain core's tests: the paper's packaged data, the reference anchors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.adapters import reference
from tests.helpers import ROOT


@pytest.fixture(scope="session")
def paper() -> tuple[reference.PaperMatrix, np.ndarray]:
    """The PhyloLM paper's 127 models as packaged (ids, families, S, D; read-only) and their
    leaderboard v1 scores (127 x the six benchmarks, NaN where there is none)."""
    return reference.paper_matrix(), reference.paper_score_matrix()


@pytest.fixture
def shared_anchors() -> Path:
    """The read-only reference data beside the checkout (``../shared/anchors``)."""
    p = ROOT.parent / "shared" / "anchors"
    if not p.is_dir():
        pytest.skip("reference data (../shared/anchors) not present beside the checkout")
    return p
