#!/usr/bin/env bash
# Word count over a ~1 GB corpus (the 8 Gutenberg texts concatenated ~303 times), issue 14
# point 7, side by side in one run:
#   a. the Unix pipeline  tr -cs 'A-Za-z' '\n' | sort | uniq -c   (LC_ALL=C, sort --parallel=2)
#   b. the single-process baseline: examples/wc_hashmap.rs (one thread, one HashMap)
#   c. flotilla mr coordinator + 2 flotilla mr worker processes (--app wc)
# Prints wall time, MB/s (corpus bytes / wall time, 10^6 bytes), CPU time and peak memory
# (max RSS) of every process, the ratio c/b, and checks that (b) and (c) produce the same
# lines. (a) splits on ASCII letters only, so its counts are not compared. Targets: (c) at
# least 250 MB/s, within 1.5x of (b), every worker's peak RSS <= 128 MB.
#
#   bash bench/mr-wc-1gb.sh [REPEATS]
#
# Environment:
#   REPEATS=1          runs (also the first argument)
#   CORPUS_MB=1000     corpus size in 10^6 bytes (whole copies of the 8 texts, rounded up)
#   CORPUS_FILES=1     ONE file corpus.txt by default (needs the coordinator's --split-mb to
#                      be cut into map tasks); N builds N files of CORPUS_MB/N each instead
#   MR_COORD_FLAGS=    extra coordinator flags, e.g. "--split-mb 64" or "--reduce 4"
#   MR_BENCH_DIR=      where the corpus and all outputs go (default: a new directory next to
#                      the checkout, i.e. on disk, not in a tmpfs /tmp)
#   KEEP_CORPUS=1      keep (and on the next run with the same MR_BENCH_DIR, reuse) the corpus
#   SORT_MEM=1G        sort's -S buffer for (a)
#   PIPELINE=0         skip (a) (it takes some 2 minutes; for repeating b and c in a quiet spell)
#   FLOTILLA_BIN, WC_BIN  prebuilt binaries; otherwise built with cargo (CARGO_TARGET_DIR
#                      respected) and taken from target/release
#   MR_PORT=0          coordinator port (0: a free one, read from its "listening" line)
#
# Installs GNU time (Debian package `time`) if missing. Everything runs on 127.0.0.1. The
# corpus is read from the page cache by all three (it was just written and fits in RAM).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-${REPEATS:-1}}
CORPUS_MB=${CORPUS_MB:-1000}
CORPUS_FILES=${CORPUS_FILES:-1}
MR_COORD_FLAGS=${MR_COORD_FLAGS:-}
SORT_MEM=${SORT_MEM:-1G}
PORT=${MR_PORT:-0}
TEXTS=${FLOTILLA_TEXTS:-../shared/data/gutenberg}

