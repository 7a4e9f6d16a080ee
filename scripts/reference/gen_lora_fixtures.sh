#!/usr/bin/env bash
# Writes tests/fixtures/lora/ (see gen_lora_fixtures.py): peft-made LoRA adapters for the tiny
# llama and phi3 checkpoints, converted by llama.cpp's convert_lora_to_gguf.py, with the
# logits transformers+peft and llama.cpp compute with them. Once per machine, never in CI;
# needs build-llamacpp.sh and the family fixtures (gen_family_fixtures.sh) first.
set -euo pipefail
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
[ -f "$HOME_DIR/build/bin/libllama.so" ] || { echo "run scripts/reference/build-llamacpp.sh first" >&2; exit 1; }
VENV=${HF_VENV:-$HOME/.cache/ledge/hfvenv}
if ! "$VENV/bin/python" -c "import torch, transformers, peft, sentencepiece" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.25.0 peft safetensors sentencepiece protobuf numpy
fi
LLAMACPP_HOME=$HOME_DIR "$VENV/bin/python" "$(dirname "$0")/gen_lora_fixtures.py" "$@"
