#!/usr/bin/env bash
# Flotilla's KV server against Redis, side by side in one run, on loopback.
#
#   bash bench/kv-vs-redis.sh [SECONDS]
#
# Installs redis-server and redis-tools (Debian packages) if missing, builds flotilla in
# release mode, then for 1, 16 and 64 clients runs `redis-benchmark -t set,get` and
# `flotilla kv bench` (half gets, half puts) and prints ops/s and p99 latency for each.
# Every server is on 127.0.0.1 and is stopped at the end; every load run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
REDIS_PORT=${REDIS_PORT:-16379}
KV_PORT=${KV_PORT:-17000}

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools (Debian)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
FLOTILLA=target/release/flotilla

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
pids+=($!)
"$FLOTILLA" kv serve --listen "127.0.0.1:$KV_PORT" >/dev/null 2>&1 &
pids+=($!)
ready() {
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || return 1
  local rc=0
  "$FLOTILLA" kv get --server "127.0.0.1:$KV_PORT" none >/dev/null 2>&1 || rc=$?
  [ "$rc" -le 1 ] # 1 = "no such key": the server answered
}
for _ in $(seq 100); do ready && break; sleep 0.1; done
ready || { echo "servers did not start" >&2; exit 1; }

echo "machine: $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ); ${SECONDS_PER_RUN}s per flotilla run"
printf '%-8s | %-22s %-10s | %-22s %-10s | %s\n' clients "redis set+get ops/s" "p99 ms" "flotilla get+put ops/s" "p99 ms" "ratio"
for clients in 1 16 64; do
  # redis-benchmark runs a fixed number of requests; size it to take roughly SECONDS_PER_RUN.
  requests=$(( clients == 1 ? 100000 : 400000 ))
  csv=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$clients" -n "$requests" -t set,get --csv 2>/dev/null | tr -d '"')
  # columns: test,rps,avg,min,p50,p95,p99,max
  r_rps=$(echo "$csv" | awk -F, '$1=="SET"||$1=="GET"{s+=$2; n++} END{printf "%.0f", s/n}')
  r_p99=$(echo "$csv" | awk -F, '$1=="SET"||$1=="GET"{if($7>m)m=$7} END{printf "%.3f", m}')
  out=$("$FLOTILLA" kv bench --server "127.0.0.1:$KV_PORT" --clients "$clients" --seconds "$SECONDS_PER_RUN" --keys 10000 --value-size 3)
  f_rps=$(echo "$out" | sed -n 's/.* = \([0-9.]*\) ops\/s.*/\1/p')
  f_p99=$(echo "$out" | sed -n 's/.*p99 \([0-9.]*\) µs.*/\1/p' | awk '{printf "%.3f", $1/1000}')
  ratio=$(awk -v f="$f_rps" -v r="$r_rps" 'BEGIN{printf "%.2f", f/r}')
  printf '%-8s | %-22s %-10s | %-22s %-10s | %s\n' "$clients" "$r_rps" "$r_p99" "$f_rps" "$f_p99" "$ratio"
done
