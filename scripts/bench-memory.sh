#!/usr/bin/env bash
# Peak resident memory and load-to-first-token time, ledge beside llama.cpp, same files, same
# run: `ledge run -n 1` and llama.cpp's `llama-simple -n 1` (from
# scripts/reference/build-llamacpp.sh), each under /usr/bin/time, the file already in the page
# cache (a first untimed run reads it), ROUNDS rounds interleaved, best of each side. Prints
# the file size, the KV cache each side holds (a short context on both: the prompt and one
# token), peak RSS and its ratio to file + KV, and the wall time.
# Usage: scripts/bench-memory.sh MODEL.gguf ...   (LEDGE_SIMD picks ledge's kernel set,
# LLAMACPP_BUILD llama.cpp's build, THREADS both sides' threads)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LCPP=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}/${LLAMACPP_BUILD:-build}/bin
[ -x "$LCPP/llama-simple" ] || { echo "llama-simple missing: run scripts/reference/build-llamacpp.sh" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: $0 MODEL.gguf ..." >&2; exit 2; }
ROUNDS=${ROUNDS:-2}; THREADS=${THREADS:-2}
PROMPT="The capital of France is"
CTX=64
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
LEDGE=$ROOT/target/release/ledge
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "ledge: $("$LEDGE" run -v -p x -n 1 -c $CTX -m "$1" 2>&1 >/dev/null | grep -o 'kernels: [a-z0-9-]*' | head -1)${LEDGE_SIMD:+ (LEDGE_SIMD=$LEDGE_SIMD)}; llama.cpp: $LCPP"
echo
echo "| model | file MB | side | KV MB | peak RSS MB | RSS / (file + KV) | load + first token s |"
echo "|---|---:|---|---:|---:|---:|---:|"
for m in "$@"; do
  size=$(stat -c %s "$m")
  cat "$m" > /dev/null   # into the page cache: both sides then time a warm load
  best() { sort -n -k1 "$1" | head -1; }
  : > "$TMP/l"; : > "$TMP/c"
  for _ in $(seq "$ROUNDS"); do
    /usr/bin/time -f '%e %M' -o "$TMP/t" "$LEDGE" run -m "$m" -p "$PROMPT" -n 1 -c $CTX -t "$THREADS" \
      > /dev/null 2> "$TMP/ledge.err" || { cat "$TMP/ledge.err" >&2; exit 1; }
    tail -1 "$TMP/t" >> "$TMP/l"
    LD_LIBRARY_PATH=$LCPP /usr/bin/time -f '%e %M' -o "$TMP/t" "$LCPP/llama-simple" -m "$m" -n 1 "$PROMPT" \
      > /dev/null 2> "$TMP/llama.err" || { cat "$TMP/llama.err" >&2; exit 1; }
    tail -1 "$TMP/t" >> "$TMP/c"
  done
  # KV: ledge's from its model header (layers, kv width) and CTX; llama.cpp's from its log.
  kv_l=$("$LEDGE" inspect "$m" 2>/dev/null | python3 -c "
import re, sys
t = sys.stdin.read()
g = lambda k: int(re.search(r'(?<![\w.])' + k.replace('.', r'\.') + r'\s+(\d+)', t).group(1))
hk = g('embedding_length') // g('attention.head_count')
print(g('block_count') * $CTX * g('attention.head_count_kv') * hk * 2 * 2)" 2>/dev/null || echo 0)
  kv_c=$(grep -oE 'llama_kv_cache: *size = *[0-9.]+ MiB' "$TMP/llama.err" | grep -oE '[0-9.]+ MiB' | head -1 | awk '{print int($1 * 1048576)}')
  for side in ledge llama.cpp; do
    f=$TMP/l; kv=$kv_l; [ $side = llama.cpp ] && { f=$TMP/c; kv=${kv_c:-0}; }
    read -r secs_min _ < <(sort -n -k1 "$f" | head -1)
    rss_kb=$(sort -n -k2 "$f" | head -1 | cut -d' ' -f2)
    python3 -c "
size, kv, rss = $size, $kv, $rss_kb * 1024
print(f'| $(basename "$m") | {size/1e6:.0f} | $side | {kv/1e6:.0f} | {rss/1e6:.0f} | {rss/(size+kv):.3f} | $secs_min |')"
  done
done
