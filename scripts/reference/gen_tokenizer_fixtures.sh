#!/usr/bin/env bash
# Writes tests/fixtures/tokenizer/*.json from llama.cpp's tokenizer (see gen_tokenizer_fixtures.py).
set -euo pipefail
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
[ -e "$HOME_DIR/build/bin/libllama.so" ] || { echo "run scripts/reference/build-llamacpp.sh first" >&2; exit 1; }
export LLAMA_CPP_LIB_PATH=$HOME_DIR/build/bin
exec "$HOME_DIR/venv/bin/python" "$(dirname "$0")/gen_tokenizer_fixtures.py" "$@"
