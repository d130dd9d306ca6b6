#!/usr/bin/env bash
# Benchmark coffer's online Redis restore against redis-server loading the same RDB.
#
#   bench/redis-restore.sh [KEYS]     (default 2000000; needs redis-server and redis-cli)
#
# A source server holds KEYS keys of mixed types (bench/redis-fill.py, or the dataset
# bench/redis.sh made: DATASET, default /tmp/coffer-redisbench/data-KEYS/dump.rdb). coffer
# backs it up (`backup --redis`); then, RUNS times (default 3):
#   - load:    redis-server started on a directory holding the same dump.rdb, timed from the
#              start to `loading:0` in INFO persistence;
#   - restore: `coffer restore --to-redis` into an empty server, timed to its exit.
# Prints both medians (min-max) and the ratio restore/load as a Markdown table for
# docs/BENCHMARKS.md. The issue's target: restore within 3x of load.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-2000000}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/tmp/coffer-bench-redis-restore}
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli is not installed (apt-get install redis-tools)" >&2; exit 1; }

rm -rf "$WORK"; mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start DIR PORT [ARGS...]: a throwaway server in the background; its pid in PIDS.
start() {
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
    --enable-debug-command yes --logfile "$dir/log" "$@" &
  PIDS+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
}
stop() { redis-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true; }

now() { date +%s.%N; }

SRC_PORT=$(free_port)
# The dataset: the one bench/redis.sh made for the same KEYS when it is there (mixed types,
# about 1 GiB of RDB at 2 million keys), else made here the same way (bench/redis-fill.py).
DATASET=${DATASET:-/tmp/coffer-redisbench/data-$KEYS/dump.rdb}
if [ -f "$DATASET" ]; then
  echo "the source: $DATASET" >&2
  mkdir -p "$WORK/src"; cp "$DATASET" "$WORK/src/dump.rdb"
  start "$WORK/src" "$SRC_PORT"
  until [ "$(redis-cli -p "$SRC_PORT" info persistence | tr -d '\r' | grep '^loading:' | cut -d: -f2)" = 0 ]; do sleep 0.2; done
else
  start "$WORK/src" "$SRC_PORT"
  echo "filling the source with $KEYS keys of mixed types (bench/redis-fill.py)" >&2
  REDISCLI_AUTH= python3 bench/redis-fill.py "$SRC_PORT" "$KEYS"
fi
redis-cli -p "$SRC_PORT" info keyspace | grep '^db' >&2

export COFFER_PASSWORD=bench COFFER_REPO=$WORK/repo
unset COFFER_PASSWORD_FILE REDIS_URL REDISCLI_AUTH
"$COFFER" init >/dev/null
echo "backing up" >&2
"$COFFER" backup --redis "redis://127.0.0.1:$SRC_PORT" >&2
stop "$SRC_PORT"
# The same bytes for the start-up load: the RDB as backed up.
RDB=$WORK/dump.rdb
"$COFFER" dump latest >"$RDB"
echo "RDB: $(du -h "$RDB" | cut -f1)" >&2

median() { sort -g | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.2f s (%.2f-%.2f)", m, a[1], a[NR]}'; }
med() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

LOADS=(); RESTORES=(); RSS=()
for run in $(seq 1 "$RUNS"); do
  # Load at start-up.
  d=$WORK/load$run; mkdir -p "$d"; cp "$RDB" "$d/dump.rdb"
  p=$(free_port)
  t0=$(now)
  redis-server --port "$p" --bind 127.0.0.1 --dir "$d" --dbfilename dump.rdb --save '' \
    --appendonly no --logfile "$d/log" &
  PIDS+=($!)
  until [ "$(redis-cli -p "$p" info persistence 2>/dev/null | tr -d '\r' | grep '^loading:' | cut -d: -f2)" = 0 ]; do
    sleep 0.01
  done
  t1=$(now)
  LOADS+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.3f", a-b}')")
  stop "$p"; rm -rf "$d"
  # Online restore into an empty server.
  p=$(free_port)
  start "$WORK/dst$run" "$p"
  t0=$(now)
  /usr/bin/time -f %M -o "$WORK/rss" "$COFFER" restore latest --to-redis "redis://127.0.0.1:$p" -q
  t1=$(now)
  RSS+=("$(tail -1 "$WORK/rss")")
  RESTORES+=("$(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.3f", a-b}')")
  redis-cli -p "$p" info keyspace | grep '^db' >&2
  stop "$p"; rm -rf "$WORK/dst$run"
  echo "run $run: load ${LOADS[-1]} s, restore ${RESTORES[-1]} s" >&2
done

L=$(printf '%s\n' "${LOADS[@]}" | med)
R=$(printf '%s\n' "${RESTORES[@]}" | med)
echo
echo "| $KEYS keys, RDB $(du -h "$RDB" | cut -f1) | median of $RUNS (min-max) |"
echo "| --- | --- |"
echo "| redis-server loads the RDB at start-up | $(printf '%s\n' "${LOADS[@]}" | median) |"
echo "| coffer restore --to-redis (verify pass + RESTORE) | $(printf '%s\n' "${RESTORES[@]}" | median) |"
echo "| coffer's peak RSS | $(printf '%s\n' "${RSS[@]}" | sort -n | tail -1 | awk '{printf "%.0f MiB", $1/1024}') |"
echo "| ratio restore / load of the same run | $(for i in "${!LOADS[@]}"; do awk -v r="${RESTORES[$i]}" -v l="${LOADS[$i]}" 'BEGIN{printf "%.2f\n", r/l}'; done | sort -g | paste -sd' ') |"
echo "| ratio restore / load (target <= 3) | $(awk -v r="$R" -v l="$L" 'BEGIN{printf "%.2f", r/l}') |"
