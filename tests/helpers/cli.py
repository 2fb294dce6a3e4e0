"""The real `phylolm` entry point as a user runs it: in a subprocess, with settings only from the test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Environment of a job under test: every setting from the test, none from the caller's shell.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PHYLOLM_", "HF_"))}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `phylolm` entry point in a subprocess (as a user would)."""
    # Settings come only from the test: no catalog or config leaks in from the caller's shell.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHYLOLM_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def simulate_hub(out: Path, *, models: int, seed: int, genes: int, samples: int) -> Path:
    """Write a simulated ecosystem's Hub folder at ``out`` with `phylolm simulate`; returns ``out``."""
    r = run_cli("simulate", "--models", str(models), "--seed", str(seed), "--genes", str(genes),
                "--samples", str(samples), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out
