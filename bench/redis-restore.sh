#!/usr/bin/env bash
# Benchmark coffer's online Redis restore against redis-server loading the same RDB.
#
#   bench/redis-restore.sh [KEYS]     (default 2000000; needs redis-server and redis-cli)
#
# A source server is filled to KEYS keys: most with DEBUG POPULATE (strings), the rest of
# mixed types (hashes, lists, sets, sorted sets, streams, keys with expiries). coffer backs it
# up (`backup --redis`); then, RUNS times (default 3):
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
start "$WORK/src" "$SRC_PORT"
MIXED=$((KEYS / 10))
POP=$((KEYS - MIXED))
echo "filling the source: $POP strings (DEBUG POPULATE) + $MIXED keys of mixed types" >&2
redis-cli -p "$SRC_PORT" debug populate "$POP" pop 64 >/dev/null
python3 - "$MIXED" <<'PY' | redis-cli -p "$SRC_PORT" --pipe >/dev/null
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
def cmd(*a):
    a = [x if isinstance(x, bytes) else str(x).encode() for x in a]
    out.write(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
for i in range(n):
    k = i % 6
    if k == 0:
        cmd("HSET", f"h:{i}", "name", f"user {i}", "email", f"u{i}@example.com", "visits", i)
    elif k == 1:
        cmd("RPUSH", f"l:{i}", *[f"item-{j}" for j in range(8)])
    elif k == 2:
        cmd("SADD", f"s:{i}", *range(i % 50, i % 50 + 10))
    elif k == 3:
        cmd("ZADD", f"z:{i}", *[x for j in range(6) for x in (j * 1.5, f"m{j}")])
    elif k == 4:
        cmd("SET", f"t:{i}", "x" * 100, "PX", 86400000 + i)
    else:
        cmd("XADD", f"x:{i}", "*", "n", i, "payload", "event data")
PY
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

LOADS=(); RESTORES=()
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
  "$COFFER" restore latest --to-redis "redis://127.0.0.1:$p" -q
  t1=$(now)
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
echo "| ratio restore / load (target <= 3) | $(awk -v r="$R" -v l="$L" 'BEGIN{printf "%.2f", r/l}') |"
