#!/usr/bin/env bash
# Fingerprints ledge's numerics on the real models, per kernel set: the sha256 of the top-k
# logits `ledge eval --save-logits` writes over two 128-token chunks of the evaluation text
# (prompt path), and of a 48-token greedy continuation (one-token path). Run it before and
# after a change that must not alter the numbers, then `diff` the two outputs.
#   scripts/logits-fingerprint.sh [LEDGE_BINARY] > before.txt
# Sets: every one this CPU has among avx512, avx2, scalar (LEDGE_SIMD_SETS overrides).
# Besides the two fetched models it makes SmolLM2 Q4_0, Q5_0, Q8_0 and Q4_K_M copies (in
# target/fingerprint/, reused) so every repacked layout is covered.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LEDGE=${1:-$ROOT/target/release/ledge}
TEXT=$ROOT/data/eval/botchan.txt
WORK=$ROOT/target/fingerprint
mkdir -p "$WORK"
SMOL=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
MODELS=("$SMOL" "$ROOT/models/gemma-3-270m-q4_k_m.gguf")
for ty in Q4_0 Q5_0 Q8_0 Q4_K_M; do
  f=$WORK/smollm2-$ty.gguf
  [ -s "$f" ] || "$LEDGE" quantize --allow-requantize "$SMOL" "$f" "$ty" >/dev/null 2>&1
  MODELS+=("$f")
done
SETS=${LEDGE_SIMD_SETS:-"avx512 avx2 scalar"}
for set in $SETS; do
  if ! LEDGE_SIMD=$set "$LEDGE" run -m "$SMOL" -p hi -n 1 --temp 0 >/dev/null 2>&1; then
    echo "# $set: not on this CPU"; continue
  fi
  for m in "${MODELS[@]}"; do
    out=$WORK/logits.bin
    rm -f "$out"
    LEDGE_SIMD=$set "$LEDGE" eval -m "$m" -f "$TEXT" -c 128 --chunks 2 --top-k 4096 \
      --save-logits "$out" >/dev/null 2>&1
    prompt=$(sha256sum "$out" | cut -c1-16)
    gen=$(LEDGE_SIMD=$set "$LEDGE" run -m "$m" -p "The old house at the end of the lane" \
      -n 48 --temp 0 2>/dev/null | sha256sum | cut -c1-16)
    echo "$set $(basename "$m") prompt-logits=$prompt greedy=$gen"
  done
done
