#!/usr/bin/env bash
# Writes tests/fixtures/reference/*.json from llama.cpp (see gen_model_fixtures.py).
set -euo pipefail
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
[ -x "$HOME_DIR/build/bin/llama-cli" ] || { echo "run scripts/reference/build-llamacpp.sh first" >&2; exit 1; }
PY=$HOME_DIR/venv/bin/python
# The native build (what users run), then the generic one (suffix .generic).
LLAMA_CPP_LIB_PATH=$HOME_DIR/build/bin "$PY" "$(dirname "$0")/gen_model_fixtures.py"
[ -f "$HOME_DIR/build-generic/bin/libllama.so" ] || { echo "no build-generic: rerun build-llamacpp.sh" >&2; exit 1; }
LLAMA_CPP_LIB_PATH=$HOME_DIR/build-generic/bin LLAMA_QUANTIZE_DIR=$HOME_DIR/build/bin \
  FIXTURE_SUFFIX=.generic "$PY" "$(dirname "$0")/gen_model_fixtures.py"
