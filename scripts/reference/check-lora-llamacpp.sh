#!/usr/bin/env bash
# By-hand check (machine-local, not CI) that ledge's LoRA adapters load in llama.cpp and act
# there as in ledge. SmolLM2's F16 copy is calibrated (data/eval/botchan-calib.txt) and
# quantized with a rank-R repair of the quantization error written as an adapter
# (`ledge quantize --gram --lowrank-repair R --adapter-out`); then on the held-out text
# llama-perplexity and `ledge eval` print the perplexity and the KL divergence from the F16
# copy, without the adapter, with it, and at half scale (llama.cpp's --lora-scaled). The two
# runtimes should agree to within their kernel noise (scripts/reference/README.md), and the
# adapter should lower the KLD on both. Last, llama.cpp (through its Python binding, which
# takes a raw prompt and --lora alike) and `ledge run --temp 0` continue a few prompts
# greedily with the adapter and without; the script prints where the texts part, if they do.
# Env: TYPE (Q4_0), RANK (16), BUDGET (a percentage: --lowrank-budget instead of one rank),
# IMATRIX (1: quantize with the calibration's imatrix), CHUNKS (8), SRC (an F16 GGUF; made
# from models/ if unset), W (work folder, kept if given).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LLAMACPP_BIN:-$HOME/.cache/ledge/llamacpp/build/bin}
LEDGE=$ROOT/target/release/ledge
TYPE=${TYPE:-Q4_0} RANK=${RANK:-16} CTX=512 CHUNKS=${CHUNKS:-8} BUDGET=${BUDGET:-} IMATRIX=${IMATRIX:-}
PY=${LLAMACPP_PY:-$HOME/.cache/ledge/llamacpp/venv/bin/python}
CALIB=$ROOT/data/eval/botchan-calib.txt
HELDOUT=$ROOT/data/eval/botchan-heldout.txt
if [ -z "${W:-}" ]; then W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; fi
mkdir -p "$W"
SRC=${SRC:-$W/smol-f16.gguf}
[ -f "$HELDOUT" ] || bash "$ROOT/scripts/fetch-eval-text.sh" > /dev/null
(cd "$ROOT" && cargo build --release -q)
[ -f "$SRC" ] || "$LEDGE" quantize --allow-requantize "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$SRC" F16 > /dev/null
[ -f "$W/x.gram.gguf" ] || "$LEDGE" calibrate -m "$SRC" --text "$CALIB" -o "$W/x.imatrix" \
  --gram "$W/x.gram.gguf" > /dev/null 2>&1
REPAIR=(--lowrank-repair "$RANK")
[ -n "$BUDGET" ] && REPAIR+=(--lowrank-budget "$BUDGET")
[ -n "$IMATRIX" ] && REPAIR+=(--imatrix "$W/x.imatrix")
"$LEDGE" quantize "$SRC" "$W/q.gguf" "$TYPE" --gram "$W/x.gram.gguf" "${REPAIR[@]}" \
  --adapter-out "$W/a.gguf" 2> /dev/null | grep -E '^(wrote|lowrank)'
"$BIN/llama-perplexity" -m "$SRC" -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" -t 2 \
  --kl-divergence-base "$W/base.kld" > /dev/null 2>&1

# llama.cpp: "Mean PPL(Q)  : x ± e" and "Mean    KLD:   x ±   e".
lcpp() {
  "$BIN/llama-perplexity" -m "$W/q.gguf" -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" -t 2 \
    --kl-divergence-base "$W/base.kld" --kl-divergence "$@" 2>&1 |
    awk '/^Mean PPL\(Q\) +:/ {p=$4} /^Mean +KLD:/ {k=$3} END {printf "%s %s", p, k}'
}
ldg() {
  "$LEDGE" eval -m "$W/q.gguf" -f "$HELDOUT" -c $CTX --chunks "$CHUNKS" --baseline "$SRC" \
    --json "$@" 2> /dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["ppl"]["value"],4), round(r["kld"]["kld_mean"]["value"],6), end="")'
}
echo
echo "| $TYPE, SmolLM2 held-out ($CHUNKS × $CTX) | PPL llama.cpp | PPL ledge | KLD llama.cpp | KLD ledge |"
echo "|---|---:|---:|---:|---:|"
# row LABEL LLAMA.CPP-ARGS…, with ledge's arguments in LEDGE_ARGS.
row() {
  local label=$1
  shift
  read -r lp lk <<< "$(lcpp "$@")"
  read -r dp dk <<< "$(ldg "${LEDGE_ARGS[@]}")"
  echo "| $label | $lp | $dp | $lk | $dk |"
}
LEDGE_ARGS=(); row "no adapter"
LABEL="rank-$RANK repair"
[ -n "$BUDGET" ] && LABEL="repair in $BUDGET % of the bytes (ranks ≤ $RANK)"
LEDGE_ARGS=(--lora "$W/a.gguf"); row "$LABEL" --lora "$W/a.gguf"
LEDGE_ARGS=(--lora "$W/a.gguf" --lora-scale 0.5); row "repair at scale 0.5" --lora-scaled "$W/a.gguf:0.5"
ls -l "$W/q.gguf" "$W/a.gguf" | awk '{print $5, $9}'

# Greedy continuations, 48 tokens, one thread on both sides.
cat > "$W/greedy.py" <<'PY'
import sys
from llama_cpp import Llama
model, lora, prompt = sys.argv[1], sys.argv[2] or None, sys.argv[3]
llm = Llama(model_path=model, lora_path=lora, n_ctx=512, n_threads=1, verbose=False)
print(llm(prompt, max_tokens=48, temperature=0.0, top_k=1)["choices"][0]["text"], end="")
PY
echo
echo "| prompt | adapter | greedy texts (48 tokens) |"
echo "|---|---|---|"
for prompt in "Once upon a time" "In the morning, the teacher" "The capital of France is" \
  "def fibonacci(n):" "Water boils at" "My favourite book is"; do
  for a in "" "$W/a.gguf"; do
    x=$(LLAMA_CPP_LIB_PATH=$BIN "$PY" "$W/greedy.py" "$W/q.gguf" "$a" "$prompt" 2> /dev/null)
    y=$("$LEDGE" run -m "$W/q.gguf" ${a:+--lora "$a"} -p "$prompt" -n 48 --temp 0 -t 1 2> /dev/null)
    y=${y#"$prompt"}
    verdict=$(python3 -c 'import sys
a, b = sys.argv[1], sys.argv[2]
n = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
print("the same" if a == b else f"part after {n} of {len(a)} characters")' "$x" "$y")
    echo "| $prompt | ${a:+yes} | $verdict |"
  done
done
