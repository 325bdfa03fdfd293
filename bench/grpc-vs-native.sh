#!/usr/bin/env bash
# One 3-node cluster on loopback; 64-client puts through etcd's gRPC API (8 HTTP/2
# connections round-robin over the three nodes, as bench/etcd-compare.py drives it) and
# through Flotilla's own protocol (`kv bench --cluster`), alternating, with the CPU each
# server process and the load generator used. It separates what the replicated log costs
# from what the gRPC front end costs (issue 13).
#
#   bash bench/grpc-vs-native.sh [FLOTILLA] [SECONDS] [CLIENTS] [ROUNDS]
#
# FLOTILLA defaults to target/release/flotilla (build it first). Bounded: ROUNDS (default 2)
# rounds of two runs of SECONDS (default 6), each killed after SECONDS + 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOTILLA=${1:-target/release/flotilla}
SECS=${2:-6}
CLIENTS=${3:-64}
ROUNDS=${4:-2}
[ -x "$FLOTILLA" ] || { echo "no executable $FLOTILLA (cargo build --release -p flotilla-cli)" >&2; exit 2; }
DIR=$(mktemp -d /tmp/flotilla-grpc-vs-native.XXXXXX)
UP=$DIR/up.log
cleanup() {
    [ -n "${CLUSTER:-}" ] && kill -INT "$CLUSTER" 2>/dev/null && wait "$CLUSTER" 2>/dev/null
    rm -rf "$DIR"
}
trap cleanup EXIT
setsid "$FLOTILLA" cluster up --nodes 3 --dir "$DIR/data" --base-port 0 >"$UP" 2>&1 </dev/null &
CLUSTER=$!
for _ in $(seq 100); do grep -q "leads term" "$UP" && break; sleep 0.2; done
grep -q "leads term" "$UP" || { echo "no leader within 20 s:" >&2; cat "$UP" >&2; exit 1; }
GRPC=$(grep -o 'endpoints \S*' "$UP" | cut -d' ' -f2)
NATIVE=$(grep -o 'clients: --cluster \S*' "$UP" | cut -d' ' -f3)
PIDS=$(grep -o 'pid [0-9]*' "$UP" | cut -d' ' -f2 | tr '\n' ' ')
echo "$(grep -o 'node [0-9] leads term [0-9]*' "$UP"); server pids $PIDS"

# CPU seconds per second of each pid over $1 seconds.
cpu() {
    python3 - "$@" <<'EOF'
import os, sys, time
def t(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0
s = float(sys.argv[1]); ps = sys.argv[2:]
a = [t(p) for p in ps]; time.sleep(s); b = [t(p) for p in ps]
print(" ".join(f"{(y - x) / s:.2f}" for x, y in zip(a, b)))
EOF
}

for round in $(seq "$ROUNDS"); do
    for mode in grpc native; do
        if [ "$mode" = grpc ]; then ARGS=(--etcd "$GRPC" --conns 8); else ARGS=(--cluster "$NATIVE"); fi
        TOKIO_WORKER_THREADS=1 timeout $((SECS + 20)) "$FLOTILLA" kv bench "${ARGS[@]}" \
            --clients "$CLIENTS" --seconds "$SECS" --keys 10000 --value-size 100 --get-share 0 \
            >"$DIR/bench.log" 2>&1 &
        BENCH=$!
        sleep 1.5
        LOAD=$(pgrep -P "$BENCH" -f "kv bench" || pgrep -f "kv bench" | tail -1)
        CPU=$(cpu $((SECS - 2)) $PIDS $LOAD)
        wait "$BENCH"
        RESULT=$(head -1 "$DIR/bench.log" | sed 's/latency //; s/, max.*//')
        echo "round $round $mode: $RESULT; CPU (3 servers, load generator): $CPU"
    done
done
