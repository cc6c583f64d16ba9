#!/usr/bin/env bash
# bench/run.sh: gatehouse's side-by-side load benchmark, in one run.
#
# Usage:
#   bench/run.sh            the real run (release build, cost 10, 10 s per
#                           scenario, 100,000 users with 3 sessions each);
#                           ~11 minutes after the build (2 of them seeding
#                           300,000 sessions, 3 the four signing algorithms,
#                           2 the glibc and musl builds of 4d)
#   bench/run.sh --smoke    smoke mode (also BENCH_SMOKE=1): debug build, cost 4,
#                           1 s per scenario, 1,000 users. It checks only that
#                           every scenario ran and produced numbers.
#
# What it does:
#   1. builds the server and the examples (`cargo build --bins --examples`),
#      and the static musl binary twice, with musl's malloc and with
#      mimalloc (`deploy/build-static.sh --profile PROFILE --allocator
#      musl|mimalloc`, which installs rustup's musl target and musl-tools
#      if missing; a first release build of both takes several minutes,
#      later runs find them in cargo's cache); installs wrk from Debian's
#      packages if it is missing (needs root);
#   2. starts gatehouse on a fresh temporary data dir, pinned to CPU 0, with
#      the default log level (info: one log line per request, as in
#      production; stderr goes to a file), and examples/baseline.rs (a bare
#      hyper server, fixed ~150-byte JSON: the ceiling for /me) on the same
#      CPU. Only one of them runs at a time: the other is paused (SIGSTOP).
#      wrk, pinned to CPU 1, drives GET /api/auth/me (64 connections) on the
#      baseline and then on gatehouse, alternately, for BENCH_ROUNDS rounds:
#      the /me ratio is the median of the rounds' ratios, so that a noisy
#      machine (a neighbour taking the CPU for a few seconds) moves one round,
#      not the result. Then, on gatehouse alone, BENCH_ROUNDS rounds of /me
#      alone followed by /me while a second wrk floods POST /api/auth/login
#      (16 connections), compared round by round (medians of the ratios);
#      then login (16), register with unique emails (16), PATCH
#      /api/users/{id} name changes by the user itself (64), and POST
#      /api/auth/refresh (64 connections, each rotating its own session's
#      chain: 64 logins first, then `wrk -t64 -c64` with bench/refresh.lua,
#      one connection per wrk thread, each always presenting the refresh
#      token of its previous answer); notes the idle RSS;
#   3. stops gatehouse (the baseline stays, paused);
#   4. the same refresh scenario on the PostgreSQL store: a scratch database
#      (createdb on BENCH_PG_URL, dropped on exit), gatehouse with
#      GATEHOUSE_STORE__URL on it (pinned to CPU 0; PostgreSQL itself is not
#      pinned and shares both CPUs); then, on the same server, BENCH_ROUNDS
#      rounds of GET /api/auth/me (16 connections) each followed by
#      `pgbench -S -M prepared -c 16 -j 1` (pinned to CPU 1, on pgbench's
#      tables made in the same scratch database), and of PATCH name changes
#      (16 connections, a user each: bench/patch_users.lua) each followed by
#      a pgbench one-row UPDATE script at the same concurrency: the ratios
#      are the medians of the rounds'. If PostgreSQL (or psql, or pgbench)
#      is missing, those rows say so and the run goes on;
#   4b. for each auth.algorithm (HS256, EdDSA, ES256, RS256): gatehouse on a
#      fresh data dir signing with it, BENCH_ROUNDS rounds of /me alternating
#      with the baseline (as in 2), then POST /api/auth/login (16
#      connections);
#   4c. metrics off and on in the same run: two gatehouses on fresh data
#      dirs, one without metrics.listen (the default), one with
#      GATEHOUSE_METRICS__LISTEN=127.0.0.1:0; BENCH_ROUNDS rounds, each
#      giving both servers (in alternating order from round to round) a
#      turn of: the baseline's /me, then that server's /me (64 connections)
#      and login (16 connections), ROUND_DURATION each (the others paused);
#      during the "on" turns a scraper (curl on CLIENT_CPU) reads /metrics
#      every second, as Prometheus would. /me ÷ the baseline run just
#      before it, and login ÷ the bcrypt ceiling, are reported for both, as
#      medians of the rounds; then stops the baseline;
#   4d. glibc and musl builds in the same run: three gatehouses on fresh
#      data dirs, the glibc build of 1, the static musl build with musl's
#      malloc and the static musl build with mimalloc; BENCH_ROUNDS rounds,
#      each giving every server (in forward, then reversed order from round
#      to round; the others paused) a turn of GET /api/auth/me (64
#      connections) then PATCH /api/users/{id} name changes (64 connections,
#      one user, as in 2), ROUND_DURATION each. musl ÷ glibc and mimalloc ÷
#      glibc (and mimalloc ÷ musl) for /me and PATCH are the medians of the
#      rounds' ratios, beside each one's median requests/s and its RSS after
#      the rounds. 6 × BENCH_ROUNDS × ROUND_DURATION of load: 2 minutes in
#      the real run, 6 s in smoke mode. Skipped, with a row saying why, when
#      the musl target or musl-gcc cannot be installed or BENCH_MUSL=0;
#   5. measures one core's bcrypt verify rate at the benchmark's cost
#      (examples/bcrypt_ceiling.rs on CPU 0): the ceiling for login/register;
#   6. seeds a second data dir with BENCH_USERS users (examples/seed.rs, server
#      stopped) plus an admin, starts gatehouse on it and times its cold start
#      to the first 200 from GET /healthz, pages through all users as the
#      admin, runs /me briefly, then reads the RSS (VmRSS) and, once it is
#      stopped, the data dir's size (du -sk);
#   7. adds BENCH_SESSIONS sessions to each of those users (examples/seed.rs
#      again, server stopped: Session::start and Store::insert_session, as a
#      login does) and measures the same again: cold start (which includes
#      the start-up purge's scan of every session), listing, /me, RSS, disk.
#   Only one gatehouse runs at a time (where several are started, the others
#   are paused). The tables go to stdout and to
#   target/bench/results.md; wrk's raw outputs to target/bench/raw/.
#
# Environment (defaults: real run / smoke):
#   DURATION     per wrk scenario               10s / 1s
#   BENCH_ROUNDS, ROUND_DURATION   /me-vs-baseline rounds and each one's
#                length                          5, 4s / 1, 1s
#   BENCH_USERS  users seeded for RSS, disk, cold start   100000 / 1000
#   BENCH_SESSIONS   sessions then added to each seeded user   3 / 3
#   BENCH_PG_URL     PostgreSQL server for the refresh scenario's scratch
#                database (user with CREATEDB; empty: skip that row)
#                                   postgres://postgres@127.0.0.1:5432
#   BENCH_COST   bcrypt cost                    10 / 4
#   PROFILE      cargo profile: release or dev (debug)    release / dev
#   BENCH_CEILING_SECS   bcrypt ceiling measurement time  3 / 1
#   BENCH_MUSL   1: build and measure the static musl builds (4d); 0: skip
#                them (the row says so)             1 / 1
#   WRK_THREADS  wrk threads per wrk process    1 (wrk has one CPU: a second
#                thread there only adds the other thread's scheduler slice,
#                up to a 4 ms tick, to the measured latencies)
#   SERVER_CPU, CLIENT_CPU   CPUs for the servers and for wrk   0, 1
#   BENCH_OUT_DIR  where results go             target/bench
#                (target/ is CARGO_TARGET_DIR when that is set)
#
# Exit status: non-zero if a step fails or a scenario produced no requests or
# unexpected errors. There are no timing assertions: the ratios are reported,
# not enforced. Every process it starts and every temp dir is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${BENCH_SMOKE:-0}
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/run.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done
if [[ $SMOKE == 1 ]]; then
  DURATION=${DURATION:-1s}
  ROUNDS=${BENCH_ROUNDS:-1}
  ROUND_DURATION=${ROUND_DURATION:-1s}
  USERS=${BENCH_USERS:-1000}
  SESSIONS=${BENCH_SESSIONS:-3}
  COST=${BENCH_COST:-4}
  PROFILE=${PROFILE:-dev}
  CEILING_SECS=${BENCH_CEILING_SECS:-1}
  MUSL=${BENCH_MUSL:-1}
  MODE=smoke
else
  DURATION=${DURATION:-10s}
  ROUNDS=${BENCH_ROUNDS:-5}
  ROUND_DURATION=${ROUND_DURATION:-4s}
  USERS=${BENCH_USERS:-100000}
  SESSIONS=${BENCH_SESSIONS:-3}
  COST=${BENCH_COST:-10}
  PROFILE=${PROFILE:-release}
  CEILING_SECS=${BENCH_CEILING_SECS:-3}
  MUSL=${BENCH_MUSL:-1}
  MODE=full
