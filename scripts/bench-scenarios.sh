#!/usr/bin/env bash
# Performance scenarios S1-S3: our service and the Node reference design, same run, same pins.
#
#   scripts/bench-scenarios.sh                  # all scenarios, 2 runs each (medians)
#   SCENARIOS="s1-200 s3" REPEAT=3 scripts/bench-scenarios.sh
#
# Servers are pinned to SERVER_CPU (0), the load tool and Redis to LOAD_CPU (1); every run
# starts fresh servers. The anchor is the Node reference design: point ANCHOR_DIR at a
# writable copy of it with `npm ci` done (node_modules present). Results: one JSON file per
# scenario and run under OUT, and a Markdown table (medians, ours/anchor ratios) on stdout.
#
# Knobs: PYTHON, OUT, ANCHOR_DIR, REPEAT, SCENARIOS, SERVER_CPU, LOAD_CPU, WARMUP, DURATION,
# OURS_ENV (extra environment for our service, e.g. "PYTHONOPTIMIZE=1"), S3_CONCURRENCY
# (handshakes in flight in S3, default 100).
# Senders send without ack ids: the anchor never acks message:send, so both do the same work.
# Install the `bench` extra (uvloop) first: on one core the load tool needs it to outrun the
# servers; a run where it could not (a load process above 85 % of its core) is reported void.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/bench-results/$(date +%Y%m%d-%H%M%S)}
ANCHOR_DIR=${ANCHOR_DIR:-$ROOT/bench-results/node-anchor}
REPEAT=${REPEAT:-2}
SCENARIOS=${SCENARIOS:-"s1-200 s1-1000 s2 s3"}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-7}
OURS_ENV=${OURS_ENV:-}
S3_CONCURRENCY=${S3_CONCURRENCY:-100}
SECRET=bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

[ -d "$ANCHOR_DIR/node_modules" ] || {
  echo "error: $ANCHOR_DIR has no node_modules: copy the anchor there and run npm ci" >&2
  exit 2
}
mkdir -p "$OUT"
# shared helpers: cleanup trap, free_port, wait_port, start
. "$(dirname "$0")/bench-lib.sh"

start_redis() {
  REDIS_PORT=$(free_port)
  start "$OUT/redis.log" taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" \
    --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT"
  wait_port "$REDIS_PORT"
}

start_ours() { # PORT [REDIS_URL]: sets $STARTED
  # shellcheck disable=SC2086
  start "$OUT/ours-$1.log" env $OURS_ENV JWT_SECRET="$SECRET" HOST=127.0.0.1 \
    PORT="$1" REDIS_URL="${2:-}" RATE_LIMIT_EVENTS=1000000000 MAX_CONNECTIONS=100000 \
    HANDSHAKE_RATE_PER_ADDRESS=1000000 HANDSHAKE_BURST_PER_ADDRESS=1000000 \
    LOG_LEVEL=warning LOG_FORMAT=text INSTANCE_ID="bench-$1" \
    taskset -c "$SERVER_CPU" "$PYTHON" -m service
  wait_port "$1"
}

start_anchor() { # PORT: sets $STARTED
  start "$OUT/anchor-$1.log" env PORT="$1" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    taskset -c "$SERVER_CPU" node "$ANCHOR_DIR/server.js"
  wait_port "$1"
}

bench() { # NAME RUN ARGS...
  local name=$1 run=$2
  shift 2
  taskset -c "$LOAD_CPU" "$PYTHON" -m service.bench --jwt-secret "$SECRET" --quiet --no-acks \
    --warmup "$WARMUP" --duration "$DURATION" --json "$OUT/$name-$run.json" "$@"
}

run_scenario() { # NAME RUN
  local name=$1 run=$2 p1 p2 a1 a2 ours1 ours2 anchor1 anchor2
  PIDS=()
  start_redis
  case $name in
    s1-200 | s1-1000)
      p1=$(free_port); start_ours "$p1"; ours1=$STARTED
      a1=$(free_port); start_anchor "$a1"; anchor1=$STARTED
      bench "$name" "$run" --receivers "${name#s1-}" --rooms 1 \
        --target "ours=http://127.0.0.1:$p1" --pid "ours=$ours1" \
        --target "anchor=http://127.0.0.1:$a1" --pid "anchor=$anchor1"
      ;;
    s2)
      p1=$(free_port); p2=$(free_port)
      start_ours "$p1" "redis://127.0.0.1:$REDIS_PORT"; ours1=$STARTED
      start_ours "$p2" "redis://127.0.0.1:$REDIS_PORT"; ours2=$STARTED
      a1=$(free_port); a2=$(free_port)
      start_anchor "$a1"; anchor1=$STARTED
      start_anchor "$a2"; anchor2=$STARTED
      bench "$name" "$run" --receivers 1000 --rooms 1 \
        --target "ours=http://127.0.0.1:$p1,http://127.0.0.1:$p2" --pid "ours=$ours1,$ours2" \
        --target "anchor=http://127.0.0.1:$a1,http://127.0.0.1:$a2" \
        --pid "anchor=$anchor1,$anchor2"
      ;;
    s3)
      p1=$(free_port); start_ours "$p1"; ours1=$STARTED
      a1=$(free_port); start_anchor "$a1"; anchor1=$STARTED
      bench "$name" "$run" --receivers 5000 --rooms 0 --hold 2 \
        --connect-concurrency "$S3_CONCURRENCY" \
        --target "ours=http://127.0.0.1:$p1" --pid "ours=$ours1" \
        --target "anchor=http://127.0.0.1:$a1" --pid "anchor=$anchor1"
      ;;
    *) echo "error: unknown scenario $name" >&2; exit 2 ;;
  esac
  cleanup
}

for name in $SCENARIOS; do
  for run in $(seq "$REPEAT"); do
    echo "== $name run $run" >&2
    run_scenario "$name" "$run" >"$OUT/$name-$run.txt"
    cat "$OUT/$name-$run.txt" >&2
  done
done
"$PYTHON" -m service.bench.summary "$OUT"/*.json
