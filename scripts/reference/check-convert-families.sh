#!/usr/bin/env bash
# By-hand check (machine-local, not CI) that llama.cpp runs what `ledge convert` writes for
# every family: each tiny HF checkpoint of tests/fixtures/families/<fam>/hf is converted by
# ledge to F32 and Q8_0; llama.cpp (its Python bindings over the native build) then runs
# each file greedily from the fixture's prompts, and its token ids must equal its own run on
# its own conversion (reference.json) — which tests/convert_families.rs shows equal to
# ledge's greedy ids on ledge's file. Needs scripts/reference/build-llamacpp.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
LEDGE=$ROOT/target/release/ledge
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$ROOT" && cargo build --release -q
fail=0
for fam in llama qwen2 qwen3 qwen3moe phi3 gemma2; do
  D=$ROOT/tests/fixtures/families/$fam
  for t in F32 Q8_0; do
    "$LEDGE" convert "$D/hf" -o "$W/$fam-$t.gguf" --type "$t" >/dev/null 2>&1
    v=$(echo "$t" | tr 'A-Z' 'a-z')
    LLAMA_CPP_LIB_PATH=$HOME_DIR/build/bin "$HOME_DIR/venv/bin/python" - "$W/$fam-$t.gguf" "$D/reference.json" "$v" "$fam" <<'PYEOF' || fail=1
import json, sys
import numpy as np
from llama_cpp import Llama
path, ref, v, fam = sys.argv[1:]
r = json.load(open(ref))
llm = Llama(model_path=path, n_ctx=128, n_threads=2, logits_all=True, verbose=False, seed=0)
same = 0
for i, ids in enumerate(r["ids"]):
    llm.reset(); llm.eval(ids)
    gen = []
    for _ in range(16):
        t = int(np.argmax(np.array(llm.scores[llm.n_tokens - 1]))); gen.append(t); llm.eval([t])
    want = r["llamacpp"][v][i]["greedy"]
    same += gen == want
    if gen != want:
        print(f"{fam} {v} case {i}: llama.cpp on ledge's file {gen}\n   on llama.cpp's file {want}")
print(f"{fam} {v}: llama.cpp's greedy ids on ledge's conversion equal those on its own: {same}/{len(r['ids'])}")
sys.exit(0 if same == len(r["ids"]) else 1)
PYEOF
  done
done
exit $fail
