#!/usr/bin/env bash
# Train the heads shipped in src/leapdecode/heads/shipped/ (docs/heads.md). Meant for a CUDA
# machine; MODEL may be the packaged name or the same GGUF file given by path.
#   bash scripts/train_shipped_heads.sh [MODEL] [OUT]
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-heads-out}
LEAPDECODE=${LEAPDECODE:-leapdecode}
DATA="--prompts 6000 --passages 1500 --max-new-tokens 256 --gen-batch 256 --vocab 8192 --max-len 640 --device cuda"
mkdir -p "$OUT/eagle" "$OUT/medusa"
# stage 1-2 (the target's own answers and features) once, reused by the second head
$LEAPDECODE train-head --model "$MODEL" --name smollm2-135m --kind eagle --out "$OUT/eagle" $DATA \
    --steps 4000 --batch 32 --unroll 3
cp "$OUT/eagle/data.pt" "$OUT/medusa/data.pt"
# (the shipped medusa head is this run's step-407 checkpoint: the GPU time ran out; docs/heads.md)
$LEAPDECODE train-head --model "$MODEL" --name smollm2-135m --kind medusa --out "$OUT/medusa" $DATA \
    --steps 1500 --batch 32 --medusa-heads 4
