#!/usr/bin/env bash
# The test command (README): everything the tests need is installed here, so it passes on
# a fresh machine. Steps: fetch the real models and the evaluation text if absent, a Python
# venv with the `gguf` package (an independent GGUF reader the tests compare against),
# format and lint checks, then the whole test suite in release mode; last, the aarch64 build
# under qemu (cross/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "models"
bash scripts/fetch-models.sh

step "llama.cpp's tokenizer tests and chat templates (data/llamacpp-vocab, from PyPI's llama-cpp-python source)"
bash scripts/fetch-vocab.sh

step "evaluation text (data/eval: tests/eval.rs compares perplexity with llama.cpp on it)"
bash scripts/fetch-eval-text.sh

step "python venv (target/pyenv: gguf, numpy)"
VENV=$ROOT/target/pyenv
GGUF_PY=0.19.0
if ! "$VENV/bin/python" -c "import gguf, numpy, importlib.metadata as m; assert m.version('gguf') == '$GGUF_PY'" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "gguf==$GGUF_PY" numpy
fi
export LEDGE_PYTHON=$VENV/bin/python

step "python: openai client for the ledge serve test"
OPENAI_PY=3.54.0
if ! "$VENV/bin/python" -c "import openai, importlib.metadata as m; assert m.version('openai') == '$OPENAI_PY'" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "openai==$OPENAI_PY"
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --release"
cargo test --release

step "ledge serve with the official openai client (scripts/test_serve.py)"
"$VENV/bin/python" scripts/test_serve.py

step "ledge serve under a small fixed load (scripts/load_test.py: 8 requests, 4 streams)"
"$VENV/bin/python" scripts/load_test.py --serve target/release/ledge \
  --serve-args "-m models/SmolLM2-135M-Instruct.Q4_1.gguf --parallel 4 --ctx 512" \
  -n 8 -c 4 --max-tokens 16 --max-seconds 60

step "aarch64 under qemu: NEON kernel tests and SmolLM2/Gemma generation: i8mm, dotprod, plain NEON"
bash cross/setup.sh
bash cross/test-aarch64.sh
