#!/usr/bin/env bash
# Writes tests/fixtures/eval/llama_perplexity.json: what llama-perplexity prints for the test
# excerpt (tests/fixtures/eval/botchan-excerpt.txt) — PPL of SmolLM2 and Gemma 3, and the
# KL divergence of SmolLM2's Q4_0 variant from the Q4_1 original — and the PPL of both real
# files on 2k+ tokens of the held-out Botchan text (data/eval/botchan-heldout.txt from
# scripts/fetch-eval-text.sh, pinned sha256), where kernel rounding noise averages out.
# Machine-local (needs the llama.cpp build from build-llamacpp.sh); never run in CI.
#
# The Q4_0 variant is the file tests/eval.rs writes (ledge requantizes every Q4_1 tensor):
# run `cargo test --release --test eval kl_divergence` once first so it exists.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${LLAMACPP_BIN:-$HOME/.cache/ledge/llamacpp/build/bin}
TEXT=$ROOT/tests/fixtures/eval/botchan-excerpt.txt
SMOL=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=$ROOT/models/gemma-3-270m-q4_k_m.gguf
VARIANT=$ROOT/target/tmp/eval_q4_0_variant/smollm2-q4_0.gguf
HELDOUT=$ROOT/data/eval/botchan-heldout.txt
PPL_CTX=128 PPL_CHUNKS=8 KLD_CTX=128 KLD_CHUNKS=6
# Held-out text: ctx 512, 8 chunks for SmolLM2 (2040 scored tokens), 4 for Gemma 3 (its
# 262k-entry output makes each chunk ~8x dearer).
LONG_CTX=512 SMOL_LONG_CHUNKS=8 GEMMA_LONG_CHUNKS=4
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[ -f "$HELDOUT" ] || bash "$ROOT/scripts/fetch-eval-text.sh" > /dev/null
[ -f "$VARIANT" ] || { echo "missing $VARIANT: run cargo test --release --test eval kl_divergence first" >&2; exit 1; }

ppl() { "$BIN/llama-perplexity" -m "$1" -f "$TEXT" -c "$2" --chunks "$3" -t 2 "${@:4}" 2>&1; }
ppl "$SMOL" $PPL_CTX $PPL_CHUNKS > "$TMP/smol.log"
ppl "$GEMMA" $PPL_CTX $PPL_CHUNKS > "$TMP/gemma.log"
# Gemma with every tensor dequantized to F32: no quantized kernel involved on either side, so
# this isolates the protocol (tokenization, BOS, chunking, scoring) from kernel rounding.
"$BIN/llama-quantize" --allow-requantize "$GEMMA" "$TMP/gemma-f32.gguf" F32 2 > /dev/null 2>&1
ppl "$TMP/gemma-f32.gguf" $PPL_CTX $PPL_CHUNKS > "$TMP/gemma-f32.log"
rm -f "$TMP/gemma-f32.gguf"
ppl "$SMOL" $KLD_CTX $KLD_CHUNKS --kl-divergence-base "$TMP/base.kld" > "$TMP/base.log"
ppl "$VARIANT" $KLD_CTX $KLD_CHUNKS --kl-divergence-base "$TMP/base.kld" --kl-divergence > "$TMP/kld.log"
ppl_long() { "$BIN/llama-perplexity" -m "$1" -f "$HELDOUT" -c $LONG_CTX --chunks "$2" -t 2 2>&1; }
ppl_long "$SMOL" $SMOL_LONG_CHUNKS > "$TMP/smol-long.log"
ppl_long "$GEMMA" $GEMMA_LONG_CHUNKS > "$TMP/gemma-long.log"
count() { "$BIN/llama-tokenize" -m "$1" -f "${2:-$TEXT}" --show-count --ids --log-disable 2>/dev/null | sed -n 's/Total number of tokens: //p'; }
# llama-perplexity (like every llama.cpp tool reading -f) drops one trailing newline from the
# text; llama-tokenize does not. The held-out part ends with one: count it without.
perl -pe 'chomp if eof' "$HELDOUT" > "$TMP/heldout.txt"

python3 - "$TMP" "$(sha256sum "$VARIANT" | cut -d' ' -f1)" "$(count "$SMOL")" "$(count "$GEMMA")" \
  $PPL_CTX $PPL_CHUNKS $KLD_CTX $KLD_CHUNKS "$(count "$SMOL" "$TMP/heldout.txt")" "$(count "$GEMMA" "$TMP/heldout.txt")" \
  $LONG_CTX $SMOL_LONG_CHUNKS $GEMMA_LONG_CHUNKS "$(sha256sum "$HELDOUT" | cut -d' ' -f1)" \
  > "$ROOT/tests/fixtures/eval/llama_perplexity.json" <<'PYEOF'
import json, re, sys
tmp, sha, n_smol, n_gemma = sys.argv[1:5]
pc, pn, kc, kn = map(int, sys.argv[5:9])
ln_smol, ln_gemma, lc, lsn, lgn = map(int, sys.argv[9:14])
heldout_sha = sys.argv[14]
def final(path):
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", open(path).read())
    return float(m.group(1)), float(m.group(2))
def stat(text, label):
    m = re.search(re.escape(label) + r"\s*:\s*([-\d.]+)", text)
    return float(m.group(1))
out = {"_source": "llama-perplexity (llama.cpp from llama-cpp-python 0.3.36) on tests/fixtures/eval/botchan-excerpt.txt; scripts/reference/gen_eval_fixtures.sh"}
for key, log, n in (("smollm2_ppl", "smol.log", n_smol), ("gemma3_ppl", "gemma.log", n_gemma),
                    ("gemma3_f32_ppl", "gemma-f32.log", n_gemma)):
    p, e = final(f"{tmp}/{log}")
    out[key] = {"ctx": pc, "chunks": pn, "ppl": p, "ppl_stderr": e, "llama_tokenize_count": int(n)}
for key, log, n, chunks in (("smollm2_ppl_heldout", "smol-long.log", ln_smol, lsn),
                             ("gemma3_ppl_heldout", "gemma-long.log", ln_gemma, lgn)):
    p, e = final(f"{tmp}/{log}")
    out[key] = {"text": "data/eval/botchan-heldout.txt", "text_sha256": heldout_sha, "ctx": lc,
                "chunks": chunks, "ppl": p, "ppl_stderr": e, "llama_tokenize_count": int(n)}
k = open(f"{tmp}/kld.log").read()
out["smollm2_q4_0_vs_q4_1"] = {
    "ctx": kc, "chunks": kn, "variant_sha256": sha,
    "ppl": stat(k, "Mean PPL(Q)"), "ppl_base": stat(k, "Mean PPL(base)"),
    "kld_mean": stat(k, "Mean    KLD"), "kld_median": stat(k, "Median  KLD"),
    "kld_p99": stat(k, "99.0%   KLD"), "kld_max": stat(k, "Maximum KLD"),
    "same_top": stat(k, "Same top p") / 100, "rms_dp": stat(k, "RMS Δp") / 100,
}
print(json.dumps(out, indent=2))
PYEOF
echo "wrote tests/fixtures/eval/llama_perplexity.json" >&2
