#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (the serving peer of `leapdecode loadtest`) from the llama.cpp
# tree vendored in the llama-cpp-python==0.3.36 sdist: the same llama.cpp as the bench's llama.cpp
# peers. Native CPU flags, without AMX (llama.cpp 0.3.36's AMX matmul crashes on the packaged
# model, see test.sh). Cached: prints the binary's path, building it only when it is missing.
#
#     bash scripts/build_llama_server.sh      # -> ~/.cache/leapdecode/llama-server/bin/llama-server
set -euo pipefail
VERSION=0.3.36
ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/leapdecode/llama-server"
BIN="$ROOT/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -d "src/vendor/llama.cpp" ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: --dest sdist "llama-cpp-python==$VERSION" >&2
    rm -rf src && mkdir src
    tar -xzf sdist/llama_cpp_python-$VERSION.tar.gz -C src --strip-components=1
fi
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
echo "building llama-server (a few minutes on 2 cores)..." >&2
cmake -S src/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" >&2
cmake --build build --target llama-server -j "$(nproc)" >&2
mkdir -p bin
cp build/bin/llama-server "$BIN"
echo "$BIN"
