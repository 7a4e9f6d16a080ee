#!/usr/bin/env bash
# By-hand check (machine-local, not CI) of `ledge distill` on a real model, with llama.cpp as
# the judge of its outputs. SmolLM2's F16 copy is the teacher; the student is that copy with a
# quarter of its FFN channels pruned (Q8_0). The student is distilled on the calibration half
# of the book (data/eval/botchan-calib.txt) into a merged GGUF and an adapter; then on the
# held-out half, llama-perplexity and `ledge eval` print the perplexity and the KL divergence
# from the teacher: the pruned student, the student with the adapter (--lora), the merged file.
# The two runtimes should agree, and distillation should lower the KLD on both.
# Env: TOKENS (61440: three passes), LR (3e-3), PRUNE (0.25), CHUNKS (8), SRC (an F16 GGUF; made from
# models/ if unset), W (work folder, kept if given), EXTRA (more `ledge distill` flags).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LLAMACPP_BIN:-$HOME/.cache/ledge/llamacpp/build/bin}
LEDGE=$ROOT/target/release/ledge
TOKENS=${TOKENS:-61440} LR=${LR:-3e-3} PRUNE=${PRUNE:-0.25} CTX=512 CHUNKS=${CHUNKS:-8}
CALIB=$ROOT/data/eval/botchan-calib.txt
HELDOUT=$ROOT/data/eval/botchan-heldout.txt
if [ -z "${W:-}" ]; then W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi
mkdir -p "$W"
SRC=${SRC:-$W/smol-f16.gguf}
[ -f "$HELDOUT" ] || bash "$ROOT/scripts/fetch-eval-text.sh" > /dev/null
(cd "$ROOT" && cargo build --release -q)
[ -f "$SRC" ] || "$LEDGE" quantize --allow-requantize "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$SRC" F16 > /dev/null
[ -f "$W/pruned.gguf" ] || "$LEDGE" quantize "$SRC" "$W/pruned.gguf" Q8_0 --prune-ffn "$PRUNE" \
  --calib "$CALIB" > /dev/null 2>&1
"$LEDGE" distill --teacher "$SRC" --student "$W/pruned.gguf" --train "$CALIB" \
  -o "$W/merged.gguf" --adapter-out "$W/a.gguf" --train-norms false --tokens "$TOKENS" \
  --lr "$LR" --save-every 0 ${EXTRA:-} 2> /dev/null
"$BIN/llama-perplexity" -m "$SRC" -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" -t 2 \
  --kl-divergence-base "$W/base.kld" > /dev/null 2>&1

# llama.cpp: "Mean PPL(Q)  : x ± e" and "Mean    KLD:   x ±   e".
lcpp() {
  "$BIN/llama-perplexity" -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" -t 2 \
    --kl-divergence-base "$W/base.kld" --kl-divergence "$@" 2>&1 |
    awk '/^Mean PPL\(Q\) +:/ {p=$4} /^Mean +KLD:/ {k=$3} END {printf "%s %s", p, k}'
}
ldg() {
  "$LEDGE" eval -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" --baseline "$SRC" --json "$@" \
    2> /dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["ppl"]["value"],4), round(r["kld"]["kld_mean"]["value"],6), end="")'
}
printf '%-24s %-22s %-22s\n' "model" "llama.cpp PPL KLD" "ledge PPL KLD"
printf '%-24s %-22s %-22s\n' "pruned" "$(lcpp -m "$W/pruned.gguf")" "$(ldg -m "$W/pruned.gguf")"
printf '%-24s %-22s %-22s\n' "pruned + adapter" "$(lcpp -m "$W/pruned.gguf" --lora "$W/a.gguf")" \
  "$(ldg -m "$W/pruned.gguf" --lora "$W/a.gguf")"
printf '%-24s %-22s %-22s\n' "merged" "$(lcpp -m "$W/merged.gguf")" "$(ldg -m "$W/merged.gguf")"
