"""The layout's boundaries, as import contracts (``.importlinter``), checked by import-linter.

The layers: cli > app, bench > testbed > adapters > core; the core imports no adapter, no
database, records, HTTP client, engine or Beam; adapters do not import each other; only
``pipelines/`` imports Beam; the CLI reaches an adapter only through its package's public
names. The second test breaks a boundary in a scratch copy of the tree and
checks that the contracts catch it, so a contract that had stopped matching anything would fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.skip("import-linter is not installed (it is in the `test` extra: pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = next(s for s in r.stdout.splitlines() if s.startswith("Contracts:"))
    assert summary.endswith(" 0 broken."), summary


@pytest.mark.parametrize("module, line, contract", [
    ("indexer/core/alleles.py", "import duckdb", "The core does no I/O"),
    ("indexer/core/distance.py", "from indexer.adapters import catalog", "Layers"),
    ("indexer/adapters/publish/__init__.py", "from indexer.adapters.hub import client", "Adapters know nothing of each other"),
    ("indexer/app/job.py", "import apache_beam", "Only pipelines/ imports Beam"),
    ("indexer/cli/probe_cmds.py", "import indexer.adapters.probers.vllm_backend", "The CLI reaches adapters only"),
])
def test_a_crossed_boundary_is_caught(tmp_path, module, line, contract):
    for name in ("indexer", "pipelines", "schemas"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / module
    target.write_text(f"{line}  # a deliberate violation\n" + target.read_text())
    r = _lint(tmp_path)
    assert r.returncode != 0
    broken = [s for s in r.stdout.splitlines() if s.endswith("BROKEN")]
    assert any(s.startswith(contract) for s in broken), r.stdout[-3000:]
