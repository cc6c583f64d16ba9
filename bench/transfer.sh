#!/usr/bin/env bash
# bench/transfer.sh: time and memory of export and import (issue 16), on both
# stores, with a login right after each import.
#
# Usage:
#   bench/transfer.sh           100,000 users, release build (~3 minutes after
#                               the build)
#   bench/transfer.sh --smoke   1,000 users, debug build (also BENCH_SMOKE=1):
#                               checks that every step works
#
# What it does:
#   1. seeds a data dir with BENCH_USERS users (examples/seed.rs) and an admin
#      (`gatehouse admin create`);
#   2. sled: `gatehouse export --out FILE --with-audit` of that data dir, then
#      `gatehouse import FILE` into a fresh data dir, each under
#      /usr/bin/time (wall time and peak RSS of the process);
#   3. starts gatehouse on the imported data dir: a seeded user logs in (the
#      password from before the export), then the online export
#      (GET /api/admin/export as the admin, to a file), twice: its time, the
#      server's RSS before it (VmRSS) and its peak during it (VmHWM, reset
#      before the request through /proc/PID/clear_refs), and the file's
#      trailer count. The first export after a start is also the first read
#      of every user (sled then keeps its pages' map resident, as after any
#      listing of all users); the second shows what an export itself holds;
#   4. PostgreSQL (a scratch database on BENCH_PG_URL, dropped on exit):
#      `gatehouse import FILE` (the sled export: sled -> PostgreSQL), a login,
#      the online export as in 3, and `gatehouse export` of the database.
#   Every file is checked: its trailer counts its records, and the users it
#   holds are BENCH_USERS + 1.
#
# Environment: BENCH_USERS (100000 / 1000), BENCH_COST (bcrypt cost of the
# seeded hash, 10 / 4), PROFILE (release / dev), BENCH_PG_URL
# (postgres://postgres@127.0.0.1:5432; empty: skip PostgreSQL), BENCH_OUT_DIR
# (target/bench). The table goes to stdout and to BENCH_OUT_DIR/transfer.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${BENCH_SMOKE:-0}
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/transfer.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [[ $SMOKE == 1 ]]; then
  USERS=${BENCH_USERS:-1000} COST=${BENCH_COST:-4} PROFILE=${PROFILE:-dev} MODE=smoke
else
  USERS=${BENCH_USERS:-100000} COST=${BENCH_COST:-10} PROFILE=${PROFILE:-release} MODE=full
fi
PG_URL=${BENCH_PG_URL-postgres://postgres@127.0.0.1:5432}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=${BENCH_OUT_DIR:-$TARGET_DIR/bench}
case $PROFILE in
  dev | debug) PROFILE=dev; BIN_DIR=$TARGET_DIR/debug ;;
  *) BIN_DIR=$TARGET_DIR/$PROFILE ;;
esac
BIN=$BIN_DIR/gatehouse
SECRET=gatehouse-benchmark-secret-0123456789abcdef
PASSWORD=benchmark-password
ADMIN_PASSWORD=benchmark-admin-password

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/transfer.sh: %s\n' "$*" >&2; exit 1; }
[[ -x /usr/bin/time ]] || die "needs /usr/bin/time (Debian package time)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-transfer.XXXXXX")
SERVER_PID=
PG_DB=
cleanup() {
  local status=$?
  [[ -z $SERVER_PID ]] || { kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; } || true
  [[ -z $PG_DB ]] || psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export GATEHOUSE_AUTH__BCRYPT_COST=$COST RUST_LOG=warn
unset GATEHOUSE_STORE__URL GATEHOUSE_AUTH__SECRET GATEHOUSE_DATA_DIR

log "building ($PROFILE)"
cargo build --quiet --profile "$PROFILE" --bin gatehouse --example seed

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }

# timed NAME CMD...: runs CMD under /usr/bin/time; sets SECS and RSS_MIB.
timed() {
  local name=$1
  shift
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" ||
    die "$name failed: $(cat "$WORK/$name.err" "$WORK/$name.out")"
  read -r SECS RSS_KIB <"$WORK/time"
  RSS_MIB=$(awk -v k="$RSS_KIB" 'BEGIN { printf "%.1f", k / 1024 }')
}

# check_file FILE: the trailer counts the records, and USERS + 1 users.
check_file() {
  local file=$1 records users
  records=$(($(wc -l <"$file") - 2))
  grep -q "^{\"type\":\"end\",\"records\":$records}\$" <(tail -n 1 "$file") ||
    die "$file: the trailer does not count its $records records"
  users=$(grep -c '^{"type":"user"' "$file")
  ((users == USERS + 1)) || die "$file: $users users, expected $((USERS + 1))"
}

