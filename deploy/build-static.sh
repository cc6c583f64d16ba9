#!/usr/bin/env bash
# deploy/build-static.sh: the static binary, for any x86-64 Linux server
# whatever its C library: target/x86_64-unknown-linux-musl/release/gatehouse.
# Installs rustup's musl target and Debian's musl-tools (musl-gcc, for the C
# and assembly of ring, the TLS library's crypto) if they are missing (the
# latter needs root); then checks the binary has no shared-library
# dependency (ldd must say so) and prints its version.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi
if ! command -v musl-gcc >/dev/null; then
  if [[ $(id -u) != 0 ]]; then
    echo "deploy/build-static.sh: needs musl-gcc: apt-get install musl-tools (as root)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target "$TARGET"
BINARY=${CARGO_TARGET_DIR:-target}/$TARGET/release/gatehouse
LDD=$(ldd "$BINARY" 2>&1 || true)
echo "ldd $BINARY: $LDD"
case $LDD in
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) echo "deploy/build-static.sh: $BINARY links shared libraries" >&2; exit 1 ;;
esac
"$BINARY" --version
ls -l "$BINARY"
