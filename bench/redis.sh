#!/usr/bin/env bash
# Benchmark Redis backups, side by side in one run: the redis-cli floor, today's seed pipeline
# (redis-cli --rdb - | gzip | gpg --symmetric), and coffer backup --redis.
#
#   bench/redis.sh [KEYS]     (default 2000000; KEYS can also be given in the environment)
#
#   needs redis-server and redis-cli (apt-get install redis-server), gnupg, GNU time, python3
#
# Environment:
#   KEYS=2000000      keys in the dataset (bench/redis-fill.py: mixed types, about 1 GiB of RDB
#                     at 2 million keys)
#   RUNS=3            every measurement is run RUNS times; the table shows the median time, the
#                     spread (min-max) and the largest peak memory
#   BENCH_DIR         work directory (default /tmp/coffer-redisbench). The generated dataset is
#                     kept there as an RDB and reused by later runs with the same KEYS
#   COFFER            coffer binary (default target/release/coffer, built if missing)
#   DISKLESS=yes      the server's repl-diskless-sync (yes: $EOF transfers; no: $len transfers
#                     of a file the server writes first)
#
# The script starts its own redis-server on a free port of 127.0.0.1 with a password
# (requirepass; every client reads it from REDISCLI_AUTH, never from the command line) and
# stops it on exit.
#
# Measured, in this order within each run so that background load hits every tool alike:
#   floor    redis-cli --rdb /dev/null           (redis-cli exits 1 because /dev/null cannot be
#                                                 fsynced; the run counts when it printed
#                                                 "Transfer finished with success")
#   seed     redis-cli --rdb - | gzip | gpg --symmetric -o FILE
#   coffer   coffer backup --redis URL --json    (into a fresh repository)
#   coffer2  the same again into the same repository, nothing changed: time and new bytes
# Then, once: 0.01 % of the keys rewritten, a backup into coffer2's repository (new bytes),
# then 1 %, the same; and the same steps with the server's rdbcompression off (CONFIG SET
# rdbcompression no, a fresh repository), to see what LZF costs deduplication.
# Time is wall time and memory GNU time's %M (for a pipeline: its largest single process).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-${KEYS:-2000000}}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/tmp/coffer-redisbench}
COFFER=${COFFER:-$PWD/target/release/coffer}
DISKLESS=${DISKLESS:-yes}
TIME=/usr/bin/time

missing=()
for c in redis-server redis-cli gpg python3; do command -v $c >/dev/null || missing+=($c); done
[ -x $TIME ] || missing+=("GNU time")
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (apt-get install redis-server gnupg time python3)" >&2
  exit 1
fi
[ -x "$COFFER" ] || cargo build --release

mkdir -p "$WORK"
DATA=$WORK/data-$KEYS
RES=$WORK/results
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REDISCLI_AUTH=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export REDISCLI_AUTH
unset COFFER_REPO COFFER_PASSWORD_FILE REDIS_URL

cleanup() {
  set +e
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -d "$WORK/gnupg" ] && GNUPGHOME=$WORK/gnupg gpgconf --kill gpg-agent 2>/dev/null
  rm -rf "$WORK"/repo-* "$WORK/gnupg" "$WORK/seed.rdb.gz.gpg" "$WORK/pass" "$RES"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_server() {
  redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DATA" --dbfilename dump.rdb \
    --save '' --appendonly no --requirepass "$REDISCLI_AUTH" --repl-diskless-sync "$DISKLESS" \
    --repl-diskless-sync-delay 0 --logfile "$DATA/server.log" --daemonize no &
  SERVER_PID=$!
  until redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail "$DATA/server.log" >&2; exit 1; }
    sleep 0.2
  done
  # Wait until a dataset from disk is loaded.
  until redis-cli -p "$PORT" info persistence | grep -q '^loading:0'; do sleep 0.2; done
}

mkdir -p "$DATA"
if [ ! -f "$DATA/.done" ]; then
  rm -f "$DATA/dump.rdb"
  start_server
  echo "generating $KEYS keys (bench/redis-fill.py)" >&2
  python3 bench/redis-fill.py "$PORT" "$KEYS"
  redis-cli -p "$PORT" save >/dev/null
  touch "$DATA/.done"
