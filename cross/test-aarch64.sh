#!/usr/bin/env bash
# The aarch64 part of scripts/test.sh: cross-builds ledge for aarch64-unknown-linux-gnu and,
# under qemu-user, runs the SIMD kernel tests and a short greedy SmolLM2 generation three
# times: with QEMU_CPU=max (dotprod and i8mm: the `neon-i8mm` kernel set), neoverse-n1
# (dotprod, no i8mm: `neon-dotprod`) and cortex-a72 (neither: the plain `neon` set). The generated text must equal the
# native run's (for Gemma, the native scalar reference's; see below). Also runs Debian's clippy on the aarch64 build when installed. Run
# cross/setup.sh first (scripts/test.sh does). Prints the time of each step.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
# Debian's rustc-web has the aarch64 std the rustup toolchain lacks; rustdoc too, or
# doctests cannot find std. Cargo puts the build in target/$TARGET, apart from native.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
# Gemma's Q4_K/Q6_K weights exercise the K-quant kernels end to end.
GEMMA=models/gemma-3-270m-q4_k_m.gguf
PROMPT="The capital of France is"
TESTS=(--test simd --test simd_kquants --test simd_repack16 --test simd_repack_k --test quant_legacy --test quant_k)
LOGS=target/$TARGET/qemu-logs
mkdir -p "$LOGS"

# Step timings go to the script's stderr (fd 3), whatever the step's own output is sent to.
exec 3>&2
timed() {
  local what=$1 start=$SECONDS
  shift
  "$@"
  echo "   [$what: $((SECONDS - start)) s]" >&3
}
die() { echo "cross/test-aarch64.sh: $*" >&2; exit 1; }

echo "-- cross build (release, $TARGET): lib, bin and kernel tests" >&2
timed "aarch64 build" cargo build --release --target "$TARGET" --bin ledge
timed "aarch64 test build" cargo test --release --target "$TARGET" "${TESTS[@]}" --no-run

# The native clippy never sees the cfg(target_arch = "aarch64") code; Debian's does.
if [ -x /usr/bin/cargo-clippy ]; then
  timed "aarch64 clippy" /usr/bin/cargo-clippy clippy --release --target "$TARGET" --all-targets \
    -- -D warnings
else
  echo "   (no /usr/bin/cargo-clippy: aarch64 clippy skipped)" >&2
fi

echo "-- native reference generation" >&2
# With the rustup toolchain, as the rest of scripts/test.sh: a native build by Debian's rustc
# would rebuild everything.
env -u RUSTC -u RUSTDOC cargo build --release --bin ledge
generate() { # binary-or-runner..., model; greedy, 8 tokens, the choice of kernels on stderr
  local model=${*: -1}
  "${@:1:$#-1}" run -m "$model" -p "$PROMPT" -n 8 --temp 0 -v
}
NATIVE=$(generate ./target/release/ledge "$MODEL" 2>"$LOGS/native.err")
grep -E 'kernels:' "$LOGS/native.err" >&2 || true
[ -n "$NATIVE" ] || die "the native run generated nothing"
# Gemma is compared with the native scalar reference: the NEON K-quant kernels agree with it
# on this prompt, while the x86 AVX2 K-quant kernels (which sum the scale and minimum terms
# of a row separately) change its sixth token.
NATIVE_GEMMA=$(LEDGE_SIMD=scalar generate ./target/release/ledge "$GEMMA" 2>"$LOGS/native-gemma.err")
[ -n "$NATIVE_GEMMA" ] || die "the native gemma run generated nothing"

# cpu label, QEMU_CPU value, the kernel set that must be chosen.
for run in "max:max:neon-i8mm" "neoverse-n1:neoverse-n1:neon-dotprod" "cortex-a72:cortex-a72:neon"; do
  IFS=: read -r label cpu want <<<"$run"
  if [ -n "$cpu" ]; then export QEMU_CPU=$cpu; else unset QEMU_CPU; fi
  echo "-- qemu-aarch64, CPU $label: expecting kernel set '$want'" >&2

  log=$LOGS/tests-$label.log
  if ! timed "kernel tests ($label)" cargo test --release --target "$TARGET" "${TESTS[@]}" \
      -- --nocapture >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "aarch64 tests failed under CPU $label (log: $log)"
  fi
  grep -E '^test result' "$log" >&2
  # The tests assert that the sets offered match is_aarch64_feature_detected!("dotprod")
  # and ("i8mm"); this checks that the detection really differs between the CPUs, so that
  # every flavour ran.
  case $want in
    neon-i8mm) sets='["scalar", "neon", "neon-dotprod", "neon-i8mm"]' ;;
    neon-dotprod) sets='["scalar", "neon", "neon-dotprod"]' ;;
    *) sets='["scalar", "neon"]' ;;
  esac
  grep -qF "kernel sets under test: $sets" "$log" ||
    die "CPU $label: expected the kernel sets $sets to be tested (see $log)"
  if [ "$want" = neon ] && grep -q 'neon-dotprod' "$log"; then
    die "CPU $label: the dotprod set was offered on a CPU without dotprod (see $log)"
  fi
  want_i8mm=false; [ "$want" = neon-i8mm ] && want_i8mm=true
  for k in "i8mm kernel" "i8mm K kernel"; do
    grep -qF "$k under test: $want_i8mm" "$log" ||
      die "CPU $label: expected the $k test to run: $want_i8mm (see $log)"
  done

  for m in "$MODEL" "$GEMMA"; do
    if [ "$m" = "$MODEL" ]; then want_text=$NATIVE; else want_text=$NATIVE_GEMMA; fi
    name=$(basename "$m" .gguf)
    err=$LOGS/run-$label-$name.err
    out=$(timed "generation ($label, $name)" generate qemu-aarch64 "target/$TARGET/release/ledge" \
      "$m" 2>"$err") || { cat "$err" >&2; die "aarch64 run of $name failed under CPU $label"; }
    grep -qE "kernels: $want\$" "$err" || { cat "$err" >&2; die "CPU $label: the run did not use '$want'"; }
    grep -E 'kernels:' "$err" >&2
    if [ "$out" != "$want_text" ]; then
      printf 'native:  %q\naarch64: %q\n' "$want_text" "$out" >&2
      die "CPU $label: the aarch64 generation of $name differs from the native one"
    fi
    printf '   %s generated (same as native): %q\n' "$name" "$out" >&2
  done
done
unset QEMU_CPU
echo "-- aarch64: all passed" >&2
