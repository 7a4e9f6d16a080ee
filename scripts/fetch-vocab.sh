#!/usr/bin/env bash
# Fetches llama.cpp's own tokenizer test data into data/llamacpp-vocab/: the vocabulary-only
# GGUFs of real models (ggml-vocab-{qwen2,llama-bpe,phi-3,llama-spm,gpt-2}.gguf) with
# llama.cpp's inputs (.inp: code, digits, CJK, emoji, whitespace runs) and expected ids
# (.out), and the real chat templates of the families ledge
# runs (models/templates/*.jinja). They ship in PyPI's llama-cpp-python source package, which
# vendors llama.cpp; tests/vocab_llamacpp.rs and tests/chat_templates.rs read them.
# Idempotent; the sdist is checksummed and cached in ${LEDGE_CACHE:-~/.cache/ledge}.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/data/llamacpp-vocab
VERSION=0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${LEDGE_CACHE:-$HOME/.cache/ledge}/sdist
PY=${PYTHON:-python3}
STAMP=$OUT/.llama-cpp-python-$VERSION

if [ -f "$STAMP" ]; then
  echo "ok: $OUT (llama-cpp-python $VERSION)"
  exit 0
fi
mkdir -p "$CACHE"
SDIST=$CACHE/llama_cpp_python-$VERSION.tar.gz
# build-llamacpp.sh downloads the same file; reuse it.
SHARED=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}/dl/llama_cpp_python-$VERSION.tar.gz
if [ ! -f "$SDIST" ] && [ -f "$SHARED" ]; then
  cp "$SHARED" "$SDIST.tmp" && mv "$SDIST.tmp" "$SDIST"
fi
if [ ! -f "$SDIST" ]; then
  echo "  downloading llama-cpp-python $VERSION source (77 MB)" >&2
  "$PY" -m pip download --no-deps --no-binary :all: --progress-bar on -d "$CACHE" "llama-cpp-python==$VERSION" >&2
fi
if [ "$(sha256sum "$SDIST" | cut -d' ' -f1)" != "$SHA" ]; then
  echo "error: $SDIST: sha256 mismatch (expected $SHA)" >&2
  exit 1
fi

TMP=$OUT.tmp
rm -rf "$TMP"
mkdir -p "$TMP/templates"
"$PY" - "$SDIST" "$TMP" <<'PYEOF'
import os, sys, tarfile
sdist, out = sys.argv[1:]
vocabs = ["qwen2", "llama-bpe", "phi-3", "llama-spm", "gpt-2"]
templates = [
    "Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "Qwen-QwQ-32B",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct", "microsoft-Phi-3.5-mini-instruct",
    "google-gemma-2-2b-it", "mistralai-Mistral-Nemo-Instruct-2407",
    "HuggingFaceTB-SmolLM3-3B",
]
want = {}
for v in vocabs:
    for ext in ("", ".inp", ".out"):
        want[f"models/ggml-vocab-{v}.gguf{ext}"] = f"ggml-vocab-{v}.gguf{ext}"
for t in templates:
    want[f"models/templates/{t}.jinja"] = f"templates/{t}.jinja"
with tarfile.open(sdist) as tf:
    for m in tf.getmembers():
        rel = m.name.split("/vendor/llama.cpp/", 1)
        if len(rel) == 2 and rel[1] in want and m.isfile():
            with tf.extractfile(m) as src, open(os.path.join(out, want.pop(rel[1])), "wb") as dst:
                dst.write(src.read())
if want:
    sys.exit(f"error: not in the sdist: {sorted(want)}")
PYEOF
touch "$TMP/.llama-cpp-python-$VERSION"
rm -rf "$OUT"
mv "$TMP" "$OUT"
echo "ok: $OUT ($(ls "$OUT" | wc -l) files)"
