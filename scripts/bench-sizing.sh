#!/usr/bin/env bash
# Pod sizing figures for docs/kubernetes.md: CPU and memory of ONE instance (a pod) with Redis,
# at 1k/5k/10k idle websocket connections (the chart's ping interval, 25 s, so heartbeats are
# part of the idle cost) and at two message rates (1,000 receivers in 10 rooms, open loop).
#   scripts/bench-sizing.sh            # prints one line per run; JSON files in $OUT
# Idle CPU is read from /proc over one full ping interval while the connections are held.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/bench-results/sizing-$(date +%Y%m%d-%H%M%S)}
IDLE=${IDLE:-"1000 5000 10000"}
RATES=${RATES:-"10 30"}
SECRET=bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir -p "$OUT"
. "$(dirname "$0")/bench-lib.sh"

cpu_seconds() { # PID: user+system CPU seconds of a process
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

connections() { # PORT
  "$PYTHON" -c "import json,sys,urllib.request as u; print(json.load(u.urlopen(sys.argv[1]))['connections'])" \
    "http://127.0.0.1:$1/health"
}

start_instance() { # sets $PORT $SERVER
  PIDS=()
  local redis_port
  redis_port=$(free_port)
  start "$OUT/redis.log" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$OUT"
  wait_port "$redis_port"
  PORT=$(free_port)
  start "$OUT/server-$PORT.log" env JWT_SECRET="$SECRET" HOST=127.0.0.1 PORT="$PORT" \
    REDIS_URL="redis://127.0.0.1:$redis_port" INSTANCE_ID="sizing-$PORT" \
    RATE_LIMIT_EVENTS=1000000000 MAX_CONNECTIONS=100000 HANDSHAKE_RATE_PER_ADDRESS=1000000 \
    HANDSHAKE_BURST_PER_ADDRESS=1000000 LOG_LEVEL=warning LOG_FORMAT=text "$PYTHON" -m service
  SERVER=$STARTED
  wait_port "$PORT"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), cores: $(nproc)"
for n in $IDLE; do
  start_instance
  base=$(rss_mib "$SERVER")
  "$PYTHON" -m service.bench --url "http://127.0.0.1:$PORT" --pid "$SERVER" \
    --jwt-secret "$SECRET" --receivers "$n" --rooms 0 --hold 45 --procs 2 --quiet \
    --json "$OUT/idle-$n.json" >"$OUT/idle-$n.txt" 2>&1 &
  bench=$!
  until [ "$(connections "$PORT")" -ge "$n" ]; do
    kill -0 "$bench" 2>/dev/null || { cat "$OUT/idle-$n.txt"; exit 1; }
    sleep 0.5
  done
  sleep 2
  c0=$(cpu_seconds "$SERVER")
  sleep 30 # more than one ping interval: every connection pinged at least once
  c1=$(cpu_seconds "$SERVER")
  rss=$(rss_mib "$SERVER")
  wait "$bench"
  echo "idle $n: RSS ${rss} MiB (empty ${base} MiB), CPU $(echo "$c0 $c1" | awk '{printf "%.3f", ($2 - $1) / 30}') cores"
  cleanup
done

for rate in $RATES; do
  start_instance
  "$PYTHON" -m service.bench --url "http://127.0.0.1:$PORT" --pid "$SERVER" \
    --jwt-secret "$SECRET" --receivers 1000 --rooms 10 --rate "$rate" --no-acks --procs 2 \
    --warmup 3 --duration 10 --quiet --json "$OUT/rate-$rate.json" >"$OUT/rate-$rate.txt" 2>&1
  "$PYTHON" - "$OUT/rate-$rate.json" "$rate" "$(rss_mib "$SERVER")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["targets"]["target"]["median"]
cpu = r.get("server_cpu") or {}
cpu = cpu.get("total", sum(cpu.values()))
print(f"rate {sys.argv[2]}/s x 10 rooms of 100: {r['deliveries_per_s']:.0f} deliveries/s, "
      f"server CPU {cpu:.2f} cores, RSS {sys.argv[3]} MiB, p99 {(r.get('latency_ms') or {}).get('p99', float('nan')):.0f} ms, "
      f"lost {r.get('lost', 0)}, warnings {r.get('warnings')}")
EOF
  cleanup
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