else
  start_server
fi
DBSIZE=$(redis-cli -p "$PORT" dbsize)
VERSION=$(redis-cli -p "$PORT" info server | sed -n 's/^redis_version:\(.*\)\r$/\1/p')

export COFFER_PASSWORD=bench GNUPGHOME=$WORK/gnupg
rm -rf "$GNUPGHOME"; mkdir -m 700 "$GNUPGHOME"
echo bench >"$WORK/pass"
rm -rf "$RES"; mkdir -p "$RES"
URL=redis://127.0.0.1:$PORT

# measure NAME CMD... : time one run; appends "seconds maxrss_kib" to $RES/NAME
measure() {
  local name=$1; shift
  if ! $TIME -f '%e %M' -o "$RES/$name.last" "$@" >"$RES/$name.out" 2>"$RES/$name.err"; then
    if [ "$name" != floor ] || ! grep -q 'Transfer finished with success' "$RES/$name.err"; then
      echo "$name failed:" >&2; cat "$RES/$name.err" >&2; exit 1
    fi
  fi
  tail -1 "$RES/$name.last" >>"$RES/$name"
}

echo "warming up (one transfer)" >&2
redis-cli -p "$PORT" --rdb - 2>/dev/null | wc -c >"$RES/rdb-bytes"
RDB_BYTES=$(cat "$RES/rdb-bytes")
RDB_BYTES=$((RDB_BYTES - 40)) # the diskless end mark is not part of the RDB

for run in $(seq "$RUNS"); do
  echo "run $run/$RUNS" >&2
  measure floor redis-cli -p "$PORT" --rdb /dev/null
  measure seed sh -c "redis-cli -p $PORT --rdb - 2>/dev/null | gzip | gpg --batch --yes --symmetric --passphrase-file $WORK/pass -o $WORK/seed.rdb.gz.gpg"
  SEED_BYTES=$(stat -c %s "$WORK/seed.rdb.gz.gpg")
  rm -rf "$WORK/repo-c"
  COFFER_REPO=$WORK/repo-c "$COFFER" init >/dev/null 2>&1
  measure coffer env COFFER_REPO="$WORK/repo-c" "$COFFER" -q backup --json --redis "$URL"
  STORED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["bytes_stored"])' "$RES/coffer.out")
  measure coffer2 env COFFER_REPO="$WORK/repo-c" "$COFFER" -q backup --json --redis "$URL"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["summary"]; print(s["bytes_added"])' "$RES/coffer2.out" >>"$RES/added2"
done

added() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["bytes_added"])' "$1"; }
change() { # change PER_10000 : rewrite that many keys in 10000 (as strings)
  python3 - "$PORT" "$KEYS" "$1" <<'PY'
import os, socket, sys, random
port, keys, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
def cmd(*a):
    out = b"*%d\r\n" % len(a)
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out += b"$%d\r\n%s\r\n" % (len(x), x)
    return out
buf = [cmd("AUTH", os.environ["REDISCLI_AUTH"]), cmd("CLIENT", "REPLY", "OFF")]
rng = random.Random(per)
for i in rng.sample(range(keys), max(1, keys * per // 10000)):
    buf.append(cmd("SET", "session:%d" % i, os.urandom(200).hex()))
buf.append(cmd("CLIENT", "REPLY", "ON"))
s.sendall(b"".join(buf))
assert s.recv(100).startswith(b"+OK")
PY
}
echo "0.01 % and 1 % of the keys changed, with rdbcompression yes and no" >&2
change 1
"$COFFER" -q backup --json --redis "$URL" --repo "$WORK/repo-c" >"$RES/changed.json"
SMALL_YES=$(added "$RES/changed.json")
change 100
"$COFFER" -q backup --json --redis "$URL" --repo "$WORK/repo-c" >"$RES/changed.json"
CHANGED_YES=$(added "$RES/changed.json")
redis-cli -p "$PORT" config set rdbcompression no >/dev/null
rm -rf "$WORK/repo-c" "$WORK/repo-n"
COFFER_REPO=$WORK/repo-n "$COFFER" init >/dev/null 2>&1
COFFER_REPO=$WORK/repo-n "$COFFER" -q backup --json --redis "$URL" >"$RES/nocomp.json"
NOCOMP_STORED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["summary"]["bytes_stored"])' "$RES/nocomp.json")
NOCOMP_SIZE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["size"])' "$RES/nocomp.json")
change 2
COFFER_REPO=$WORK/repo-n "$COFFER" -q backup --json --redis "$URL" >"$RES/nocomp2.json"
SMALL_NO=$(added "$RES/nocomp2.json")
change 101
COFFER_REPO=$WORK/repo-n "$COFFER" -q backup --json --redis "$URL" >"$RES/nocomp2.json"
CHANGED_NO=$(added "$RES/nocomp2.json")
redis-cli -p "$PORT" config set rdbcompression yes >/dev/null

