#!/usr/bin/env bash
# Word count over 51 MB (the 8 Gutenberg texts copied 16 times), side by side in one run:
#   1. the Unix pipeline  tr -cs 'A-Za-z' '\n' | sort | uniq -c
#   2. flotilla mr sequential --app wc
#   3. flotilla mr coordinator + 2 flotilla mr worker processes (--app wc)
# Prints wall time and peak memory (max RSS) of every process; checks that (2) and (3) agree.
#
#   bash bench/mr-wc.sh [REPEATS]
#
# Installs GNU time (Debian package `time`) if missing. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
PORT=${MR_PORT:-17100}
TEXTS=${FLOTILLA_TEXTS:-../shared/data/gutenberg}

if [ ! -x /usr/bin/time ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
cargo build --release --quiet
FLOTILLA=$(pwd)/target/release/flotilla

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/seq" "$work/dist"
for copy in $(seq 1 16); do
  for text in "$TEXTS"/pg-*.txt; do
    cp "$text" "$work/corpus/$(basename "$text" .txt)-$copy.txt"
  done
done
bytes=$(cat "$work"/corpus/*.txt | wc -c)
files=$(ls "$work/corpus" | wc -l)
echo "corpus: $files files, $((bytes / 1000000)) MB; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
rss_mb() { awk '{printf "%.0f", $1/1024}' "$1"; }

for run in $(seq 1 "$REPEATS"); do
  echo "--- run $run"
  t0=$(now)
  (cd "$work/corpus" && cat ./*.txt | tr -cs 'A-Za-z' '\n' | sort | uniq -c > "$work/pipeline.out")
  t1=$(now)
  echo "pipeline tr|sort|uniq -c:        $(elapsed "$t0" "$t1") s"

  t0=$(now)
  (cd "$work/seq" && /usr/bin/time -f %M -o "$work/seq.rss" "$FLOTILLA" mr sequential --app wc ../corpus/*.txt)
  t1=$(now)
  echo "flotilla mr sequential:          $(elapsed "$t0" "$t1") s, peak $(rss_mb "$work/seq.rss") MB"

  rm -f "$work"/dist/mr-*
  t0=$(now)
  cd "$work/dist"
  /usr/bin/time -f %M -o "$work/coord.rss" "$FLOTILLA" mr coordinator --listen "127.0.0.1:$PORT" --progress none ../corpus/*.txt > "$work/coord.out" 2>/dev/null &
  coord=$!
  until grep -q listening "$work/coord.out" 2>/dev/null; do sleep 0.005; done
  /usr/bin/time -f %M -o "$work/w1.rss" "$FLOTILLA" mr worker --coordinator "127.0.0.1:$PORT" --app wc 2>/dev/null &
  w1=$!
  /usr/bin/time -f %M -o "$work/w2.rss" "$FLOTILLA" mr worker --coordinator "127.0.0.1:$PORT" --app wc 2>/dev/null &
  w2=$!
  wait "$coord" "$w1" "$w2"
  t1=$(now)
  cd - >/dev/null
  echo "flotilla coordinator + 2 workers: $(elapsed "$t0" "$t1") s, peak coordinator $(rss_mb "$work/coord.rss") MB, workers $(rss_mb "$work/w1.rss") MB and $(rss_mb "$work/w2.rss") MB"

  cat "$work"/dist/mr-out-* | sort > "$work/dist.sorted"
  sort "$work/seq/mr-out-0" > "$work/seq.sorted"
  cmp -s "$work/dist.sorted" "$work/seq.sorted" || { echo "distributed and sequential outputs differ" >&2; exit 1; }
done
echo "outputs of the distributed and the sequential run are identical"
