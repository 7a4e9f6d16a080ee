#!/usr/bin/env bash
# By-hand check of the converter against llama.cpp (machine-local, not CI):
#  1. export SmolLM2 (Q4_1) to an HF folder in F16, convert it back to F16 and Q8_0 with ledge;
#  2. llama-simple (greedy) and `ledge run --temp 0` must print the same text on both files;
#  3. llama-quantize and `ledge quantize` of the F16 file to Q8_0, Q4_0, Q4_K_M, Q3_K_M must
#     give the same tensor types and bytes (compared with the gguf package).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LLAMACPP_BIN:-$HOME/.cache/ledge/llamacpp/build/bin}
PY=${LEDGE_PYTHON:-$ROOT/target/pyenv/bin/python}
LEDGE=$ROOT/target/release/ledge
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$ROOT" && cargo build --release -q
PROMPT=${PROMPT:-The capital of France is}

"$LEDGE" export-hf models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$W/hf" --dtype f16 >/dev/null
fail=0
for t in f16 q8_0; do
  "$LEDGE" convert "$W/hf" -o "$W/smol-$t.gguf" --type "$t" >/dev/null 2>&1
  a=$("$BIN/llama-simple" -m "$W/smol-$t.gguf" -n 32 "$PROMPT" 2>/dev/null)
  b=$("$LEDGE" run -m "$W/smol-$t.gguf" -p "$PROMPT" -n 32 --temp 0 2>/dev/null)
  if [ "$a" == "$b" ]; then echo "$t: llama.cpp and ledge agree: ${a//$'\n'/⏎}"; else
    echo "$t: DIFFER"; echo " llama.cpp: $a"; echo " ledge:     $b"; fail=1; fi
done
for t in Q8_0 Q4_0 Q4_K_M Q3_K_M; do
  "$BIN/llama-quantize" "$W/smol-f16.gguf" "$W/lq-$t.gguf" "$t" >/dev/null 2>&1
  "$LEDGE" quantize "$W/smol-f16.gguf" "$W/ld-$t.gguf" "$t" >/dev/null 2>&1
  "$PY" - "$W/lq-$t.gguf" "$W/ld-$t.gguf" "$t" <<'PYEOF' || fail=1
import sys, os, gguf, numpy as np
a, b, t = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2]), sys.argv[3]
ta = {x.name: x for x in a.tensors}; tb = {x.name: x for x in b.tensors}
assert set(ta) == set(tb), "tensor names differ"
ty = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type]
by = [n for n in ta if n not in ty and not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))]
print(f"{t}: llama-quantize {os.path.getsize(sys.argv[1])} bytes, ledge {os.path.getsize(sys.argv[2])} bytes; "
      f"{len(ty)} tensors of another type, {len(by)} with other bytes")
sys.exit(1 if ty or by else 0)
PYEOF
done
exit $fail
