#!/usr/bin/env bash
# Peak memory of one MapReduce worker whose map task spills, with 1000 reduce partitions.
#
# The input is WORDS distinct six-letter words (default 8 million, 56 MB, in a scrambled
# order), one map task; the worker buffers at most MEMORY_MB MiB of pairs (default 8) before
# spilling a sorted run, so the map spills some 20 times (8M pairs of about 23 bytes) and
# merges runs 16 at a time.
# A spill merge used to open every partition's segment of every run at once (a 64 KiB read
# buffer each, zeroed when first filled: 16 runs x 1000 partitions = 1 GiB); now it opens one
# partition's segments at a time (at most 16 readers), each buffer no larger than its segment.
#
#   bash bench/mr-memory.sh [FLOTILLA_BINARY]
#
# Prints the worker's peak resident set (VmHWM, via GNU time's %M) and peak virtual size
# (VmPeak, sampled from /proc/<pid>/status), the map task's spill count, the wall time, and
# checks the output against an independent count (every word exactly once).
set -euo pipefail
cd "$(dirname "$0")/.."
WORDS=${WORDS:-8000000}
MEMORY_MB=${MEMORY_MB:-8}
REDUCE=${REDUCE:-1000}
PORT=${MR_PORT:-17150}

if [ ! -x /usr/bin/time ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
if [ $# -ge 1 ]; then
  FLOTILLA=$(realpath "$1")
else
  cargo build --release --quiet -p flotilla-cli
  FLOTILLA=$(pwd)/target/release/flotilla
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/job"
# Word i is (i * 12345677 mod 2^24) written in base 26 with six letters: a bijection on
# 0..2^24, so every word is distinct (products stay below 2^53: exact in awk's doubles).
awk -v n="$WORDS" 'BEGIN {
  letters = "abcdefghijklmnopqrstuvwxyz"
  for (i = 0; i < n; i++) {
    x = (i * 12345677) % 16777216; w = ""
    for (j = 0; j < 6; j++) { w = w substr(letters, x % 26 + 1, 1); x = int(x / 26) }
    printf "%s%s", w, (i % 12 == 11 ? "\n" : " ")
  }
  print ""
}' > "$work/words.txt"
bytes=$(wc -c < "$work/words.txt")
echo "input: $WORDS distinct words, $((bytes / 1000000)) MB, one map task; --reduce $REDUCE, --memory-limit-mb $MEMORY_MB; $(date -u +%Y-%m-%dT%H:%MZ)"

cd "$work/job"
"$FLOTILLA" mr coordinator --listen "127.0.0.1:$PORT" --reduce "$REDUCE" --progress none \
  --keep-intermediate ../words.txt > "$work/coord.out" 2>"$work/coord.err" &
coord=$!
for _ in $(seq 1 500); do
  grep -q listening "$work/coord.out" 2>/dev/null && break
  sleep 0.01
done
grep -q listening "$work/coord.out" || { echo "the coordinator did not start" >&2; exit 1; }
t0=$(date +%s.%N)
RUST_LOG=flotilla_mr=debug /usr/bin/time -f %M -o "$work/worker.rss" "$FLOTILLA" mr worker \
  --coordinator "127.0.0.1:$PORT" --app wc --memory-limit-mb "$MEMORY_MB" 2>"$work/worker.err" &
timer=$!
# Sample the worker's peak virtual size while it runs (GNU time reports only the RSS).
vmpeak=0
for _ in $(seq 1 60000); do
  pid=$(pgrep -P "$timer" | head -1 || true)
  if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    v=$(awk '/^VmPeak:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ "${v:-0}" -gt "$vmpeak" ] && vmpeak=$v
  fi
  kill -0 "$timer" 2>/dev/null || break
  sleep 0.05
done
wait "$timer"
wait "$coord"
t1=$(date +%s.%N)
cd - >/dev/null

lines=$(cat "$work"/job/mr-out-* | wc -l)
ones=$(cat "$work"/job/mr-out-* | awk '$2 != 1' | wc -l)
[ "$lines" -eq "$WORDS" ] && [ "$ones" -eq 0 ] || {
  echo "wrong output: $lines lines, $ones counts other than 1 (expected $WORDS words once each)" >&2
  exit 1
}
echo "output checked: $lines words, each counted once"
spills=$(grep -oE 'spills=[0-9]+ peak_spill_readers=[0-9]+' "$work/worker.err" | head -1 || true)
echo "map task: ${spills:-spills=? (this build does not log them)}"
printf 'worker peak RSS (VmHWM): %d MiB; peak virtual size (VmPeak, sampled): %d MiB; wall %.1f s\n' \
  $(( $(cat "$work/worker.rss") / 1024 )) $(( vmpeak / 1024 )) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
