#!/usr/bin/env bash
# By-hand check of head pruning against llama.cpp (machine-local, not CI): prune 1 of
# SmolLM2's 3 KV groups per block (with and without the attn_output re-fit) from the F16
# copy, then llama-simple (greedy) and `ledge run --temp 0` must print the same text.
# SRC defaults to /work/data/smol-f16.gguf; CALIB to data/eval/botchan-calib.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LLAMACPP_BIN:-$HOME/.cache/ledge/llamacpp/build/bin}
LEDGE=$ROOT/target/release/ledge
SRC=${SRC:-/work/data/smol-f16.gguf}
CALIB=${CALIB:-$ROOT/data/eval/botchan-calib.txt}
PROMPT=${PROMPT:-The capital of France is}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$ROOT" && cargo build --release -q
fail=0
for v in refit no-refit; do
  extra=()
  [ "$v" == no-refit ] && extra=(--no-refit)
  "$LEDGE" quantize "$SRC" "$W/h1-$v.gguf" F16 --prune-heads 1 --calib "$CALIB" \
    --calib-chunks "${CHUNKS:-8}" "${extra[@]}" >/dev/null 2>&1
  a=$("$BIN/llama-simple" -m "$W/h1-$v.gguf" -n 32 "$PROMPT" 2>/dev/null)
  b=$("$LEDGE" run -m "$W/h1-$v.gguf" -p "$PROMPT" -n 32 --temp 0 2>/dev/null)
  if [ "$a" == "$b" ]; then echo "$v: llama.cpp and ledge agree: ${a//$'\n'/⏎}"; else
    echo "$v: DIFFER"; echo " llama.cpp: $a"; echo " ledge:     $b"; fail=1; fi
done
exit $fail
