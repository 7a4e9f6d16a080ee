#!/usr/bin/env bash
# Regenerates tests/fixtures/quant/ from two oracles independent of ledge: the `gguf` PyPI
# package (numpy) and ggml's own C reference code, compiled from the llama.cpp source inside
# PyPI's llama-cpp-python sdist (fetched into a cache, never committed). Deterministic: a
# rerun writes identical files. Not run by CI; the fixtures are committed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$ROOT/tests/fixtures/quant
CACHE=${LEDGE_CACHE:-$HOME/.cache/ledge}
LCP_VERSION=0.3.36
GGUF_PY=0.19.0

VENV=$ROOT/target/refenv
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('gguf') == '$GGUF_PY'" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "gguf==$GGUF_PY" numpy
fi
echo "== gguf-py fixtures"
"$VENV/bin/python" "$ROOT/scripts/reference/gen_quant_fixtures.py" "$OUT"

SRC=$CACHE/llama_cpp_python-$LCP_VERSION
if [ ! -d "$SRC" ]; then
  echo "== fetching llama-cpp-python $LCP_VERSION source"
  mkdir -p "$CACHE/dl"
  pip download --no-deps -d "$CACHE/dl" "llama-cpp-python==$LCP_VERSION"
  tar -xzf "$CACHE/dl/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$CACHE"
fi
G=$SRC/vendor/llama.cpp/ggml
BIN=$ROOT/target/ggml_quant_ref
echo "== building the ggml C oracle"
# No -march: ggml's reference functions compiled for baseline x86-64, so no FMA contraction
# changes their rounding (llama.cpp's own -march=native build may contract a*b+c).
gcc -O2 -std=gnu11 -ffp-contract=off -I "$G/include" -I "$G/src" -I "$G/src/ggml-cpu" \
  "$ROOT/scripts/reference/ggml_quant_ref.c" "$G/src/ggml-quants.c" "$G/src/ggml-cpu/quants.c" \
  -lm -o "$BIN"
"$BIN" "$OUT" 16
{
  echo "gguf (PyPI) $GGUF_PY"
  echo "llama-cpp-python (PyPI sdist) $LCP_VERSION: ggml-quants.c, ggml-cpu/quants.c"
  echo "gcc: $(gcc --version | head -n1)"
} > "$OUT/VERSIONS.txt"
echo "== wrote $(ls "$OUT" | wc -l) files to tests/fixtures/quant"