fi
WRK_THREADS=${WRK_THREADS:-1}
PG_URL=${BENCH_PG_URL-postgres://postgres@127.0.0.1:5432}
# The store of every scenario but the PostgreSQL refresh row: sled, unless
# GATEHOUSE_STORE__URL is set for the whole run.
MAIN_STORE=sled
[[ -z ${GATEHOUSE_STORE__URL:-} ]] || MAIN_STORE="PostgreSQL (GATEHOUSE_STORE__URL)"
# Connections for the PostgreSQL /me and PATCH rows and their pgbench
# ceilings (the pool holds 16).
PG_CLIENTS=16
# Refresh chains: one session, one connection and one wrk thread each.
REFRESH_CLIENTS=64
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=${BENCH_OUT_DIR:-$TARGET_DIR/bench}
case $PROFILE in
  dev | debug) PROFILE=dev; BIN_DIR=$TARGET_DIR/debug ;;
  *) BIN_DIR=$TARGET_DIR/$PROFILE ;;
esac
# The secret only signs benchmark tokens; 32+ bytes as config requires.
SECRET=gatehouse-benchmark-secret-0123456789abcdef
PASSWORD=benchmark-password
RUN_ID=$(date +%s)-$$
export BENCH_LUA_DIR=$ROOT/bench BENCH_PASSWORD=$PASSWORD BENCH_RUN_ID=$RUN_ID

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

# --- processes and temp dirs: everything started is stopped on exit ---------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
PIDS=()
PG_DB= # the scratch PostgreSQL database, once created
cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true # a paused server cannot stop
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid" 2>/dev/null || true
  done
  [[ -z $PG_DB ]] || drop_pg_db || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops a child: SIGTERM, then SIGKILL if it has not exited within 15 s.
