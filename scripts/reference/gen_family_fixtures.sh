#!/usr/bin/env bash
# Writes tests/fixtures/families/<fam>/ (see gen_family_fixtures.py): tiny HF checkpoints of
# each family, llama.cpp's conversions and quantizations, and the references' logits.
# Once per machine, never in CI; needs build-llamacpp.sh (native and generic builds) first.
#   scripts/reference/gen_family_fixtures.sh [family …]
set -euo pipefail
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
[ -f "$HOME_DIR/build-generic/bin/libllama.so" ] || { echo "run scripts/reference/build-llamacpp.sh first" >&2; exit 1; }
VENV=${HF_VENV:-$HOME/.cache/ledge/hfvenv}
if ! "$VENV/bin/python" -c "import torch, transformers, sentencepiece, tokenizers" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.25.0 safetensors sentencepiece protobuf numpy
fi
LLAMACPP_HOME=$HOME_DIR "$VENV/bin/python" "$(dirname "$0")/gen_family_fixtures.py" "$@"
