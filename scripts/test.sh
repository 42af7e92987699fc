#!/usr/bin/env bash
# Run the test suite (sets up first, so it works on a fresh clone). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The llama.cpp peers of `leapdecode bench` are an optional extra; the tests use them. It
# compiles from source once (several minutes); pip's wheel cache makes later installs quick.
.venv/bin/python -c "import llama_cpp" 2>/dev/null ||
    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/python -m pip --disable-pip-version-check -q install 'llama-cpp-python==0.3.36'
exec .venv/bin/python -m pytest "$@"