# serve DATA_DIR [ENV...]: starts gatehouse on a free port; sets URL.
serve() {
  local dir=$1
  shift
  env "$@" RUST_LOG=info "$BIN" --data-dir "$dir" --port 0 >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  local deadline=$((SECONDS + 60)) address=
  while [[ -z $address ]]; do
    ((SECONDS < deadline)) || die "the server did not start: $(cat "$WORK/server.log")"
    address=$(grep -o 'gatehouse listening address=[0-9.:]*' "$WORK/server.log" | head -1 | sed 's/.*address=//') || true
    [[ -n $address ]] || sleep 0.05
  done
  URL=http://$address
}
stop_server() {
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

login_token() {
  curl -sf -X POST "$URL/api/auth/login" -H 'content-type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\"}" | sed 's/.*"token":"\([^"]*\)".*/\1/'
}

# online_export NAME WHICH: GET /api/admin/export as the admin; records time
# and the server's RSS before and at its peak during the request.
online_export() {
  local name=$1 which=$2 token idle peak started ended
  token=$(login_token admin@bench.example "$ADMIN_PASSWORD")
  [[ -n $token ]] || die "$name: the admin cannot log in"
  idle=$(awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status")
  echo 5 >"/proc/$SERVER_PID/clear_refs" # resets VmHWM to the current RSS
  started=$(date +%s%N)
  curl -sf "$URL/api/admin/export?with_audit=true" -H "x-access-token: $token" -o "$WORK/$name.jsonl" ||
    die "$name: the export request failed"
  ended=$(date +%s%N)
  peak=$(awk '/^VmHWM/ { print $2 }' "/proc/$SERVER_PID/status")
  check_file "$WORK/$name.jsonl"
  row "$name: GET /api/admin/export ($which)" \
    "$(awk -v n=$((ended - started)) 'BEGIN { printf "%.2f", n / 1e9 }')" \
    "server RSS $(awk -v k="$idle" 'BEGIN { printf "%.1f", k / 1024 }') MiB idle, peak $(awk -v k="$peak" 'BEGIN { printf "%.1f", k / 1024 }') MiB ($(awk -v a="$idle" -v b="$peak" 'BEGIN { printf "%+.1f", (b - a) / 1024 }'))"
}

login_check() {
  local token
  token=$(login_token seed-1@bench.example "$PASSWORD")
  [[ -n $token ]] || die "$1: a seeded user cannot log in after the import"
  row "$1: login right after the import" "-" "200, token issued"
}

log "seeding $USERS users"
"$BIN_DIR/examples/seed" "$WORK/source" "$USERS" "$COST" >/dev/null
printf '%s\n' "$ADMIN_PASSWORD" |
  "$BIN" --data-dir "$WORK/source" admin create --email admin@bench.example --name Admin --password-stdin >/dev/null

log "sled: export, import"
timed sled-export "$BIN" --data-dir "$WORK/source" export --out "$WORK/sled.jsonl" --with-audit
check_file "$WORK/sled.jsonl"
row "sled: gatehouse export ($(du -k "$WORK/sled.jsonl" | cut -f1) KiB file)" "$SECS" "$RSS_MIB MiB peak"
timed sled-import "$BIN" --data-dir "$WORK/imported" import "$WORK/sled.jsonl"
row "sled: gatehouse import" "$SECS" "$RSS_MIB MiB peak"
serve "$WORK/imported"
login_check sled
online_export sled "first since start"
online_export sled again
stop_server

if [[ -n $PG_URL ]] && command -v psql >/dev/null; then
  PG_DB=gatehouse_transfer_$$
  psql -q "$PG_URL/postgres" -c "CREATE DATABASE $PG_DB" >/dev/null
  PG=("GATEHOUSE_STORE__URL=$PG_URL/$PG_DB" "GATEHOUSE_AUTH__SECRET=$SECRET")
  log "PostgreSQL: import, export"
  timed pg-import env "${PG[@]}" "$BIN" --data-dir "$WORK/pg" import "$WORK/sled.jsonl"
  row "PostgreSQL: gatehouse import (from the sled export)" "$SECS" "$RSS_MIB MiB peak"
  serve "$WORK/pg" "${PG[@]}"
  login_check PostgreSQL
  online_export PostgreSQL "first since start"
  online_export PostgreSQL again
  stop_server
  timed pg-export env "${PG[@]}" "$BIN" --data-dir "$WORK/pg" export --out "$WORK/pg.jsonl" --with-audit
  check_file "$WORK/pg.jsonl"
  row "PostgreSQL: gatehouse export" "$SECS" "$RSS_MIB MiB peak"
else
  row "PostgreSQL" "-" "skipped (BENCH_PG_URL empty or no psql)"
fi

mkdir -p "$OUT_DIR"
{
  echo "### bench/transfer.sh ($MODE): $USERS users + 1 admin, $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted)'), $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| step | seconds | memory |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT_DIR/transfer.md"
