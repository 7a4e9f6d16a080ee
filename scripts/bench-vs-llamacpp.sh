#!/usr/bin/env bash
# ledge bench beside llama-bench on the same model files, same machine, same run, threads 1
# and 2 (or $THREADS), with ledge/llama.cpp ratios. llama-bench comes from
# scripts/reference/build-llamacpp.sh (llama.cpp from PyPI's llama-cpp-python source, Release,
# native CPU features on). Usage: scripts/bench-vs-llamacpp.sh [MODEL.gguf ...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# LLAMACPP_BUILD=build-avx2 (made by `AVX2=1 build-llamacpp.sh`) compares with llama.cpp
# restricted to AVX2; pair it with LEDGE_SIMD=avx2 so both sides use the same instructions.
LCPP_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}/${LLAMACPP_BUILD:-build}
LCPP=$LCPP_DIR/bin
[ -x "$LCPP/llama-bench" ] || { echo "llama-bench missing: run scripts/reference/build-llamacpp.sh" >&2; exit 1; }
PP=${PP:-64}; TG=${TG:-32}; REPS=${REPS:-3}; THREADS=${THREADS:-"1 2"}
# ledge bench's own load/time-to-first-token timings (prompt length; 0 skips them: on 7B
# files they take minutes and llama-bench has no counterpart).
TTFT=${TTFT:-64}
# ROUNDS>1 repeats the whole llama-bench/ledge pair, interleaved, and keeps each side's best
# mean per test: on a shared VM whose speed swings 3x within a minute, best-of-rounds is the
# number that measures the code rather than the neighbours.
ROUNDS=${ROUNDS:-1}
# BANDWIDTH_MIB=N: ledge also measures this machine's read bandwidth (an N MiB buffer, right
# before its runs) and a second table gives generation's GB/s streamed and % of it.
BANDWIDTH_MIB=${BANDWIDTH_MIB:-0}
# QUIET=S: before each measurement wait up to S seconds for the machine to be idle (other
# processes using < 10 % of the CPUs over one second); the waits and any timeout are printed.
QUIET=${QUIET:-0}
# Extra llama-bench arguments, e.g. LLAMA_BENCH_ARGS="--repack 0" where llama.cpp's AMX
# buffer type dies with SIGILL (a VM that lists AMX in cpuinfo but does not enable it).
read -r -a LBARGS <<< "${LLAMA_BENCH_ARGS:-}"
[ $# -gt 0 ] || set -- "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$ROOT/models/gemma-3-270m-q4_k_m.gguf"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
# What is compared: the CPU, llama.cpp's build and its instruction sets, ledge's kernel set.
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
cache=$LCPP_DIR/CMakeCache.txt
if grep -q '^GGML_NATIVE:BOOL=ON' "$cache" 2>/dev/null; then
  isa="native: -march=native"
else
  isa=$(grep -E '^GGML_(SSE42|AVX|AVX2|FMA|F16C|AVX_VNNI|AVX512|AVX512_VNNI|AVX512_VBMI|AVX512_BF16|AMX_INT8):BOOL=ON' \
    "$cache" 2>/dev/null | cut -d: -f1 | sed 's/^GGML_//' | tr '\n' ' ' | sed 's/ $//')
fi
kset=$("$ROOT/target/release/ledge" run -v -p x -n 1 -m "$1" 2>&1 >/dev/null | grep -o 'kernels: [a-z0-9-]*' | head -1)
echo "CPU: ${cpu:-unknown}"
echo "llama.cpp: $LCPP_DIR (${isa:-flags unknown})"
echo "ledge: ${kset:-kernels: unknown}${LEDGE_SIMD:+ (LEDGE_SIMD=$LEDGE_SIMD)}"
echo
# Busy share of all CPUs over one second, in percent (from /proc/stat).
busy() {
  local a b
  read -r -a a < <(head -1 /proc/stat); sleep 1; read -r -a b < <(head -1 /proc/stat)
  local tot=0 idle i
  for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $(( tot > 0 ? 100 * (tot - idle) / tot : 0 ))
}
wait_quiet() {
  [ "$QUIET" -gt 0 ] || return 0
  local start=$SECONDS b
  while b=$(busy); [ "$b" -ge 10 ]; do
    if [ $((SECONDS - start)) -ge "$QUIET" ]; then
      echo "  not quiet after ${QUIET}s (CPUs ${b}% busy): measuring anyway ($1)" >&2; return 0
    fi
  done
  [ $((SECONDS - start)) -le 1 ] || echo "  waited $((SECONDS - start))s for a quiet machine ($1)" >&2
}
BWARGS=()
[ "$BANDWIDTH_MIB" -gt 0 ] && BWARGS=(--bandwidth "$BANDWIDTH_MIB")
for r in $(seq "$ROUNDS"); do
for m in "$@"; do
  for t in $THREADS; do
    wait_quiet "llama-bench $(basename "$m") t=$t round $r"
    LD_LIBRARY_PATH=$LCPP "$LCPP/llama-bench" -m "$m" -p "$PP" -n "$TG" -t "$t" -r "$REPS" "${LBARGS[@]}" -o json \
      > "$TMP/llama.$(basename "$m").$t.json.$r" 2>/dev/null
    wait_quiet "ledge $(basename "$m") t=$t round $r"
    "$ROOT/target/release/ledge" bench -m "$m" -p "$PP" -n "$TG" -t "$t" -r "$REPS" --ttft-prompt "$TTFT" \
      "${BWARGS[@]}" --json > "$TMP/ledge.$(basename "$m").$t.json.$r"
  done
done
done
python3 - "$TMP" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
print("| model | threads | test | llama.cpp t/s | ledge t/s | ledge/llama.cpp |")
print("|---|---:|---:|---:|---:|---:|")
for lf in sorted(glob.glob(os.path.join(d, "ledge.*.json.1"))):
    name = os.path.basename(lf)[len("ledge."):].rsplit(".", 3)[0]
    threads = os.path.basename(lf).rsplit(".", 3)[1]
    ours, theirs = {}, {}
    for f in glob.glob(os.path.join(d, f"ledge.{name}.{threads}.json.*")):
        for r in json.load(open(f))["results"]:
            ours[r["test"]] = max(ours.get(r["test"], 0), r["tokens_per_second_mean"])
    for f in glob.glob(os.path.join(d, f"llama.{name}.{threads}.json.*")):
        for r in json.load(open(f)):
            key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
            theirs[key] = max(theirs.get(key, 0), r["avg_ts"])
    for test, v in ours.items():
        l = theirs.get(test)
        if l:
            print(f"| {name} | {threads} | {test} | {l:.2f} | {v:.2f} | {v / l:.3f} |")
        else:
            print(f"| {name} | {threads} | {test} | - | {v:.2f} | - |")

# Generation against the measured read bandwidth (BANDWIDTH_MIB): bytes of weights streamed
# per token (ledge's packed copies; llama.cpp's are the same size or its GGUF blocks) × t/s.
rows = []
for lf in sorted(glob.glob(os.path.join(d, "ledge.*.json.*"))):
    j = json.load(open(lf))
    name = os.path.basename(lf)[len("ledge."):].rsplit(".", 3)[0]
    for s in j.get("streaming") or []:
        if s.get("read_bandwidth_gb_s"):
            rows.append((name, s["threads"], s["test"], s["weight_bytes_per_token"], s["gb_s"],
                         s["read_bandwidth_gb_s"], s["percent_of_bandwidth"]))
if rows:
    best = {}
    for r in rows:
        k = r[:3]
        if k not in best or r[4] > best[k][4]:
            best[k] = r
    print()
    print("| model | threads | test | weight MB/token | ledge GB/s | read bandwidth GB/s | % of bandwidth |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in sorted(best):
        n, t, test, b, g, bw, pct = best[k]
        print(f"| {n} | {t} | {test} | {b / 1e6:.1f} | {g:.2f} | {bw:.2f} | {pct:.0f}% |")
PY
