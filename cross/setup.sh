#!/usr/bin/env bash
# Installs what the aarch64 cross build and its qemu test run need (Debian 12 / bookworm):
# Debian's rustc-web with its arm64 std (the rustup toolchain has only x86_64's and cannot
# download others), the aarch64 gcc/g++ (linker; C++ for the tokenizers crate's esaxx-rs),
# and qemu-user. Idempotent: does nothing when everything is present. Needs root (or sudo).
set -euo pipefail

PKGS=(rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
  libc6-dev-arm64-cross qemu-user)
# Optional, for clippy on the aarch64-only code; skipped quietly if the archive lacks it.
OPTIONAL=(rust-web-clippy)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
want_optional=()
for p in "${OPTIONAL[@]}"; do installed "$p" || want_optional+=("$p"); done

if [ ${#missing[@]} -eq 0 ] && [ ${#want_optional[@]} -eq 0 ]; then
  echo "cross/setup.sh: everything installed"
  exit 0
fi

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "cross/setup.sh: needs root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "cross/setup.sh: adding the arm64 dpkg architecture" >&2
  $SUDO dpkg --add-architecture arm64
fi

echo "cross/setup.sh: installing ${missing[*]} ${want_optional[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
if [ ${#want_optional[@]} -gt 0 ]; then
  $SUDO apt-get install -y -q --no-install-recommends "${want_optional[@]}" >&2 ||
    echo "cross/setup.sh: optional ${want_optional[*]} not installed (aarch64 clippy unavailable)" >&2
fi

# The pieces the cross build relies on, checked by what they are rather than package names.
for tool in /usr/bin/rustc /usr/bin/rustdoc aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "cross/setup.sh: $tool missing after install" >&2; exit 1; }
done
/usr/bin/rustc --print target-libdir --target aarch64-unknown-linux-gnu >/dev/null
echo "cross/setup.sh: done ($(/usr/bin/rustc --version))"
