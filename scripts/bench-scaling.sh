#!/usr/bin/env bash
# Part 4: how the cluster behaves as instances are added (2, 4, 8 on one box), with per-pod CPU.
#
#   scripts/bench-scaling.sh                    # COUNTS="2 4 8"
#   COUNTS="2 4" RECEIVERS=400 scripts/bench-scaling.sh
#
# For each instance count N, fresh Redis and N fresh instances of our service, then three cases:
#   per-instance  N rooms, room k entirely on instance k (its receivers and its sender)
#   spanning      1 room whose receivers are spread over all N instances, sender on the first
#   one-pod       1 room, receivers and sender all on the first instance; the others have no
#                 member: with per-room channels they should spend ~nothing on it
# Servers are pinned to SERVER_CPU (0), the load tool and Redis to LOAD_CPU (1), as in
# bench-scenarios.sh. Prints one Markdown row per case: deliveries/s, p99, CPU of each pod.
#
# Knobs: PYTHON, OUT, COUNTS, RECEIVERS, SERVER_CPU, LOAD_CPU, WARMUP, DURATION, IN_FLIGHT,
# REDIS_URL_SCHEME (redis, or redis+cluster against a cluster you started yourself: REDIS_URL).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/bench-results/scaling-$(date +%Y%m%d-%H%M%S)}
COUNTS=${COUNTS:-"2 4 8"}
RECEIVERS=${RECEIVERS:-800}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-5}
IN_FLIGHT=${IN_FLIGHT:-8}
SECRET=bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

mkdir -p "$OUT"
# shared helpers: cleanup trap, free_port, wait_port, start
. "$(dirname "$0")/bench-lib.sh"

bench() { # NAME ARGS...
  local name=$1
  shift
  taskset -c "$LOAD_CPU" "$PYTHON" -m service.bench --jwt-secret "$SECRET" --quiet --no-acks \
    --warmup "$WARMUP" --duration "$DURATION" --in-flight "$IN_FLIGHT" \
    --receivers "$RECEIVERS" --json "$OUT/$name.json" "$@" >"$OUT/$name.txt"
  cat "$OUT/$name.txt" >&2
}

echo "| instances | case | deliveries/s | p99 ms | server CPU per pod (cores) | total |"
echo "|---|---|---|---|---|---|"
for n in $COUNTS; do
  PIDS=()
  redis_port=$(free_port)
  start "$OUT/redis-$n.log" taskset -c "$LOAD_CPU" redis-server --port "$redis_port" \
    --bind 127.0.0.1 --save "" --appendonly no --dir "$OUT"
  wait_port "$redis_port"
  urls=()
  pods=()
  for k in $(seq "$n"); do
    port=$(free_port)
    start "$OUT/ours-$n-$k.log" env JWT_SECRET="$SECRET" HOST=127.0.0.1 PORT="$port" \
      REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$redis_port}" RATE_LIMIT_EVENTS=1000000000 \
      MAX_CONNECTIONS=100000 HANDSHAKE_RATE_PER_ADDRESS=1000000 \
      HANDSHAKE_BURST_PER_ADDRESS=1000000 LOG_LEVEL=warning LOG_FORMAT=text \
      INSTANCE_ID="scale-$n-$k" taskset -c "$SERVER_CPU" "$PYTHON" -m service
    wait_port "$port"
    urls+=("http://127.0.0.1:$port")
    pods+=("$STARTED")
  done
  all_urls=$(IFS=,; echo "${urls[*]}")
  all_pods=$(IFS=,; echo "${pods[*]}")
  echo "== $n instances" >&2
  bench "n$n-per-instance" --rooms "$n" --target "ours=$all_urls" --pid "ours=$all_pods"
  bench "n$n-spanning" --rooms 1 --target "ours=$all_urls" --pid "ours=$all_pods"
  bench "n$n-one-pod" --rooms 1 --target "ours=${urls[0]}" --pid "ours=$all_pods"
  for case in per-instance spanning one-pod; do
    "$PYTHON" - "$OUT/n$n-$case.json" "$n" "$case" "$all_pods" <<'PY'
import json, sys
path, n, case, pods = sys.argv[1:]
r = json.load(open(path))["targets"]["ours"]["median"]
cpu = r.get("server_cpu") or {}
per_pod = " / ".join(f"{cpu.get(p, float('nan')):.2f}" for p in pods.split(","))
total = sum(v for k, v in cpu.items() if k != "total")
p99 = (r.get("latency_ms") or {}).get("p99", float("nan"))
print(f"| {n} | {case} | {r.get('deliveries_per_s', 0):,.0f} | {p99:,.1f} | {per_pod} | {total:.2f} |")
PY
  done
  cleanup
done