if [ ! -x /usr/bin/time ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
fi
target=${CARGO_TARGET_DIR:-$(pwd)/target}
if [ -z "${FLOTILLA_BIN:-}" ]; then
  cargo build --release --quiet -p flotilla-cli
  FLOTILLA_BIN=$target/release/flotilla
fi
if [ -z "${WC_BIN:-}" ]; then
  cargo build --release --quiet -p flotilla-mr --example wc_hashmap
  WC_BIN=$target/release/examples/wc_hashmap
fi
FLOTILLA_BIN=$(realpath "$FLOTILLA_BIN")
WC_BIN=$(realpath "$WC_BIN")

# The bench directory: on disk. The corpus lives in $bench/corpus, everything else in $work.
if [ -n "${MR_BENCH_DIR:-}" ]; then
  bench=$MR_BENCH_DIR
  mkdir -p "$bench"
  own_bench=0
else
  bench=$(mktemp -d "$(cd .. && pwd)/mr-wc-1gb.XXXXXX")
  own_bench=1
fi
bench=$(realpath "$bench")
work=$(mktemp -d "$bench/run.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  if [ "${KEEP_CORPUS:-0}" != 1 ]; then
    rm -rf "$bench/corpus"
    [ "$own_bench" = 1 ] && rmdir "$bench" 2>/dev/null
  fi
  true
}
trap cleanup EXIT
fstype=$(df --output=fstype "$bench" | tail -1 | tr -d ' ')
[ "$fstype" = tmpfs ] && echo "warning: $bench is on tmpfs: the corpus takes RAM" >&2

# The corpus: whole copies of the concatenated texts, CORPUS_FILES files.
one="$work/texts.txt"
cat "$TEXTS"/pg-*.txt > "$one"
unit=$(wc -c < "$one")
per_file=$(( (CORPUS_MB * 1000000 / CORPUS_FILES + unit - 1) / unit ))
stamp="$unit x $per_file x $CORPUS_FILES"
if [ "$(cat "$bench/corpus/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$bench/corpus"
  mkdir -p "$bench/corpus"
  for f in $(seq 1 "$CORPUS_FILES"); do
    if [ "$CORPUS_FILES" = 1 ]; then name=corpus.txt; else name=$(printf 'corpus-%03d.txt' "$f"); fi
    for _ in $(seq 1 "$per_file"); do cat "$one"; done > "$bench/corpus/$name"
  done
  echo "$stamp" > "$bench/corpus/stamp"
fi
inputs=("$bench"/corpus/corpus*.txt)
bytes=$(cat "${inputs[@]}" | wc -c)
mb=$(awk -v b="$bytes" 'BEGIN{printf "%.0f", b/1e6}')
echo "corpus: ${#inputs[@]} file(s), $mb MB ($per_file copies of $unit bytes each) in $bench ($fstype)"
echo "$(nproc) cores, $(free -g | awk '/^Mem/{print $2}') GB RAM; $(date -u +%Y-%m-%dT%H:%MZ); coordinator flags: ${MR_COORD_FLAGS:-none}"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN{printf "%.0f", b/1e6/s}'; }
# GNU time output "%e %U %S %M": wall, user, sys seconds, peak RSS KiB.
rss_mb() { awk '{printf "%.0f", $4/1024}' "$1"; }
cpu_s() { awk '{printf "%.1f", $2+$3}' "$1"; }
# How busy the machine is before a run: the CPU share used in one second (by anything: the
# benchmark is meant to run alone) and the compilers running.
busy() {
  local a b builds
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  builds=$(ps -e -o comm= | grep -c -x -E 'cargo|rustc|cc1|cc1plus|as|ld|cc|c\+\+' || true)
  echo "$a $b" | awk -v n="$builds" '{u=$3-$1; i=$4-$2; printf "CPU %.0f%% busy over 1 s before it, %d cargo/rustc/cc processes", (u+i ? 100*u/(u+i) : 0), n}'
}
# CPU seconds the whole machine has spent busy since boot, and the part of an interval's that
# the benchmarked processes did not use (other processes: noise).
sys_cpu() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/hz}' /proc/stat; }
others() { awk -v a="$1" -v b="$2" -v own="$3" 'BEGIN{x=b-a-own; printf "%.1f", (x<0?0:x)}'; }
gtime() { local out=$1; shift; /usr/bin/time -f '%e %U %S %M' -o "$out" "$@"; }

rows=()
for run in $(seq 1 "$REPEATS"); do
  echo "--- run $run ($(busy))"

  # (a) the Unix pipeline
  tp=-
  if [ "${PIPELINE:-1}" != 0 ]; then
    t0=$(now)
    if [ "${#inputs[@]}" = 1 ]; then
      LC_ALL=C tr -cs 'A-Za-z' '\n' < "${inputs[0]}"
    else
      cat "${inputs[@]}" | LC_ALL=C tr -cs 'A-Za-z' '\n'
    fi | gtime "$work/sort.time" env LC_ALL=C sort -S "$SORT_MEM" --parallel=2 -T "$work" \
      | LC_ALL=C uniq -c > "$work/pipeline.out"
    t1=$(now)
    tp=$(elapsed "$t0" "$t1")
    echo "a. pipeline tr|sort|uniq -c:        $tp s, $(rate "$tp") MB/s; sort: peak $(rss_mb "$work/sort.time") MB, cpu $(cpu_s "$work/sort.time") s"
  fi

  # (b) one thread, one hash map
  c0=$(sys_cpu) t0=$(now)
  gtime "$work/hm.time" "$WC_BIN" --out "$work/hashmap.out" "${inputs[@]}"
  t1=$(now) c1=$(sys_cpu)
  th=$(elapsed "$t0" "$t1")
  ob=$(others "$c0" "$c1" "$(cpu_s "$work/hm.time")")
  echo "b. wc_hashmap (1 thread):           $th s, $(rate "$th") MB/s; peak $(rss_mb "$work/hm.time") MB, cpu $(cpu_s "$work/hm.time") s; other processes meanwhile: $ob CPU s"

  # (c) coordinator + 2 workers
  rm -rf "$work/dist"
  mkdir -p "$work/dist"
  cd "$work/dist"
  c0=$(sys_cpu) t0=$(now)
  # shellcheck disable=SC2086 # MR_COORD_FLAGS is a list of flags
  gtime "$work/coord.time" "$FLOTILLA_BIN" mr coordinator --listen "127.0.0.1:$PORT" \
    --progress none $MR_COORD_FLAGS "${inputs[@]}" > "$work/coord.out" 2> "$work/coord.err" &
  coord=$!
  pids=("$coord")
  for _ in $(seq 1 2000); do
    grep -q listening "$work/coord.out" 2>/dev/null && break
    kill -0 "$coord" 2>/dev/null || break
    sleep 0.005
  done
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$work/coord.out")
  [ -n "$addr" ] || { echo "the coordinator did not start:" >&2; cat "$work/coord.err" >&2; exit 1; }
  gtime "$work/w1.time" "$FLOTILLA_BIN" mr worker --coordinator "$addr" --app wc 2> "$work/w1.err" &
  w1=$!
  gtime "$work/w2.time" "$FLOTILLA_BIN" mr worker --coordinator "$addr" --app wc 2> "$work/w2.err" &
  w2=$!
  pids+=("$w1" "$w2")
  wait "$coord" || { echo "the coordinator failed:" >&2; cat "$work/coord.err" >&2; exit 1; }
  wait "$w1" "$w2" || { echo "a worker failed:" >&2; cat "$work/w1.err" "$work/w2.err" >&2; exit 1; }
  t1=$(now) c1=$(sys_cpu)
  pids=()
  cd - >/dev/null
  td=$(elapsed "$t0" "$t1")
  rc=$(rss_mb "$work/coord.time") r1=$(rss_mb "$work/w1.time") r2=$(rss_mb "$work/w2.time")
  own=$(awk -v a="$(cpu_s "$work/coord.time")" -v b="$(cpu_s "$work/w1.time")" -v c="$(cpu_s "$work/w2.time")" 'BEGIN{print a+b+c}')
  oc=$(others "$c0" "$c1" "$own")
  echo "c. coordinator + 2 workers:         $td s, $(rate "$td") MB/s; peak coordinator $rc MB, workers $r1 MB and $r2 MB; cpu coordinator $(cpu_s "$work/coord.time") s, workers $(cpu_s "$work/w1.time") s and $(cpu_s "$work/w2.time") s; other processes meanwhile: $oc CPU s"

  LC_ALL=C sort "$work"/dist/mr-out-* | grep . > "$work/dist.sorted" || true
  LC_ALL=C sort "$work/hashmap.out" > "$work/hashmap.sorted"
  if cmp -s "$work/dist.sorted" "$work/hashmap.sorted"; then
    same="yes ($(wc -l < "$work/hashmap.sorted") words)"
  else
    echo "the distributed and the single-process outputs differ:" >&2
    diff "$work/dist.sorted" "$work/hashmap.sorted" | head >&2
    exit 1
  fi
  ratio=$(awk -v d="$td" -v h="$th" 'BEGIN{printf "%.2f", d/h}')
  peak=$(( r1 > r2 ? r1 : r2 ))
  verdict=$(awk -v r="$(rate "$td")" -v q="$ratio" -v p="$peak" 'BEGIN{
    printf "%s %s %s", (r >= 250 ? "MB/s ok" : "MB/s MISSED"), (q <= 1.5 ? "ratio ok" : "ratio MISSED"),
      (p <= 128 ? "memory ok" : "memory MISSED") }')
  echo "c/b = $ratio; outputs identical: $same; targets: $verdict"
  rows+=("| $run | ${#inputs[@]} | ${MR_COORD_FLAGS:--} | $tp | $th ($(rate "$th") MB/s) | $td ($(rate "$td") MB/s) | $ratio | $( [ "$tp" = - ] && echo - || rss_mb "$work/sort.time") | $(rss_mb "$work/hm.time") | $rc | $r1, $r2 | $ob, $oc |")
done

echo
echo "corpus $mb MB, $(nproc) cores; times in s, peak RSS in MB"
echo
echo "| run | files | coordinator flags | pipeline | wc_hashmap | coordinator + 2 workers | ratio | sort RSS | wc_hashmap RSS | coordinator RSS | worker RSS | others' CPU s during b, c |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
[ "${KEEP_CORPUS:-0}" = 1 ] && echo && echo "corpus kept: MR_BENCH_DIR=$bench KEEP_CORPUS=1 reuses it"
true
