"""Shared fixtures: the repository root, the read-only reference data beside it, a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_anchors() -> Path:
    p = SHARED / "anchors"
    if not p.is_dir():
        pytest.skip("reference data (../shared/anchors) not present beside the checkout")
    return p


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `phylolm` entry point in a subprocess (as a user would)."""
    # Settings come only from the test: no catalog or config leaks in from the caller's shell.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


@pytest.fixture
def cli(tmp_path):
    """`cli("sql", "select 1")` runs phylolm in tmp_path and returns the CompletedProcess."""
    def _run(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", tmp_path)
        return run_cli(*args, **kw)
    return _run
