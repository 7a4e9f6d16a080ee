#!/usr/bin/env bash
# Generation on the synthetic 7B shapes against this machine's memory bandwidth (issue 4):
# makes the synthetic Llama-2-7B Q4_0 and Q4_K_M files if missing, then for threads 1 and 2
# runs, back to back, `ledge bench --bandwidth` (it measures the read bandwidth right before
# loading) and llama-bench, and prints one table: tg tokens/s, weight
# bytes per token, GB/s streamed, % of the measured read bandwidth, ledge/llama.cpp.
# The load average before each run is printed too: on a busy machine the numbers are noise.
#
# Usage: scripts/bench-7b.sh            (DIR=/tmp/ledge-7b TG=32 REPS=2 THREADS="1 2"
#                                        TYPES="q4_0 q4_k_m" BW_MIB=2048 by default)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LCPP=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}/build/bin
DIR=${DIR:-/tmp/ledge-7b}; TG=${TG:-32}; REPS=${REPS:-2}; THREADS=${THREADS:-"1 2"}
TYPES=${TYPES:-"q4_0 q4_k_m"}; BW_MIB=${BW_MIB:-2048}
LEDGE=${LEDGE:-$ROOT/target/release/ledge}
[ -x "$LCPP/llama-bench" ] || { echo "llama-bench missing: run scripts/reference/build-llamacpp.sh" >&2; exit 1; }
[ -n "${LEDGE_BIN_READY:-}" ] || cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$DIR"
for ty in $TYPES; do
  f="$DIR/llama7b-$ty.gguf"
  [ -f "$f" ] || "$LEDGE" synth --shape 7b --type "$(echo "$ty" | tr a-z A-Z)" -o "$f"
done
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
for ty in $TYPES; do
  f="$DIR/llama7b-$ty.gguf"
  for t in $THREADS; do
    echo "ledge $ty t=$t  load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cut -d' ' -f1 /proc/loadavg > "$OUT/load.ledge.$ty.$t"
    "$LEDGE" bench -m "$f" -p 0 -n "$TG" -r "$REPS" -t "$t" --ttft-prompt 0 \
      --bandwidth "$BW_MIB" --json > "$OUT/ledge.$ty.$t.json"
    echo "llama-bench $ty t=$t  load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    cut -d' ' -f1 /proc/loadavg > "$OUT/load.llama.$ty.$t"
    LD_LIBRARY_PATH=$LCPP "$LCPP/llama-bench" -m "$f" -p 0 -n "$TG" -r "$REPS" -t "$t" -o json \
      > "$OUT/llama.$ty.$t.json" 2>/dev/null
  done
done
python3 - "$OUT" "$TYPES" "$THREADS" <<'PY'
import json, os, sys
d, types, threads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
load = lambda k: open(os.path.join(d, f"load.{k}")).read().strip()
print("| model | threads | runtime | load avg | tg t/s | weight MB/token | GB/s | read bandwidth GB/s | % of bandwidth | best token GB/s (%) | vs llama.cpp |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for ty in types:
    for t in threads:
        j = json.load(open(os.path.join(d, f"ledge.{ty}.{t}.json")))
        s = j["streaming"][0]
        best = s.get("best_token_gb_s")
        best = f"{best:.2f} ({s['best_token_percent_of_bandwidth']:.0f}%)" if best else "n/a"
        row = (j["results"][0]["tokens_per_second_mean"], s["weight_bytes_per_token"],
               s["read_bandwidth_gb_s"], load(f"ledge.{ty}.{t}"), best)
        ll = json.load(open(os.path.join(d, f"llama.{ty}.{t}.json")))
        lts = next(r["avg_ts"] for r in ll if r["n_gen"] > 0)
        # llama.cpp streams the GGUF blocks, the same bytes as ledge's packed copies (4.5 bits
        # per Q4_0 weight, 576 + 16 bytes per 4x256 Q4_K weights either way); bandwidth: ledge's.
        _, nbytes, bw0, _, _ = row
        entries = [("ledge", *row)]
        entries.append(("llama.cpp", lts, nbytes, bw0, load(f"llama.{ty}.{t}"), "n/a"))
        for name, tps, b, bw, la, best in entries:
            gbs = b * tps / 1e9
            pct = f"{100 * gbs / bw:.0f}%" if bw else "n/a"
            bws = f"{bw:.2f}" if bw else "n/a"
            print(f"| llama7b-{ty} | {t} | {name} | {la} | {tps:.2f} | {b / 1e6:.0f} | {gbs:.2f} | {bws} | {pct} | {best} | {tps / lts:.2f}x |")
PY
