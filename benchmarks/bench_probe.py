"""Probe benchmark for every backend available here, one after the other, as JSON lines.

    python benchmarks/bench_probe.py [--genes 128] [--samples 32] [--baseline-genes 8]

Runs ``phylolm bench probe --backend B --json`` for transformers, then vllm and openai
(a loopback ``vllm serve``) when a vLLM interpreter is found (PHYLOLM_VLLM_PYTHON or
.venv-vllm beside the checkout). Figures only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--baseline-genes", type=int, default=8)
    args = ap.parse_args()
    env = dict(os.environ)
    beside = ROOT / ".venv-vllm" / "bin" / "python"
    if not env.get("PHYLOLM_VLLM_PYTHON") and beside.is_file():
        env["PHYLOLM_VLLM_PYTHON"] = str(beside)
    backends = ["transformers"] + (["vllm", "openai"] if env.get("PHYLOLM_VLLM_PYTHON") else [])
    for backend in backends:
        cmd = [sys.executable, "-m", "indexer", "bench", "probe", "--backend", backend, "--genes", str(args.genes),
               "--samples", str(args.samples), "--json"]
        if backend == "transformers":
            cmd += ["--baseline-genes", str(args.baseline_genes)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            print(json.dumps({"backend": backend, "error": done.stderr.strip().splitlines()[-1:]}))
            continue
        print(json.dumps(json.loads(done.stdout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