python3 - "$RES" "$RDB_BYTES" "$DBSIZE" "$VERSION" "$SEED_BYTES" "$STORED" "$CHANGED_YES" \
  "$NOCOMP_SIZE" "$NOCOMP_STORED" "$CHANGED_NO" "$DISKLESS" "$SMALL_YES" "$SMALL_NO" <<'PY'
import statistics, sys
res, rdb, keys, version, seed_bytes, stored, ch_yes, nc_size, nc_stored, ch_no, diskless, sm_yes, sm_no = sys.argv[1:]
rdb, seed_bytes, stored, ch_yes = int(rdb), int(seed_bytes), int(stored), int(ch_yes)
nc_size, nc_stored, ch_no = int(nc_size), int(nc_stored), int(ch_no)
sm_yes, sm_no = int(sm_yes), int(sm_no)
def load(name):
    rows = [l.split() for l in open(f"{res}/{name}")]
    return [float(r[0]) for r in rows], max(int(r[1]) for r in rows)
mib = lambda b: f"{b / 2**20:.1f} MiB"
floor, _ = load("floor")
f = statistics.median(floor)
print(f"Redis {version}, {keys} keys, RDB {mib(rdb)} (rdbcompression yes), repl-diskless-sync {diskless}; "
      f"{len(floor)} runs, median (min-max)\n")
print("| step | time | × floor | peak RSS | stored |")
print("|---|---|---|---|---|")
for name, label, out in [("floor", "redis-cli --rdb /dev/null", "-"),
                         ("seed", "redis-cli --rdb - \\| gzip \\| gpg", mib(seed_bytes)),
                         ("coffer", "coffer backup --redis", mib(stored)),
                         ("coffer2", "coffer backup --redis, unchanged", None)]:
    t, rss = load(name)
    m = statistics.median(t)
    if out is None:
        added = [int(l) for l in open(f"{res}/added2")]
        out = f"+{mib(max(added))} ({100 * max(added) / rdb:.2f} %)"
    print(f"| {label} | {m:.2f} s ({min(t):.2f}-{max(t):.2f}) | {m / f:.2f} | {rss / 1024:.0f} MiB | {out} |")
seed_t = statistics.median(load("seed")[0]); c_t = statistics.median(load("coffer")[0])
print(f"\ncoffer / seed: {c_t / seed_t:.2f}")
# The machine is shared: ratios of the steps of one run (measured one after the other) are
# steadier than ratios of medians.
for name in ["coffer", "coffer2", "seed"]:
    r = sorted(c / f for c, f in zip(load(name)[0], floor))
    print(f"{name} / floor of the same run: median {statistics.median(r):.2f} ({', '.join(f'{x:.2f}' for x in r)})")
print(f"\nrdbcompression yes: RDB {mib(rdb)}, stored {mib(stored)}; after 0.01 % of the keys rewritten, "
      f"adds {mib(sm_yes)} ({100 * sm_yes / rdb:.1f} % of the RDB); after 1 % more, {mib(ch_yes)} ({100 * ch_yes / rdb:.1f} %)")
print(f"rdbcompression no: RDB {mib(nc_size)}, stored {mib(nc_stored)}; after 0.01 %, adds {mib(sm_no)} "
      f"({100 * sm_no / nc_size:.1f} %); after 1 % more, {mib(ch_no)} ({100 * ch_no / nc_size:.1f} %)")
PY
