#!/usr/bin/env bash
# deploy/build-static.sh: the static binary, for any x86-64 Linux server
# whatever its C library: target/x86_64-unknown-linux-musl/release/gatehouse.
# Installs rustup's musl target and Debian's musl-tools (musl-gcc, for the C
# and assembly of ring, the TLS library's crypto, and for mimalloc's C) if
# they are missing (the latter needs root); then checks the binary has no
# shared-library dependency (ldd must say so) and prints its version.
#
# Usage: deploy/build-static.sh [--allocator musl|mimalloc] [--profile release|dev]
#   --allocator  musl: musl's own malloc (the default; STATIC_ALLOCATOR in
#                the environment sets another default); mimalloc: the
#                binary built with `--features mimalloc` (src/main.rs), the
#                allocator compiled in. bench/run.sh section 4d measures both
#                against the glibc build.
#   --profile    cargo profile: release (the default), or dev (debug, faster
#                to build: bench/run.sh --smoke) into
#                target/x86_64-unknown-linux-musl/debug/, or another of
#                Cargo.toml's profiles.
# The ordinary `cargo build --release` (glibc, glibc's malloc) is unaffected.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
ALLOCATOR=${STATIC_ALLOCATOR:-musl}
PROFILE=release
while (($# > 0)); do
  case $1 in
    --allocator) ALLOCATOR=${2:?--allocator needs musl or mimalloc}; shift 2 ;;
    --allocator=*) ALLOCATOR=${1#*=}; shift ;;
    --profile) PROFILE=${2:?--profile needs release or dev}; shift 2 ;;
    --profile=*) PROFILE=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/build-static.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
case $ALLOCATOR in
  musl) FEATURES=() ;;
  mimalloc) FEATURES=(--features mimalloc) ;;
  *) echo "deploy/build-static.sh: unknown allocator: $ALLOCATOR (musl or mimalloc)" >&2; exit 2 ;;
esac
case $PROFILE in
  dev | debug) PROFILE=dev PROFILE_DIR=debug ;;
  *) PROFILE_DIR=$PROFILE ;;
esac
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
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --profile "$PROFILE" --target "$TARGET" \
  --bin gatehouse ${FEATURES[@]+"${FEATURES[@]}"}
BINARY=${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE_DIR/gatehouse
LDD=$(ldd "$BINARY" 2>&1 || true)
echo "ldd $BINARY: $LDD"
case $LDD in
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) echo "deploy/build-static.sh: $BINARY links shared libraries" >&2; exit 1 ;;
esac
# mimalloc's C leaves its name in the binary's strings (its messages and
# options); musl's malloc does not.
if grep -qa 'mimalloc' "$BINARY"; then HAS_MIMALLOC=mimalloc; else HAS_MIMALLOC=musl; fi
if [[ $HAS_MIMALLOC != "$ALLOCATOR" ]]; then
  echo "deploy/build-static.sh: $BINARY was to use $ALLOCATOR's allocator, but it seems to use $HAS_MIMALLOC's" >&2
  exit 1
fi
echo "allocator: $ALLOCATOR"
"$BINARY" --version
ls -l "$BINARY"