stop_pid() {
  local pid=$1 deadline=$((SECONDS + 15))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  wait "$pid" 2>/dev/null || true
}
forget_pid() {
  local pid=$1 kept=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Polls LOG for "WHAT listening address=IP:PORT" (WHAT: gatehouse, baseline
# or metrics; default any but metrics) until DEADLINE_S; prints the address.
wait_for_address() {
  local log=$1 pid=$2 deadline=$((SECONDS + ${3:-60})) what=${4:-'gatehouse\|baseline'} address
  while :; do
    # (The log file may not exist yet: the server's shell creates it.)
    address=$(sed -n "s/.*\($what\) listening address=\([0-9.]*:[0-9]*\).*/\2/p" "$log" 2>/dev/null |
      head -n 1)
    if [[ -n $address ]]; then
      echo "$address"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2
      die "the server (pid $pid) exited before listening"
    fi
    ((SECONDS < deadline)) || die "no '$what listening address=' line in $log in time"
    sleep 0.005
  done
}

# Polls GET http://ADDRESS/healthz until it answers 200.
wait_for_health() {
  local address=$1 deadline=$((SECONDS + ${2:-60}))
  until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$address/healthz") == 200 ]]; do
    ((SECONDS < deadline)) || die "GET /healthz on $address never answered 200"
    sleep 0.005
  done
}

# Starts gatehouse on DATA_DIR (and on the PostgreSQL database STORE_URL if
# given; signing with GH_ALGORITHM if set; serving metrics at GH_METRICS if
# set; the binary GH_BINARY if set, else BIN_DIR's) pinned to SERVER_CPU;
# sets GH_PID and GH_LOG.
start_gatehouse() { # DATA_DIR NAME [STORE_URL]
  local data_dir=$1 name=$2 store_url=${3:-}
  GH_LOG=$WORK/$name.log
  (
    cd "$WORK"
    export GATEHOUSE_AUTH__BCRYPT_COST=$COST GATEHOUSE_AUTH__SECRET=$SECRET \
      GATEHOUSE_LIMITS__LOGIN_FAILURES_PER_ACCOUNT=10000 \
      GATEHOUSE_LIMITS__LOGIN_FAILURES_PER_ADDRESS=10000 \
      GATEHOUSE_LIMITS__REGISTRATIONS_PER_ADDRESS=100000
    unset RUST_LOG
    [[ -z $store_url ]] || export GATEHOUSE_STORE__URL=$store_url
    [[ -z ${GH_ALGORITHM:-} ]] || export GATEHOUSE_AUTH__ALGORITHM=$GH_ALGORITHM
    [[ -z ${GH_METRICS:-} ]] || export GATEHOUSE_METRICS__LISTEN=$GH_METRICS
    exec taskset -c "$SERVER_CPU" "${GH_BINARY:-$BIN_DIR/gatehouse}" --port 0 --data-dir "$data_dir"
  ) 2>"$GH_LOG" >/dev/null &
  GH_PID=$!
  PIDS+=("$GH_PID")
}

stop_server() {
  stop_pid "$1"
  forget_pid "$1"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# JSON field extraction good enough for gatehouse's flat answers.
json_field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

post_json() { # ADDRESS PATH BODY [TOKEN]
  curl -sS --max-time 60 -X POST "http://$1$2" -H 'content-type: application/json' \
    ${4:+-H "x-access-token: $4"} -d "$3"
}

register() { # ADDRESS EMAIL -> token
  local token
  token=$(post_json "$1" /api/auth/register \
    "{\"name\":\"Bench\",\"email\":\"$2\",\"password\":\"$PASSWORD\"}" | json_field token)
  [[ -n $token ]] || die "registering $2 gave no token"
  echo "$token"
}

login() { # ADDRESS EMAIL -> token
  local token
  token=$(post_json "$1" /api/auth/login "{\"email\":\"$2\",\"password\":\"$PASSWORD\"}" |
    json_field token)
  [[ -n $token ]] || die "logging in as $2 gave no token"
  echo "$token"
}

# login_sessions ADDRESS EMAIL COUNT FILE: COUNT logins of EMAIL, so COUNT
# sessions; their refresh tokens go to FILE, one a line.
login_sessions() {
  local address=$1 email=$2 count=$3 file=$4 i refresh_token
  : >"$file"
  for ((i = 0; i < count; i++)); do
    refresh_token=$(post_json "$address" /api/auth/login \
      "{\"email\":\"$email\",\"password\":\"$PASSWORD\"}" | json_field refresh_token)
    [[ -n $refresh_token ]] || die "logging in as $email gave no refresh_token"
    echo "$refresh_token" >>"$file"
  done
}

me_id() { # ADDRESS TOKEN -> _id
  local id
  id=$(curl -sS --max-time 10 "http://$1/api/auth/me" -H "x-access-token: $2" | json_field _id)
  [[ -n $id ]] || die "GET /api/auth/me gave no _id"
  echo "$id"
}

# --- wrk runs and their numbers ----------------------------------------------
declare -A REQ RPS P50 P99 NON2XX SOCKERR DUR_US

# wrk_command KEY SCRIPT CONNECTIONS URL [THREADS]: sets WRK_CMD to wrk
# pinned to CLIENT_CPU for DURATION (with WRK_THREADS threads unless THREADS
# is given), and WRK_OUT to its output file (OUT_DIR/raw/KEY.txt). Callers
# run "${WRK_CMD[@]}" with the script's env variables in front, in the
# background where two must run at once (then $! is wrk itself).
wrk_command() {
  local key=$1 script=$2 connections=$3 url=$4 threads=${5:-$WRK_THREADS}
  ((threads <= connections)) || threads=$connections
  WRK_CMD=(taskset -c "$CLIENT_CPU" wrk --latency --timeout 30s -t "$threads"
    -c "$connections" -d "${WRK_DURATION:-$DURATION}" -s "$ROOT/bench/$script" "$url")
  WRK_OUT=$OUT_DIR/raw/$key.txt
}

# Reads the BENCH line of OUT_DIR/raw/KEY.txt into the arrays above.
collect() {
  local key=$1 line field requests=0 duration_us=0 p50_us=0 p99_us=0 non2xx=0 socket_errors=0
  line=$(grep '^BENCH ' "$OUT_DIR/raw/$key.txt" | tail -n 1 || true)
  if [[ -z $line ]]; then
    cat "$OUT_DIR/raw/$key.txt" >&2
    die "wrk printed no BENCH line for $key"
  fi
  for field in ${line#BENCH }; do
    case ${field%%=*} in
      requests | duration_us | p50_us | p99_us | non2xx | socket_errors)
        printf -v "${field%%=*}" '%s' "${field#*=}" ;;
    esac
  done
  REQ[$key]=$requests
  DUR_US[$key]=$duration_us
  RPS[$key]=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", (d > 0 ? r / (d / 1e6) : 0) }')
  P50[$key]=$p50_us
  P99[$key]=$p99_us
  NON2XX[$key]=$non2xx
  SOCKERR[$key]=$socket_errors
  log "$key: ${RPS[$key]} req/s, p50 ${p50_us} us, p99 ${p99_us} us, non-2xx $non2xx, socket errors $socket_errors"
}

# refresh_scenario KEY ADDRESS: a new user with REFRESH_CLIENTS sessions (a
# registration, then one login per session), then POST /api/auth/refresh
# with one connection and one wrk thread per session (bench/refresh.lua).
refresh_scenario() {
  local key=$1 address=$2 email tokens=$WORK/$1-refresh-tokens.txt
  email=bench-$key-$RUN_ID@bench.example
  register "$address" "$email" >/dev/null
  login_sessions "$address" "$email" "$REFRESH_CLIENTS" "$tokens"
  wrk_command "$key" refresh.lua "$REFRESH_CLIENTS" "http://$address/api/auth/refresh" \
    "$REFRESH_CLIENTS"
  BENCH_REFRESH_TOKENS=$tokens "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
  collect "$key"
}

# --- PostgreSQL: a scratch database for the refresh scenario -----------------
pg_psql() { # SQL: runs SQL on PG_URL's postgres database
  PGCONNECT_TIMEOUT=3 psql "$PG_URL/postgres" -X -q -At -v ON_ERROR_STOP=1 -c "$1"
}
# Whether PostgreSQL answers at PG_URL; if not, says why in PG_MISSING.
pg_reachable() {
  PG_MISSING=
  if [[ -z $PG_URL ]]; then
    PG_MISSING="not run: BENCH_PG_URL is empty"
  elif ! command -v psql >/dev/null; then
    PG_MISSING="not run: no psql to create a scratch database"
  elif ! command -v pgbench >/dev/null; then
    PG_MISSING="not run: no pgbench for the ceilings"
  elif ! pg_psql 'select 1' >/dev/null 2>&1; then
    PG_MISSING="not run: PostgreSQL not reachable at ${PG_URL#*@}"
  fi
  [[ -z $PG_MISSING ]]
}
drop_pg_db() {
  pg_psql "drop database if exists $PG_DB with (force)" >/dev/null
  PG_DB=
}

# --- build and tools -----------------------------------------------------------
need() { # COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return 0
  log "installing $2 (for $1)"
  [[ $(id -u) == 0 ]] || die "$1 is missing; install the Debian package $2 (needs root)"
  { apt-get update -qq >/dev/null && apt-get install -y -qq "$2" >/dev/null; } ||
    die "cannot install $2"
  command -v "$1" >/dev/null || die "$1 still missing after installing $2"
}
need wrk wrk
need curl curl
need taskset util-linux
# pgbench (the PostgreSQL rows' ceilings) comes with PostgreSQL's client
# tools; without it those rows say so.

CPUS=$(nproc)
if ((CPUS < 2)); then
  log "only $CPUS CPU: server and load generator share CPU 0"
  SERVER_CPU=0 CLIENT_CPU=0
fi

log "cargo build --profile $PROFILE --bins --examples"
cargo build --profile "$PROFILE" --bins --examples
for binary in gatehouse examples/baseline examples/seed examples/bcrypt_ceiling; do
  [[ -x $BIN_DIR/$binary ]] || die "missing $BIN_DIR/$binary after the build"
done

# Section 4d's binaries: the static musl build, with musl's malloc and with
# mimalloc (deploy/build-static.sh, same profile), copied to WORK as
# gatehouse-musl and gatehouse-mimalloc (both builds stay in cargo's cache,
# so a second run only copies them). If rustup's musl target or musl-gcc
# cannot be installed, or BENCH_MUSL=0, 4d's row says "skipped" and why.
MUSL_TARGET=x86_64-unknown-linux-musl
MUSL_BUILDS=(musl mimalloc)
MUSL_SKIPPED=
MUSL_BUILD_SECS=0
# musl_tools: whether the musl builds can be made here (installing rustup's
# target and, as root, Debian's musl-tools if missing); if not, says why in
# MUSL_SKIPPED.
musl_tools() {
  MUSL_SKIPPED=
  if [[ $MUSL == 0 ]]; then
    MUSL_SKIPPED="skipped: BENCH_MUSL=0"
    return 1
  fi
  if ! command -v rustup >/dev/null; then
    MUSL_SKIPPED="skipped: no rustup to add the $MUSL_TARGET target"
    return 1
  fi
  if ! rustup target list --installed | grep -qx "$MUSL_TARGET"; then
    log "rustup target add $MUSL_TARGET"
    if ! timeout 300 rustup target add "$MUSL_TARGET" >&2; then
      MUSL_SKIPPED="skipped: rustup target add $MUSL_TARGET failed"
      return 1
    fi
  fi
  if ! command -v musl-gcc >/dev/null; then
    if [[ $(id -u) != 0 ]]; then
      MUSL_SKIPPED="skipped: no musl-gcc (Debian's musl-tools; installing it needs root)"
      return 1
    fi
    log "installing musl-tools (for musl-gcc)"
    { apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; } >&2 || true
    if ! command -v musl-gcc >/dev/null; then
      MUSL_SKIPPED="skipped: cannot install Debian's musl-tools (musl-gcc)"
      return 1
    fi
  fi
}
if musl_tools; then
  MUSL_STARTED=$SECONDS
  # Smoke mode builds them without debuginfo: nothing else builds for the
  # musl target, so a fresh clone (CI) compiles every dependency for it;
  # that took ~2.5 min of CPU for both allocators, against ~4 with
  # debuginfo.
  MUSL_ENV=()
  [[ $PROFILE != dev ]] || MUSL_ENV=(CARGO_PROFILE_DEV_DEBUG=0)
  for build in "${MUSL_BUILDS[@]}"; do
    log "deploy/build-static.sh --profile $PROFILE --allocator $build${MUSL_ENV[*]:+ (${MUSL_ENV[*]})}"
    env ${MUSL_ENV[@]+"${MUSL_ENV[@]}"} deploy/build-static.sh --profile "$PROFILE" --allocator "$build" >&2
    cp "$TARGET_DIR/$MUSL_TARGET/${BIN_DIR##*/}/gatehouse" "$WORK/gatehouse-$build"
  done
  MUSL_BUILD_SECS=$((SECONDS - MUSL_STARTED))
else
  log "glibc and musl builds (4d): $MUSL_SKIPPED"
fi
mkdir -p "$OUT_DIR/raw"
rm -f "$OUT_DIR"/raw/*.txt
STARTED=$SECONDS

# --- 2. gatehouse on a fresh data dir ----------------------------------------
log "gatehouse on a fresh data dir (cost $COST, $DURATION per scenario)"
start_gatehouse "$WORK/data-fresh" fresh
ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
wait_for_health "$ADDRESS"
RSS_IDLE=$(rss_kib "$GH_PID")

ME_TOKEN=$(register "$ADDRESS" "bench-me-$RUN_ID@bench.example")
# The logins (flood and login rows) are another user's: every login starts a
# session, and a user keeps at most 100 (store::MAX_SESSIONS_PER_USER), so
# logging in as the /me user would end the session of the /me token.
LOGIN_EMAIL=bench-login-$RUN_ID@bench.example
register "$ADDRESS" "$LOGIN_EMAIL" >/dev/null
PATCH_TOKEN=$(register "$ADDRESS" "bench-patch-$RUN_ID@bench.example")
PATCH_ID=$(me_id "$ADDRESS" "$PATCH_TOKEN")
me_id "$ADDRESS" "$ME_TOKEN" >/dev/null

BASELINE_LOG=$WORK/baseline.log
taskset -c "$SERVER_CPU" "$BIN_DIR/examples/baseline" 127.0.0.1:0 >"$BASELINE_LOG" 2>&1 &
BASELINE_PID=$!
PIDS+=("$BASELINE_PID")
BASELINE_ADDRESS=$(wait_for_address "$BASELINE_LOG" "$BASELINE_PID")

# median VALUE...: the median of numbers (the mean of the middle two if even).
median() {
  printf '%s\n' "$@" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# aggregate KEY: KEY's numbers from its rounds KEY_1..KEY_ROUNDS: the median
# rate and latencies (rounded to whole microseconds), requests and errors
# summed.
aggregate() {
  local key=$1 measure round ref value numbers
  for measure in RPS P50 P99; do
    numbers=()
    for ((round = 1; round <= ROUNDS; round++)); do
      ref="${measure}[${key}_$round]"
      numbers+=("${!ref}")
    done
    value=$(median "${numbers[@]}")
    [[ $measure == RPS ]] || value=$(printf '%.0f' "$value")
    printf -v "${measure}[$key]" '%s' "$value"
  done
  REQ[$key]=0 NON2XX[$key]=0 SOCKERR[$key]=0 DUR_US[$key]=0
  for ((round = 1; round <= ROUNDS; round++)); do
    REQ[$key]=$((REQ[$key] + REQ[${key}_$round]))
    NON2XX[$key]=$((NON2XX[$key] + NON2XX[${key}_$round]))
    SOCKERR[$key]=$((SOCKERR[$key] + SOCKERR[${key}_$round]))
    DUR_US[$key]=$((DUR_US[$key] + DUR_US[${key}_$round]))
  done
}

# ratio_of A B: A / B with two decimals (0 if B is 0).
ratio_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# me_against_baseline NAME TOKEN: ROUNDS rounds of GET /api/auth/me (64
# connections, TOKEN) on the baseline then on gatehouse (GH_PID at ADDRESS),
# each paused while the other runs. The rounds' numbers go under the keys
# baseline_1, me_1 … (baseline_NAME_1, me_NAME_1 … when NAME is given),
# their medians under baseline and me (baseline_NAME, me_NAME), the rounds'
# ratios to ROUND_RATIOS and their median to ME_ROUNDS_RATIO.
me_against_baseline() {
  local name=${1:+_$1} token=$2 round
  ROUND_RATIOS=()
  for ((round = 1; round <= ROUNDS; round++)); do
    kill -STOP "$GH_PID"
    kill -CONT "$BASELINE_PID"
    WRK_DURATION=$ROUND_DURATION wrk_command "baseline${name}_$round" me.lua 64 \
      "http://$BASELINE_ADDRESS/api/auth/me"
    BENCH_TOKEN=$token "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    kill -STOP "$BASELINE_PID"
    kill -CONT "$GH_PID"
    WRK_DURATION=$ROUND_DURATION wrk_command "me${name}_$round" me.lua 64 \
      "http://$ADDRESS/api/auth/me"
    BENCH_TOKEN=$token "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    collect "baseline${name}_$round"
    collect "me${name}_$round"
    ROUND_RATIOS+=("$(ratio_of "${RPS[me${name}_$round]}" "${RPS[baseline${name}_$round]}")")
  done
  aggregate "me$name"
  aggregate "baseline$name"
  ME_ROUNDS_RATIO=$(median "${ROUND_RATIOS[@]}")
}

log "GET /api/auth/me vs the baseline, 64 connections, $ROUNDS rounds of $ROUND_DURATION each"
me_against_baseline "" "$ME_TOKEN"
ME_RATIO=$ME_ROUNDS_RATIO
ME_ROUND_RATIOS=("${ROUND_RATIOS[@]}")
log "/me ÷ baseline per round: ${ME_ROUND_RATIOS[*]}; median $ME_RATIO"
kill -STOP "$BASELINE_PID" # paused until the per-algorithm rounds

log "GET /api/auth/me alone, then during a login flood of 16 connections, $ROUNDS rounds"
FLOOD_RPS_RATIOS=() FLOOD_P99_RATIOS=()
for ((round = 1; round <= ROUNDS; round++)); do
  WRK_DURATION=$ROUND_DURATION wrk_command "solo_$round" me.lua 64 "http://$ADDRESS/api/auth/me"
  BENCH_TOKEN=$ME_TOKEN "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
  WRK_DURATION=$ROUND_DURATION wrk_command "flood_me_$round" me.lua 64 "http://$ADDRESS/api/auth/me"
  BENCH_TOKEN=$ME_TOKEN "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1 &
  FLOOD_ME_PID=$!
  WRK_DURATION=$ROUND_DURATION wrk_command "flood_login_$round" login.lua 16 \
    "http://$ADDRESS/api/auth/login"
  BENCH_EMAIL=$LOGIN_EMAIL "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1 &
  FLOOD_LOGIN_PID=$!
  PIDS+=("$FLOOD_ME_PID" "$FLOOD_LOGIN_PID")
  wait "$FLOOD_ME_PID" || die "wrk for /me during the flood failed"
  wait "$FLOOD_LOGIN_PID" || die "wrk for the login flood failed"
  forget_pid "$FLOOD_ME_PID"
  forget_pid "$FLOOD_LOGIN_PID"
  collect "solo_$round"
  collect "flood_me_$round"
  collect "flood_login_$round"
  FLOOD_RPS_RATIOS+=("$(ratio_of "${RPS[flood_me_$round]}" "${RPS[solo_$round]}")")
  FLOOD_P99_RATIOS+=("$(ratio_of "${P99[flood_me_$round]}" "${P99[solo_$round]}")")
done
aggregate solo
aggregate flood_me
aggregate flood_login
# Logins under the flood are few (hashing gets its share of the core, see
# domain/password.rs): their rate over all rounds, and the worst round's
# latencies.
RPS[flood_login]=$(awk -v r="${REQ[flood_login]}" -v d="${DUR_US[flood_login]}" \
  'BEGIN { printf "%.1f", (d > 0 ? r / (d / 1e6) : 0) }')
for measure in P50 P99; do
  worst=0
  for ((round = 1; round <= ROUNDS; round++)); do
    ref="${measure}[flood_login_$round]"
    ((${!ref} <= worst)) || worst=${!ref}
  done
  printf -v "${measure}[flood_login]" '%s' "$worst"
done
FLOOD_RPS_RATIO=$(median "${FLOOD_RPS_RATIOS[@]}")
FLOOD_P99_RATIO=$(median "${FLOOD_P99_RATIOS[@]}")
log "flood ÷ solo per round: rps ${FLOOD_RPS_RATIOS[*]}, p99 ${FLOOD_P99_RATIOS[*]}"

log "POST /api/auth/login, 16 connections"
wrk_command login login.lua 16 "http://$ADDRESS/api/auth/login"
BENCH_EMAIL=$LOGIN_EMAIL "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
collect login

log "POST /api/auth/register with unique emails, 16 connections"
wrk_command register register.lua 16 "http://$ADDRESS/api/auth/register"
"${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
collect register

log "PATCH /api/users/{id} name changes, 64 connections"
wrk_command patch patch.lua 64 "http://$ADDRESS/api/users/$PATCH_ID"
BENCH_TOKEN=$PATCH_TOKEN "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
collect patch

log "POST /api/auth/refresh on $MAIN_STORE, $REFRESH_CLIENTS connections, each its own session's chain"
refresh_scenario refresh "$ADDRESS"

stop_server "$GH_PID"

# --- 4. the refresh scenario on PostgreSQL ----------------------------------------
# pgbench_round KEY ARGS...: one pgbench run (on CLIENT_CPU, PG_CLIENTS
# connections, one thread, prepared statements, ROUND_DURATION) on the
# scratch database; its rate goes to RPS[KEY].
pgbench_round() {
  local key=$1 out
  shift
  out=$OUT_DIR/raw/$key.txt
  taskset -c "$CLIENT_CPU" pgbench -n -M prepared -c "$PG_CLIENTS" -j 1 \
    -T "${ROUND_DURATION%s}" "$@" "$PG_URL/$PG_DB" >"$out" 2>&1 ||
    { cat "$out" >&2; die "pgbench $* failed"; }
  RPS[$key]=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out")
  [[ -n ${RPS[$key]} ]] || { cat "$out" >&2; die "pgbench printed no tps for $key"; }
  log "$key: ${RPS[$key]} transactions/s"
}

# pg_against_pgbench NAME SCRIPT THREADS TOKEN URL PGBENCH-ARGS...: ROUNDS
# rounds of gatehouse (wrk SCRIPT on URL, PG_CLIENTS connections, THREADS
# wrk threads) then pgbench, each round's ratio to PG_RATIOS[NAME], their
# median to PG_RATIO[NAME].
pg_against_pgbench() {
  local name=$1 script=$2 threads=$3 token=$4 url=$5 round ratios=()
  shift 5
  for ((round = 1; round <= ROUNDS; round++)); do
    WRK_DURATION=$ROUND_DURATION wrk_command "${name}_$round" "$script" "$PG_CLIENTS" "$url" \
      "$threads"
    BENCH_TOKEN=$token "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    collect "${name}_$round"
    pgbench_round "pgbench_${name}_$round" "$@"
    ratios+=("$(ratio_of "${RPS[${name}_$round]}" "${RPS[pgbench_${name}_$round]}")")
  done
  aggregate "$name"
  local ceilings=()
  for ((round = 1; round <= ROUNDS; round++)); do ceilings+=("${RPS[pgbench_${name}_$round]}"); done
  RPS[pgbench_$name]=$(median "${ceilings[@]}")
  PG_RATIO[$name]=$(median "${ratios[@]}")
  PG_RATIOS[$name]="${ratios[*]}"
  log "$name ÷ pgbench per round: ${ratios[*]}; median ${PG_RATIO[$name]}"
}

declare -A PG_RATIO PG_RATIOS
if pg_reachable; then
  PG_DB=gatehouse_bench_${RUN_ID//-/_}
  log "POST /api/auth/refresh on PostgreSQL (scratch database $PG_DB at ${PG_URL#*@})"
  pg_psql "create database $PG_DB" >/dev/null
  start_gatehouse "$WORK/data-pg" pg "$PG_URL/$PG_DB"
  ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
  wait_for_health "$ADDRESS"
  refresh_scenario refresh_pg "$ADDRESS"

  # /me and PATCH on PostgreSQL against the database's own rates at the
  # same concurrency: pgbench -S (one primary-key SELECT a transaction) and
  # a one-row UPDATE script, on pgbench's tables in the same scratch
  # database (gatehouse's tables are gatehouse_*).
  log "pgbench tables in $PG_DB (scale 1)"
  pgbench -i -q -s 1 "$PG_URL/$PG_DB" >"$OUT_DIR/raw/pgbench_init.txt" 2>&1 ||
    { cat "$OUT_DIR/raw/pgbench_init.txt" >&2; die "pgbench -i failed"; }
  printf '%s\n' '\set aid random(1, 100000 * :scale)' \
    'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;' \
    >"$WORK/pgbench-update.sql"
  PG_ME_TOKEN=$(register "$ADDRESS" "bench-pg-me-$RUN_ID@bench.example")
  # PATCH: a user per connection (bench/patch_users.lua), as pgbench's
  # UPDATEs fall on random rows.
  export BENCH_PATCH_USERS=$WORK/pg-patch-users.txt
  : >"$BENCH_PATCH_USERS"
  for ((i = 0; i < PG_CLIENTS; i++)); do
    token=$(register "$ADDRESS" "bench-pg-patch-$i-$RUN_ID@bench.example")
    echo "$token $(me_id "$ADDRESS" "$token")" >>"$BENCH_PATCH_USERS"
  done
  log "GET /api/auth/me on PostgreSQL vs pgbench -S, $PG_CLIENTS connections, $ROUNDS rounds"
  pg_against_pgbench me_pg me.lua "$WRK_THREADS" "$PG_ME_TOKEN" "http://$ADDRESS/api/auth/me" -S
  log "PATCH /api/users/{id} on PostgreSQL (a user per connection) vs a one-row UPDATE, $PG_CLIENTS connections, $ROUNDS rounds"
  pg_against_pgbench patch_pg patch_users.lua "$PG_CLIENTS" "" "http://$ADDRESS/" \
    -f "$WORK/pgbench-update.sql"
  stop_server "$GH_PID"
  drop_pg_db
else
  log "PostgreSQL rows: $PG_MISSING"
fi

# --- 4b. each signing algorithm: /me against the baseline, and login -------------
# A fresh server per auth.algorithm, /me alternating with the baseline as
# above (the same token every request: the verified-token cache holds, as it
# does in production for a client's repeated requests), then logins (each
# signs a new token pair: the signing cost shows here).
ALGORITHMS=(HS256 EdDSA ES256 RS256)
declare -A ALG_RATIO ALG_RATIOS
for alg in "${ALGORITHMS[@]}"; do
  log "auth.algorithm = $alg: GET /api/auth/me vs the baseline, $ROUNDS rounds; then login"
  GH_ALGORITHM=$alg start_gatehouse "$WORK/data-$alg" "alg-$alg"
  ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
  wait_for_health "$ADDRESS"
  ALG_EMAIL=bench-alg-$alg-$RUN_ID@bench.example
  ALG_TOKEN=$(register "$ADDRESS" "$ALG_EMAIL")
  me_id "$ADDRESS" "$ALG_TOKEN" >/dev/null
  me_against_baseline "$alg" "$ALG_TOKEN"
  ALG_RATIO[$alg]=$ME_ROUNDS_RATIO
  ALG_RATIOS[$alg]="${ROUND_RATIOS[*]}"
  log "$alg: /me ÷ baseline per round: ${ROUND_RATIOS[*]}; median $ME_ROUNDS_RATIO"
  wrk_command "login_$alg" login.lua 16 "http://$ADDRESS/api/auth/login"
  BENCH_EMAIL=$ALG_EMAIL "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
  collect "login_$alg"
  stop_server "$GH_PID"
done

# --- 4c. metrics off and on, in alternating rounds --------------------------------
# Two servers on fresh data dirs, the second with metrics.listen; each round
# runs the baseline, then the off server, then the on server (the others
# paused), /me then login on each. During the on server's turn a scraper
# reads /metrics every second, as a Prometheus with a 1 s interval would.
log "metrics off and on: /me vs the baseline and login, $ROUNDS rounds of $ROUND_DURATION each; /metrics scraped every second while on"
start_gatehouse "$WORK/data-metrics-off" metrics-off
METRICS_OFF_PID=$GH_PID
METRICS_OFF_ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
wait_for_health "$METRICS_OFF_ADDRESS"
GH_METRICS=127.0.0.1:0 start_gatehouse "$WORK/data-metrics-on" metrics-on
METRICS_ON_PID=$GH_PID
METRICS_ON_ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
METRICS_PAGE=http://$(wait_for_address "$GH_LOG" "$GH_PID" 60 metrics)/metrics
wait_for_health "$METRICS_ON_ADDRESS"
declare -A METRICS_TOKEN METRICS_LOGIN_EMAIL
for mode in off on; do
  address_ref=METRICS_${mode^^}_ADDRESS
  METRICS_TOKEN[$mode]=$(register "${!address_ref}" "bench-metrics-$mode-me-$RUN_ID@bench.example")
  METRICS_LOGIN_EMAIL[$mode]=bench-metrics-$mode-login-$RUN_ID@bench.example
  register "${!address_ref}" "${METRICS_LOGIN_EMAIL[$mode]}" >/dev/null
done
SCRAPES=$WORK/scrapes.txt
: >"$SCRAPES"
# scraper PAGE: reads PAGE every second (on CLIENT_CPU), a line in SCRAPES
# per page read; runs until killed.
scraper() {
  while :; do
    if curl -sf -o /dev/null --max-time 5 "$1"; then echo ok >>"$SCRAPES"; fi
    sleep 1
  done
}
kill -STOP "$METRICS_OFF_PID" "$METRICS_ON_PID"
ME_OFF_RATIOS=() ME_ON_RATIOS=()
for ((round = 1; round <= ROUNDS; round++)); do
  # Each /me run is paired with a baseline run just before it (a noisy
  # machine drifts within seconds), and which server goes first alternates
  # from round to round.
  if ((round % 2)); then modes=(off on); else modes=(on off); fi
  for mode in "${modes[@]}"; do
    pid_ref=METRICS_${mode^^}_PID
    address_ref=METRICS_${mode^^}_ADDRESS
    kill -CONT "$BASELINE_PID"
    WRK_DURATION=$ROUND_DURATION wrk_command "metrics_baseline_${mode}_$round" me.lua 64 \
      "http://$BASELINE_ADDRESS/api/auth/me"
    BENCH_TOKEN=${METRICS_TOKEN[$mode]} "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    kill -STOP "$BASELINE_PID"
    kill -CONT "${!pid_ref}"
    SCRAPER_PID=
    if [[ $mode == on ]]; then
      taskset -c "$CLIENT_CPU" bash -c "$(declare -f scraper); SCRAPES=$SCRAPES scraper $METRICS_PAGE" &
      SCRAPER_PID=$!
      PIDS+=("$SCRAPER_PID")
    fi
    WRK_DURATION=$ROUND_DURATION wrk_command "me_metrics_${mode}_$round" me.lua 64 \
      "http://${!address_ref}/api/auth/me"
    BENCH_TOKEN=${METRICS_TOKEN[$mode]} "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    WRK_DURATION=$ROUND_DURATION wrk_command "login_metrics_${mode}_$round" login.lua 16 \
      "http://${!address_ref}/api/auth/login"
    BENCH_EMAIL=${METRICS_LOGIN_EMAIL[$mode]} "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
    if [[ -n $SCRAPER_PID ]]; then
      stop_pid "$SCRAPER_PID"
      forget_pid "$SCRAPER_PID"
    fi
    kill -STOP "${!pid_ref}"
  done
  for key in metrics_baseline_off metrics_baseline_on me_metrics_off me_metrics_on login_metrics_off login_metrics_on; do
    collect "${key}_$round"
  done
  ME_OFF_RATIOS+=("$(ratio_of "${RPS[me_metrics_off_$round]}" "${RPS[metrics_baseline_off_$round]}")")
  ME_ON_RATIOS+=("$(ratio_of "${RPS[me_metrics_on_$round]}" "${RPS[metrics_baseline_on_$round]}")")
done
for key in metrics_baseline_off metrics_baseline_on me_metrics_off me_metrics_on login_metrics_off login_metrics_on; do
  aggregate "$key"
done
ME_OFF_RATIO=$(median "${ME_OFF_RATIOS[@]}")
ME_ON_RATIO=$(median "${ME_ON_RATIOS[@]}")
log "/me ÷ baseline per round, metrics off: ${ME_OFF_RATIOS[*]}; on: ${ME_ON_RATIOS[*]}"
# The on server recorded what it served: its page counts the /me requests.
kill -CONT "$METRICS_ON_PID"
METRICS_SCRAPES=$(wc -l <"$SCRAPES")
METRICS_ME_COUNTED=$(curl -s --max-time 10 "$METRICS_PAGE" |
  sed -n 's|^gatehouse_http_requests_total{route="/api/auth/me",method="GET",status="200"} \([0-9]*\)$|\1|p')
log "metrics page: $METRICS_SCRAPES scrapes during the on rounds; /me 200s counted: ${METRICS_ME_COUNTED:-none}"
kill -CONT "$METRICS_OFF_PID"
stop_server "$METRICS_OFF_PID"
stop_server "$METRICS_ON_PID"
stop_server "$BASELINE_PID"

# --- 4d. glibc and musl builds: /me and PATCH, in alternating rounds --------------
# Three servers on fresh data dirs, the same settings, one binary each: the
# glibc build of step 1, the static musl build with musl's malloc, and the
# static musl build with mimalloc. Each round gives every server (the others
# paused) a turn of /me (64 connections) then PATCH name changes (64
# connections, one user, as in 2), ROUND_DURATION each; the order is
# reversed every other round, so that a drifting machine favours none.
# Each build's ratios to glibc are the medians of the rounds' ratios.
LIBC_BUILDS=(glibc "${MUSL_BUILDS[@]}")
declare -A LIBC_BINARY=([glibc]=$BIN_DIR/gatehouse)
for build in "${MUSL_BUILDS[@]}"; do LIBC_BINARY[$build]=$WORK/gatehouse-$build; done
declare -A LIBC_PID LIBC_ADDRESS LIBC_ME_TOKEN LIBC_PATCH_TOKEN LIBC_PATCH_ID LIBC_RSS LIBC_HWM
declare -A LIBC_RATIO LIBC_RATIOS
declare -A LIBC_LABEL=([glibc]="glibc build" [musl]="static musl build, musl's malloc"
  [mimalloc]="static musl build with mimalloc")
LIBC_SECS=0
if [[ -z $MUSL_SKIPPED ]]; then
  log "glibc and musl builds: /me and PATCH (c64) on each, $ROUNDS rounds of $ROUND_DURATION each"
  LIBC_STARTED=$SECONDS
  for build in "${LIBC_BUILDS[@]}"; do
    GH_BINARY=${LIBC_BINARY[$build]} start_gatehouse "$WORK/data-libc-$build" "libc-$build"
    LIBC_PID[$build]=$GH_PID
    LIBC_ADDRESS[$build]=$(wait_for_address "$GH_LOG" "$GH_PID")
    wait_for_health "${LIBC_ADDRESS[$build]}"
    LIBC_ME_TOKEN[$build]=$(register "${LIBC_ADDRESS[$build]}" "bench-libc-$build-me-$RUN_ID@bench.example")
    me_id "${LIBC_ADDRESS[$build]}" "${LIBC_ME_TOKEN[$build]}" >/dev/null
    LIBC_PATCH_TOKEN[$build]=$(register "${LIBC_ADDRESS[$build]}" \
      "bench-libc-$build-patch-$RUN_ID@bench.example")
    LIBC_PATCH_ID[$build]=$(me_id "${LIBC_ADDRESS[$build]}" "${LIBC_PATCH_TOKEN[$build]}")
    kill -STOP "$GH_PID"
  done
  declare -A LIBC_ROUND_RATIOS
  for ((round = 1; round <= ROUNDS; round++)); do
    order=("${LIBC_BUILDS[@]}")
    if ((round % 2 == 0)); then
      order=()
      for build in "${LIBC_BUILDS[@]}"; do order=("$build" "${order[@]}"); done
    fi
    for build in "${order[@]}"; do
      kill -CONT "${LIBC_PID[$build]}"
      WRK_DURATION=$ROUND_DURATION wrk_command "me_${build}_$round" me.lua 64 \
        "http://${LIBC_ADDRESS[$build]}/api/auth/me"
      BENCH_TOKEN=${LIBC_ME_TOKEN[$build]} "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
      WRK_DURATION=$ROUND_DURATION wrk_command "patch_${build}_$round" patch.lua 64 \
        "http://${LIBC_ADDRESS[$build]}/api/users/${LIBC_PATCH_ID[$build]}"
      BENCH_TOKEN=${LIBC_PATCH_TOKEN[$build]} "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
      kill -STOP "${LIBC_PID[$build]}"
    done
    for build in "${LIBC_BUILDS[@]}"; do
      collect "me_${build}_$round"
      collect "patch_${build}_$round"
    done
    # The ratios: each musl build ÷ glibc, and mimalloc ÷ musl's malloc.
    for pair in musl/glibc mimalloc/glibc mimalloc/musl; do
      for scenario in me patch; do
        LIBC_ROUND_RATIOS[$scenario-$pair]+=" $(ratio_of "${RPS[${scenario}_${pair%/*}_$round]}" \
          "${RPS[${scenario}_${pair#*/}_$round]}")"
      done
    done
  done
  for build in "${LIBC_BUILDS[@]}"; do
    aggregate "me_$build"
    aggregate "patch_$build"
    LIBC_RSS[$build]=$(rss_kib "${LIBC_PID[$build]}")
    LIBC_HWM[$build]=$(hwm_kib "${LIBC_PID[$build]}")
  done
  for key in "${!LIBC_ROUND_RATIOS[@]}"; do
    LIBC_RATIOS[$key]=${LIBC_ROUND_RATIOS[$key]# }
    # (unquoted: the rounds' ratios as separate arguments)
    # shellcheck disable=SC2086
    LIBC_RATIO[$key]=$(median ${LIBC_RATIOS[$key]})
  done
  log "musl ÷ glibc per round: /me ${LIBC_RATIOS[me-musl/glibc]}; PATCH ${LIBC_RATIOS[patch-musl/glibc]}"
  log "mimalloc ÷ glibc per round: /me ${LIBC_RATIOS[me-mimalloc/glibc]}; PATCH ${LIBC_RATIOS[patch-mimalloc/glibc]}"
  for build in "${LIBC_BUILDS[@]}"; do
    kill -CONT "${LIBC_PID[$build]}"
    stop_server "${LIBC_PID[$build]}"
  done
  LIBC_SECS=$((SECONDS - LIBC_STARTED))
fi

# --- 5. one core's bcrypt verify rate ---------------------------------------------
log "bcrypt verify ceiling on CPU $SERVER_CPU (cost $COST, ${CEILING_SECS}s)"
CEILING=$(taskset -c "$SERVER_CPU" "$BIN_DIR/examples/bcrypt_ceiling" "$COST" "$CEILING_SECS")

# --- 6. many users: seed, cold start, RSS, disk -------------------------------------
log "seeding $USERS users (server stopped)"
SEEDED=$WORK/data-seeded
SEED_OUTPUT=$(GATEHOUSE_AUTH__SECRET=$SECRET "$BIN_DIR/examples/seed" "$SEEDED" "$USERS" "$COST")
log "$SEED_OUTPUT"
SEED_SECS=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' <<<"$SEED_OUTPUT")
ADMIN_EMAIL=admin@bench.example
(
  cd "$WORK"
  GATEHOUSE_AUTH__BCRYPT_COST=$COST "$BIN_DIR/gatehouse" --data-dir "$SEEDED" \
    admin create --email "$ADMIN_EMAIL" --name Admin --password-stdin <<<"$PASSWORD" >/dev/null
)

# measure_seeded KEY LABEL: starts gatehouse on SEEDED and times its cold
# start to the first 200, pages through all users as the admin, runs /me
# (wrk KEY) as a seeded user, reads the RSS, stops it and reads the data dir's
# size. Sets M_COLD_MS, M_RSS_COLD, M_RSS, M_HWM (KiB) and M_DISK (KiB).
measure_seeded() {
  local key=$1 label=$2 listed=0 after= page count admin_token seed_token t0
  log "cold start with $label"
  t0=$(now_ms)
  start_gatehouse "$SEEDED" "$key"
  ADDRESS=$(wait_for_address "$GH_LOG" "$GH_PID")
  wait_for_health "$ADDRESS"
  M_COLD_MS=$(($(now_ms) - t0))
  M_RSS_COLD=$(rss_kib "$GH_PID")

  log "listing all users as the admin, then /me as a seeded user ($label)"
  admin_token=$(login "$ADDRESS" "$ADMIN_EMAIL")
  while :; do
    page=$(curl -sS --max-time 60 "http://$ADDRESS/api/users?limit=1000${after:+&after=$after}" \
      -H "x-access-token: $admin_token")
    count=$({ grep -o '"_id":"[^"]*"' <<<"$page" || true; } | wc -l)
    listed=$((listed + count))
    ((count == 1000)) || break
    after=$(grep -o '"_id":"[^"]*"' <<<"$page" | tail -n 1 | cut -d '"' -f 4)
  done
  ((listed == USERS + 1)) || die "listed $listed users, expected $((USERS + 1))"
  seed_token=$(login "$ADDRESS" seed-0@bench.example)
  wrk_command "$key" me.lua 64 "http://$ADDRESS/api/auth/me"
  BENCH_TOKEN=$seed_token "${WRK_CMD[@]}" >"$WRK_OUT" 2>&1
  collect "$key"
  M_RSS=$(rss_kib "$GH_PID")
  M_HWM=$(hwm_kib "$GH_PID")
  stop_server "$GH_PID"
  M_DISK=$(du -sk "$SEEDED" | cut -f 1)
}

measure_seeded seeded_me "$USERS users"
COLD_START_MS=$M_COLD_MS RSS_COLD=$M_RSS_COLD RSS_USERS=$M_RSS HWM_USERS=$M_HWM DISK_KIB=$M_DISK

# --- 7. the same users with sessions ------------------------------------------------
TOTAL_SESSIONS=$((USERS * SESSIONS))
log "adding $SESSIONS sessions to each of the $USERS users (server stopped)"
SEED_OUTPUT=$(GATEHOUSE_AUTH__SECRET=$SECRET "$BIN_DIR/examples/seed" "$SEEDED" "$USERS" "$COST" \
  "$SESSIONS")
log "$SEED_OUTPUT"
SESSION_SEED_SECS=$(sed -n 's/.* in \([0-9.]*\) s .*/\1/p' <<<"$SEED_OUTPUT")
measure_seeded sessions_me "$USERS users × $SESSIONS sessions"
SESSIONS_COLD_START_MS=$M_COLD_MS RSS_SESSIONS_COLD=$M_RSS_COLD RSS_SESSIONS=$M_RSS
HWM_SESSIONS=$M_HWM DISK_SESSIONS_KIB=$M_DISK

# --- report ---------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ms() { awk -v u="$1" 'BEGIN { m = u / 1000; f = m >= 100 ? "%.0f ms" : "%.2f ms"; printf f, m }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
errors() {
  local total=$((NON2XX[$1] + SOCKERR[$1]))
  if ((total == 0)); then echo 0; else echo "$total (bad status ${NON2XX[$1]}, socket ${SOCKERR[$1]})"; fi
}
row() { # KEY LABEL RATIO
  local p50=n/a p99=n/a
  if ((REQ[$1] > 0)); then p50=$(ms "${P50[$1]}") p99=$(ms "${P99[$1]}"); fi
  printf '| %s | %s | %s | %s | %s | %s |\n' "$2" "${RPS[$1]}" "$p50" "$p99" "$(errors "$1")" "$3"
}
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
PATCH_FLOOR=2000
REFRESH_FLOOR=2000
REFRESH_LABEL="(c$REFRESH_CLIENTS, each its own session's chain; rotations/s)"
if [[ -n ${RPS[refresh_pg]:-} ]]; then
  REFRESH_PG_ROW=$(row refresh_pg "POST /api/auth/refresh, PostgreSQL $REFRESH_LABEL" \
    "$(ratio "${RPS[refresh_pg]}" "$REFRESH_FLOOR") × 2,000/s; $(ratio "${RPS[refresh_pg]}" "${RPS[refresh]}") × $MAIN_STORE")
else
  REFRESH_PG_ROW="| POST /api/auth/refresh, PostgreSQL $REFRESH_LABEL | $PG_MISSING | | | | |"
fi
RESULTS=$OUT_DIR/results.md
{
  echo "## gatehouse load benchmark ($MODE run)"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, profile $PROFILE, bcrypt cost $COST,"
  echo "$DURATION per scenario ($ROUNDS × $ROUND_DURATION for /me vs baseline), $USERS seeded users (then $SESSIONS sessions each); store $MAIN_STORE;"
  echo "$CPUS CPUs ($CPU_MODEL); servers on CPU $SERVER_CPU, wrk ($WRK_THREADS threads; refresh: one per connection) on CPU $CLIENT_CPU;"
  echo "command: \`bench/run.sh$([[ $SMOKE == 1 ]] && echo ' --smoke')\`"
  echo
  echo "| scenario | requests/s | p50 | p99 | errors | ratio to its ceiling |"
  echo "| --- | ---: | ---: | ---: | ---: | --- |"
  row baseline "baseline: bare hyper, fixed JSON (c64; median of $ROUNDS rounds)" "(ceiling for /me)"
  row me "GET /api/auth/me (c64; median of $ROUNDS rounds)" "$ME_RATIO × baseline (median of the rounds' ratios)"
  row login "POST /api/auth/login (c16)" "$(ratio "${RPS[login]}" "$CEILING") × bcrypt ceiling"
  row register "POST /api/auth/register (c16)" "$(ratio "${RPS[register]}" "$CEILING") × bcrypt ceiling"
  row patch "PATCH /api/users/{id} (c64)" "$(ratio "${RPS[patch]}" "$PATCH_FLOOR") × 2,000/s"
  row solo "/me alone, each just before a flood round (c64; median of $ROUNDS rounds)" "(ceiling for the flood row)"
  row flood_me "/me during a login flood (c64; median of $ROUNDS rounds)" \
    "rps $FLOOD_RPS_RATIO × solo, p99 $FLOOD_P99_RATIO × solo (medians of the rounds' ratios)"
  row flood_login "the login flood itself (c16; all rounds; worst round's latencies)" "$(ratio "${RPS[flood_login]}" "$CEILING") × bcrypt ceiling"
  row refresh "POST /api/auth/refresh, $MAIN_STORE $REFRESH_LABEL" "$(ratio "${RPS[refresh]}" "$REFRESH_FLOOR") × 2,000/s"
  echo "$REFRESH_PG_ROW"
  if [[ -n ${PG_RATIO[me_pg]:-} ]]; then
    row me_pg "GET /api/auth/me, PostgreSQL (c$PG_CLIENTS; median of $ROUNDS rounds)" \
      "${PG_RATIO[me_pg]} × pgbench -S -M prepared -c$PG_CLIENTS ($(printf '%.0f' "${RPS[pgbench_me_pg]}")/s; median of the rounds' ratios)"
    row patch_pg "PATCH /api/users/{id}, PostgreSQL (c$PG_CLIENTS, a user each; median of $ROUNDS rounds)" \
      "${PG_RATIO[patch_pg]} × pgbench one-row UPDATE -M prepared -c$PG_CLIENTS ($(printf '%.0f' "${RPS[pgbench_patch_pg]}")/s; median of the rounds' ratios)"
  else
    echo "| GET /api/auth/me and PATCH, PostgreSQL | $PG_MISSING | | | | |"
  fi
  for alg in "${ALGORITHMS[@]}"; do
    row "me_$alg" "GET /api/auth/me, auth.algorithm $alg (c64; median of $ROUNDS rounds)" \
      "${ALG_RATIO[$alg]} × baseline (median of the rounds' ratios; baseline $(printf '%.0f' "${RPS[baseline_$alg]}")/s)"
    row "login_$alg" "POST /api/auth/login, auth.algorithm $alg (c16)" \
      "$(ratio "${RPS[login_$alg]}" "$CEILING") × bcrypt ceiling"
  done
  row me_metrics_off "GET /api/auth/me, metrics off (c64; median of $ROUNDS rounds)" \
    "$ME_OFF_RATIO × baseline (median of the rounds' ratios, each to the baseline run just before it; baseline $(printf '%.0f' "${RPS[metrics_baseline_off]}")/s)"
  row me_metrics_on "GET /api/auth/me, metrics on, /metrics scraped every second (c64; median of $ROUNDS rounds)" \
    "$ME_ON_RATIO × baseline (median of the rounds' ratios, each to the baseline run just before it; baseline $(printf '%.0f' "${RPS[metrics_baseline_on]}")/s); $(ratio "${RPS[me_metrics_on]}" "${RPS[me_metrics_off]}") × metrics off"
  row login_metrics_off "POST /api/auth/login, metrics off (c16; median of $ROUNDS rounds)" \
    "$(ratio "${RPS[login_metrics_off]}" "$CEILING") × bcrypt ceiling"
  row login_metrics_on "POST /api/auth/login, metrics on, scraped every second (c16; median of $ROUNDS rounds)" \
    "$(ratio "${RPS[login_metrics_on]}" "$CEILING") × bcrypt ceiling; $(ratio "${RPS[login_metrics_on]}" "${RPS[login_metrics_off]}") × metrics off"
  if [[ -z $MUSL_SKIPPED ]]; then
    LIBC_NOTE="median of the rounds' ratios"
    row me_glibc "GET /api/auth/me, glibc build (c64; median of $ROUNDS rounds)" \
      "(reference for the static musl builds)"
    row me_musl "GET /api/auth/me, static musl build, musl's malloc (c64; median of $ROUNDS rounds)" \
      "${LIBC_RATIO[me-musl/glibc]} × glibc build ($LIBC_NOTE)"
    row me_mimalloc "GET /api/auth/me, static musl build with mimalloc (c64; median of $ROUNDS rounds)" \
      "${LIBC_RATIO[me-mimalloc/glibc]} × glibc build; ${LIBC_RATIO[me-mimalloc/musl]} × musl's malloc ($LIBC_NOTE)"
    row patch_glibc "PATCH /api/users/{id}, glibc build (c64; median of $ROUNDS rounds)" \
      "$(ratio "${RPS[patch_glibc]}" "$PATCH_FLOOR") × 2,000/s"
    row patch_musl "PATCH /api/users/{id}, static musl build, musl's malloc (c64; median of $ROUNDS rounds)" \
      "${LIBC_RATIO[patch-musl/glibc]} × glibc build ($LIBC_NOTE)"
    row patch_mimalloc "PATCH /api/users/{id}, static musl build with mimalloc (c64; median of $ROUNDS rounds)" \
      "${LIBC_RATIO[patch-mimalloc/glibc]} × glibc build; ${LIBC_RATIO[patch-mimalloc/musl]} × musl's malloc ($LIBC_NOTE)"
  else
    echo "| GET /api/auth/me and PATCH, glibc and static musl builds | $MUSL_SKIPPED | | | | |"
  fi
  row seeded_me "/me with $USERS users stored (c64)" "$(ratio "${RPS[seeded_me]}" "${RPS[me]}") × /me on a fresh store"
  row sessions_me "/me with $USERS users × $SESSIONS sessions stored (c64)" "$(ratio "${RPS[sessions_me]}" "${RPS[me]}") × /me on a fresh store"
  echo
  echo "| measure | value | against |"
  echo "| --- | ---: | --- |"
  echo "| bcrypt verify, one core (cost $COST) | $CEILING /s | (ceiling for login, register) |"
  echo "| RSS idle (fresh data dir) | $(mib "$RSS_IDLE") | |"
  echo "| RSS after start with $USERS users | $(mib "$RSS_COLD") | |"
  echo "| RSS after listing all $USERS users and /me load | $(mib "$RSS_USERS") (peak $(mib "$HWM_USERS")) | $(ratio "$RSS_USERS" 65536) × 64 MiB |"
  echo "| data dir on disk, $USERS users | $(mib "$DISK_KIB") | |"
  echo "| cold start to first 200, $USERS users | $COLD_START_MS ms | $(ratio "$COLD_START_MS" 1000) × 1 s |"
  echo "| seeding $USERS users (64 concurrent inserts) | ${SEED_SECS:-?} s | |"
  echo "| RSS after start with $USERS users × $SESSIONS sessions | $(mib "$RSS_SESSIONS_COLD") | |"
  echo "| RSS after listing all $USERS users and /me load, $USERS users × $SESSIONS sessions | $(mib "$RSS_SESSIONS") (peak $(mib "$HWM_SESSIONS")) | $(ratio "$RSS_SESSIONS" 65536) × 64 MiB |"
  echo "| data dir on disk, $USERS users × $SESSIONS sessions | $(mib "$DISK_SESSIONS_KIB") | $(ratio "$DISK_SESSIONS_KIB" "$DISK_KIB") × users alone |"
  echo "| cold start to first 200, $USERS users × $SESSIONS sessions | $SESSIONS_COLD_START_MS ms | $(ratio "$SESSIONS_COLD_START_MS" 1000) × 1 s |"
  echo "| seeding $TOTAL_SESSIONS sessions (64 concurrent inserts) | ${SESSION_SEED_SECS:-?} s | |"
  if [[ -z $MUSL_SKIPPED ]]; then
    for build in "${LIBC_BUILDS[@]}"; do
      echo "| RSS after the glibc/musl rounds, ${LIBC_LABEL[$build]} | $(mib "${LIBC_RSS[$build]}") (peak $(mib "${LIBC_HWM[$build]}")) | $(ratio "${LIBC_RSS[$build]}" "${LIBC_RSS[glibc]}") × glibc build |"
    done
    echo "| building the static musl binaries, both allocators (profile $PROFILE) | $MUSL_BUILD_SECS s | (before the timer; 0-1 s when cached) |"
    echo "| the glibc/musl section (3 servers, $ROUNDS rounds) | $LIBC_SECS s | |"
  fi
  echo
  echo "/me ÷ baseline in each round ($ROUND_DURATION each, alternating): ${ME_ROUND_RATIOS[*]}"
  echo
  echo "/me during the flood ÷ /me alone just before, in each round: rps ${FLOOD_RPS_RATIOS[*]}; p99 ${FLOOD_P99_RATIOS[*]}"
  echo
  for alg in "${ALGORITHMS[@]}"; do
    echo "/me ÷ baseline in each round under $alg: ${ALG_RATIOS[$alg]}"
  done
  echo
  echo "/me ÷ baseline in each round with metrics off: ${ME_OFF_RATIOS[*]}; on: ${ME_ON_RATIOS[*]} ($METRICS_SCRAPES scrapes of /metrics during the on rounds)"
  if [[ -z $MUSL_SKIPPED ]]; then
    echo
    echo "musl's malloc ÷ glibc build in each round: /me ${LIBC_RATIOS[me-musl/glibc]}; PATCH ${LIBC_RATIOS[patch-musl/glibc]}"
    echo "mimalloc ÷ glibc build in each round: /me ${LIBC_RATIOS[me-mimalloc/glibc]}; PATCH ${LIBC_RATIOS[patch-mimalloc/glibc]}"
    echo "mimalloc ÷ musl's malloc in each round: /me ${LIBC_RATIOS[me-mimalloc/musl]}; PATCH ${LIBC_RATIOS[patch-mimalloc/musl]}"
  fi
  if [[ -n ${PG_RATIO[me_pg]:-} ]]; then
    echo
    echo "PostgreSQL /me ÷ pgbench -S in each round: ${PG_RATIOS[me_pg]}; PATCH ÷ one-row UPDATE: ${PG_RATIOS[patch_pg]}"
  fi
} >"$RESULTS"
echo
cat "$RESULTS"
echo
log "results in $RESULTS; wrk outputs in $OUT_DIR/raw/ ($((SECONDS - STARTED)) s after the build)"

# --- checks: every scenario ran and produced numbers; no timing assertions ------
FAILED=()
CHECKED=(me solo flood_me flood_login login register patch refresh baseline seeded_me sessions_me)
[[ -z ${RPS[refresh_pg]:-} ]] || CHECKED+=(refresh_pg)
[[ -z ${PG_RATIO[me_pg]:-} ]] || CHECKED+=(me_pg patch_pg)
for alg in "${ALGORITHMS[@]}"; do CHECKED+=("me_$alg" "baseline_$alg" "login_$alg"); done
CHECKED+=(metrics_baseline_off metrics_baseline_on me_metrics_off me_metrics_on login_metrics_off login_metrics_on)
if [[ -z $MUSL_SKIPPED ]]; then
  for build in "${LIBC_BUILDS[@]}"; do CHECKED+=("me_$build" "patch_$build"); done
fi
for key in "${CHECKED[@]}"; do
  # refresh.lua counts every answer but a 200 with a refresh token; the
  # other scripts, statuses of 400 and more.
  ((NON2XX[$key] == 0)) || FAILED+=("$key: ${NON2XX[$key]} error responses")
  ((SOCKERR[$key] == 0)) || FAILED+=("$key: ${SOCKERR[$key]} socket errors or timeouts")
  if ((REQ[$key] == 0)) && [[ $key == flood_login ]]; then
    # Hashing runs at idle CPU priority: while /me keeps the server's CPU
    # busy, logins may legitimately not finish within a short run.
    log "note: the login flood completed no login while /me ran (hashing got no CPU)"
    continue
  fi
  ((REQ[$key] > 0)) || FAILED+=("$key: no requests completed")
  ((P99[$key] > 0)) || FAILED+=("$key: no latency recorded")
done
awk -v c="$CEILING" 'BEGIN { exit !(c > 0) }' || FAILED+=("bcrypt ceiling: no rate")
((METRICS_SCRAPES > 0)) || FAILED+=("metrics on: /metrics was never scraped")
[[ ${METRICS_ME_COUNTED:-0} =~ ^[0-9]+$ ]] && ((METRICS_ME_COUNTED >= REQ[me_metrics_on])) ||
  FAILED+=("metrics on: the page counts ${METRICS_ME_COUNTED:-no} /me requests, wrk completed ${REQ[me_metrics_on]}")
for measure in RSS_IDLE RSS_COLD RSS_USERS DISK_KIB COLD_START_MS RSS_SESSIONS_COLD RSS_SESSIONS \
  DISK_SESSIONS_KIB SESSIONS_COLD_START_MS; do
  [[ ${!measure} =~ ^[0-9]+$ ]] && ((${!measure} > 0)) || FAILED+=("$measure: no number")
done
if ((${#FAILED[@]} > 0)); then
  printf 'bench/run.sh: FAILED: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
log "every scenario ran and produced numbers"
