#!/usr/bin/env bash
# ledge bench beside llama-bench on the same model files, same machine, same run, threads 1
# and 2 (or $THREADS), with ledge/llama.cpp ratios. llama-bench comes from
# scripts/reference/build-llamacpp.sh (llama.cpp from PyPI's llama-cpp-python source, Release,
# native CPU features on). Usage: scripts/bench-vs-llamacpp.sh [MODEL.gguf ...]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LCPP=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}/build/bin
[ -x "$LCPP/llama-bench" ] || { echo "llama-bench missing: run scripts/reference/build-llamacpp.sh" >&2; exit 1; }
PP=${PP:-64}; TG=${TG:-32}; REPS=${REPS:-3}; THREADS=${THREADS:-"1 2"}
# ledge bench's own load/time-to-first-token timings (prompt length; 0 skips them: on 7B
# files they take minutes and llama-bench has no counterpart).
TTFT=${TTFT:-64}
# ROUNDS>1 repeats the whole llama-bench/ledge pair, interleaved, and keeps each side's best
# mean per test: on a shared VM whose speed swings 3x within a minute, best-of-rounds is the
# number that measures the code rather than the neighbours.
ROUNDS=${ROUNDS:-1}
# Extra llama-bench arguments, e.g. LLAMA_BENCH_ARGS="--repack 0" where llama.cpp's AMX
# buffer type dies with SIGILL (a VM that lists AMX in cpuinfo but does not enable it).
read -r -a LBARGS <<< "${LLAMA_BENCH_ARGS:-}"
[ $# -gt 0 ] || set -- "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$ROOT/models/gemma-3-270m-q4_k_m.gguf"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for r in $(seq "$ROUNDS"); do
for m in "$@"; do
  for t in $THREADS; do
    LD_LIBRARY_PATH=$LCPP "$LCPP/llama-bench" -m "$m" -p "$PP" -n "$TG" -t "$t" -r "$REPS" "${LBARGS[@]}" -o json \
      > "$TMP/llama.$(basename "$m").$t.json.$r" 2>/dev/null
    "$ROOT/target/release/ledge" bench -m "$m" -p "$PP" -n "$TG" -t "$t" -r "$REPS" --ttft-prompt "$TTFT" --json \
      > "$TMP/ledge.$(basename "$m").$t.json.$r"
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
PY
