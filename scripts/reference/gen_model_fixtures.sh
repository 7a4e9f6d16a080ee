#!/usr/bin/env bash
# Writes tests/fixtures/reference/*.json from llama.cpp (see gen_model_fixtures.py).
set -euo pipefail
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
[ -x "$HOME_DIR/build/bin/llama-cli" ] || { echo "run scripts/reference/build-llamacpp.sh first" >&2; exit 1; }
export LLAMA_CPP_LIB_PATH=$HOME_DIR/build/bin
exec "$HOME_DIR/venv/bin/python" "$(dirname "$0")/gen_model_fixtures.py"
