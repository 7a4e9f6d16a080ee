#!/usr/bin/env bash
# The test command (README): everything the tests need is installed here, so it passes on
# a fresh machine. Steps: fetch the real models if absent, a Python venv with the `gguf`
# package (an independent GGUF reader the tests compare against), format and lint checks,
# then the whole test suite in release mode; last, the aarch64 build under qemu (cross/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "models"
bash scripts/fetch-models.sh

step "python venv (target/pyenv: gguf, numpy)"
VENV=$ROOT/target/pyenv
GGUF_PY=0.19.0
if ! "$VENV/bin/python" -c "import gguf, numpy, importlib.metadata as m; assert m.version('gguf') == '$GGUF_PY'" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "gguf==$GGUF_PY" numpy
fi
export LEDGE_PYTHON=$VENV/bin/python

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --release"
cargo test --release

step "aarch64 under qemu: NEON kernel tests and SmolLM2/Gemma generation, with and without dotprod"
bash cross/setup.sh
bash cross/test-aarch64.sh
