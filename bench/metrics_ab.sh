#!/usr/bin/env bash
# bench/metrics_ab.sh: /me with metrics off and on against the baseline,
# finely interleaved (BENCHMARKS.md, runs 24-25). ROUNDS rounds (15) of:
# the baseline, gatehouse without metrics, gatehouse with metrics.listen
# (its /metrics read every second meanwhile), GET /api/auth/me with 64
# connections for ROUND_S seconds (3) each, the others paused; pinned like
# bench/run.sh (servers on CPU 0, wrk on CPU 1). Needs the release build of
# bench/run.sh (target/release/gatehouse and examples/baseline) and wrk.
# Prints each round's requests/s and ratios; the medians are left to you:
#   grep -o 'on/base=[0-9.]*' OUT | cut -d= -f2 | sort -g
set -euo pipefail
ROUNDS=${ROUNDS:-15} ROUND_S=${ROUND_S:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
R=${CARGO_TARGET_DIR:-$ROOT/target}/release
W=$(mktemp -d); trap 'kill -CONT $PIDS 2>/dev/null; kill $PIDS 2>/dev/null; rm -rf $W' EXIT
PIDS=""
taskset -c 0 $R/examples/baseline 127.0.0.1:0 > $W/base.log 2>&1 & PIDS="$PIDS $!"; BP=$!
start() { # name extra-env
  mkdir -p $W/$1
  env GATEHOUSE_AUTH__BCRYPT_COST=4 RUST_LOG=info $2 taskset -c 0 $R/gatehouse --port 0 --data-dir $W/$1/data >/dev/null 2> $W/$1.log &
  echo $!
}
OFF=$(start off ""); ON=$(start on "GATEHOUSE_METRICS__LISTEN=127.0.0.1:0"); PIDS="$PIDS $OFF $ON"
sleep 2
addr() { grep -o "$2 address=[0-9.:]*" $1 | head -1 | sed 's/.*address=//'; }
BA=$(grep -o '127.0.0.1:[0-9]*' $W/base.log | head -1)
OA=$(addr $W/off.log "gatehouse listening"); NA=$(addr $W/on.log "gatehouse listening"); MA=$(addr $W/on.log "metrics listening")
tok() { curl -s -H 'content-type: application/json' -d "{\"name\":\"B\",\"email\":\"b$RANDOM@x.io\",\"password\":\"bench password\"}" http://$1/api/auth/register | python3 -c 'import sys,json;print(json.load(sys.stdin)["token"])'; }
TO=$(tok $OA); TN=$(tok $NA)
run() { # addr token -> rps
  BENCH_TOKEN=$2 BENCH_LUA_DIR=$ROOT/bench taskset -c 1 wrk -t1 -c64 -d${ROUND_S}s -s $ROOT/bench/me.lua http://$1/api/auth/me 2>/dev/null | awk '/Requests\/sec/ {print $2}'
}
kill -STOP $OFF $ON $BP
for ((i=1;i<=ROUNDS;i++)); do
  kill -CONT $BP; b=$(run $BA $TO); kill -STOP $BP
  kill -CONT $OFF; o=$(run $OA $TO); kill -STOP $OFF
  kill -CONT $ON; (while :; do curl -s -o /dev/null http://$MA/metrics; sleep 1; done) & S=$!
  n=$(run $NA $TN); kill $S; kill -STOP $ON
  echo "$i base=$b off=$o on=$n off/base=$(awk -v a=$o -v b=$b 'BEGIN{printf "%.3f",a/b}') on/base=$(awk -v a=$n -v b=$b 'BEGIN{printf "%.3f",a/b}') on/off=$(awk -v a=$n -v b=$o 'BEGIN{printf "%.3f",a/b}')"
done
