#!/usr/bin/env bash
# Builds llama.cpp — the independent reference — from the source that PyPI ships inside
# llama-cpp-python, once per machine, outside the repository (never in CI: ~11 min on 2 cores).
#
#   scripts/reference/build-llamacpp.sh            # builds into $LLAMACPP_HOME (default ~/.cache/ledge/llamacpp)
#   AVX2=1 SKIP_GENERIC=1 scripts/reference/build-llamacpp.sh   # also build-avx2 (AVX2 only)
#
# Produces $LLAMACPP_HOME/build/bin/{libllama.so, llama-tokenize, llama-perplexity, llama-bench,
# llama-quantize, llama-cli, …} and a venv $LLAMACPP_HOME/venv whose python can `import llama_cpp`
# (the pure-Python ctypes bindings from the same sdist, pointed at our libllama.so through
# LLAMA_CPP_LIB_PATH). scripts/reference/env.sh prints the variables to use them.
set -euo pipefail

VERSION=0.3.36
HOME_DIR=${LLAMACPP_HOME:-$HOME/.cache/ledge/llamacpp}
SRC=$HOME_DIR/llama_cpp_python-$VERSION
BUILD=$HOME_DIR/build
mkdir -p "$HOME_DIR"

if [ ! -d "$SRC" ]; then
  echo "== fetching llama-cpp-python $VERSION source from PyPI"
  pip download --no-deps "llama-cpp-python==$VERSION" -d "$HOME_DIR/dl"
  tar -xzf "$HOME_DIR/dl/llama_cpp_python-$VERSION.tar.gz" -C "$HOME_DIR"
fi

if [ ! -x "$HOME_DIR/venv/bin/python" ]; then
  echo "== creating venv with cmake, ninja, numpy, gguf"
  python3 -m venv "$HOME_DIR/venv"
  "$HOME_DIR/venv/bin/pip" install -q cmake ninja numpy "gguf==0.19.0" typing_extensions diskcache jinja2
fi
export PATH=$HOME_DIR/venv/bin:$PATH

# Native CPU features, except AMX: some VMs list amx_* in /proc/cpuinfo without the kernel
# granting the tile state, and llama.cpp's AMX path then dies with SIGILL (`tilezero`). On such
# a CPU the features are named one by one from /proc/cpuinfo instead of -march=native.
CPU_FLAGS=(-DGGML_NATIVE=ON)
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  on() { if grep -qw "$1" <<<"$flags"; then echo ON; else echo OFF; fi; }
  CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_SSE42="$(on sse4_2)" -DGGML_AVX="$(on avx)"
    -DGGML_AVX2="$(on avx2)" -DGGML_FMA="$(on fma)" -DGGML_F16C="$(on f16c)" -DGGML_BMI2="$(on bmi2)"
    -DGGML_AVX_VNNI="$(on avx_vnni)" -DGGML_AVX512="$(on avx512f)" -DGGML_AVX512_VBMI="$(on avx512vbmi)"
    -DGGML_AVX512_VNNI="$(on avx512_vnni)" -DGGML_AVX512_BF16="$(on avx512_bf16)"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
  echo "== this CPU lists AMX: building with its other features named, AMX off"
fi

echo "== configuring llama.cpp (native CPU features, -O3 Release, shared libs)"
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON "${CPU_FLAGS[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >/dev/null

echo "== building (this is the long part)"
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target \
  llama llama-tokenize llama-perplexity llama-bench llama-quantize llama-imatrix llama-cli llama-simple \
  llama-server

# A second, generic build (no SIMD beyond x86-64's SSE2, no repacking, no llamafile sgemm):
# its kernels sum in ggml's reference order, and its greedy continuations show how far two
# correct llama.cpp builds of the same file diverge (tests/model_reference.rs).
if [ -z "${SKIP_GENERIC:-}" ]; then
  echo "== configuring and building the generic llama.cpp (build-generic)"
  cmake -S "$SRC/vendor/llama.cpp" -B "$HOME_DIR/build-generic" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF \
    -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_AVX512=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF \
    -DGGML_SSE42=OFF -DGGML_BMI2=OFF -DGGML_CPU_REPACK=OFF -DGGML_LLAMAFILE=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
  cmake --build "$HOME_DIR/build-generic" -j "${JOBS:-$(nproc)}" --target llama
fi

# AVX2=1: also a build restricted to AVX2 (+FMA, F16C, BMI2; no AVX-512, no AVX-VNNI), so
# that on an AVX-512 machine `LEDGE_SIMD=avx2 ledge bench` is compared with llama.cpp on the
# same instruction set: LLAMACPP_BUILD=build-avx2 scripts/bench-vs-llamacpp.sh.
if [ -n "${AVX2:-}" ]; then
  echo "== configuring and building llama.cpp restricted to AVX2 (build-avx2)"
  cmake -S "$SRC/vendor/llama.cpp" -B "$HOME_DIR/build-avx2" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF \
    -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
    -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON >/dev/null
  cmake --build "$HOME_DIR/build-avx2" -j "${JOBS:-$(nproc)}" --target llama llama-bench
fi

# The ctypes bindings, without building the package's own copy of llama.cpp.
SITE=$("$HOME_DIR/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
ln -sfn "$SRC/llama_cpp" "$SITE/llama_cpp"
echo "== done: $BUILD/bin"
ls "$BUILD/bin"
