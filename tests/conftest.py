"""Fixtures shared across the test folders, and the markers each folder's tests carry.

Fixtures used by one folder only live in that folder's conftest.py; helper functions (not
fixtures) are in ``tests/helpers``.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli, simulate_hub
from tests.helpers.zoo import zoo_sources_missing

TESTS = Path(__file__).resolve().parent

# Markers by place (a folder or a file, relative to tests/): `integration` where the tests
# start real processes, servers or engines (`phylolm` subprocesses, the loopback Hub, Beam
# runners, loopback APIs, external programs such as the import linter, a browser); `faults`
# for the fault suite. Tests elsewhere that start one carry `@pytest.mark.integration`.
MARKERS_BY_PLACE = {
    "faults": ("faults", "integration"),
    "pipelines": ("integration",),
    "cli": ("integration",),
    "app": ("integration",),
    "testbed": ("integration",),
    "browser": ("browser", "integration"),
    "adapters/hub": ("integration",),
    "adapters/probers/test_openai.py": ("integration",),
    "core/tree/test_nj_peers.py": ("integration",),
    "bench/test_index_peers.py": ("integration",),
    "test_architecture.py": ("integration",),
}
# ... and wherever a test uses a fixture that runs `phylolm` or a model engine.
INTEGRATION_FIXTURES = ("cli", "ecosystem", "zoo_dir")


def _places(item: pytest.Item) -> list[str]:
    """Every folder above the test's file, and the file itself, relative to tests/ (none for
    a test collected from elsewhere in the same run)."""
    path = Path(item.path).resolve()
    if not path.is_relative_to(TESTS):
        return []
    parts = path.relative_to(TESTS).parts
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = {n for place in _places(item) for n in MARKERS_BY_PLACE.get(place, ())}
        if any(f in item.fixturenames for f in INTEGRATION_FIXTURES):
            names.add("integration")
        for name in sorted(names - {m.name for m in item.iter_markers()}):
            item.add_marker(name)


@pytest.fixture
def cli(tmp_path):
    """`cli("sql", "select 1")` runs phylolm in tmp_path and returns the CompletedProcess."""
    def _run(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)
    return _run


@pytest.fixture(scope="module")
def ecosystem(request, tmp_path_factory) -> Path:
    """The Hub folder of a simulated ecosystem (`phylolm simulate`), built once per module
    with the parameters the module names in ``ECOSYSTEM`` (models, seed, genes, samples)."""
    params = getattr(request.module, "ECOSYSTEM", None)
    if params is None:
        pytest.fail(f"{request.module.__name__} uses `ecosystem` but names no ECOSYSTEM parameters")
    return simulate_hub(tmp_path_factory.mktemp("eco") / "hub", **params)


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    """The real model zoo: built once into the cache (minutes the first time, then a no-op)
    and laid out, by hard links, in a session folder. Without the zoo's source packages the
    tests skip locally, and fail under CI (``CI`` set), where the setup must have installed them."""
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
