#!/bin/bash
# What `coffer run` costs when it has nothing to do: two services over the same kind of stack
# (three sources, a daily schedule each, [service] listen), one left alone and one scraped the
# way Prometheus would (every 15 s: /metrics, /api/status and /) for DURATION seconds after a
# warm-up. Prints each one's CPU seconds per hour (user + system, from /proc/PID/stat) and its
# resident memory (VmRSS, VmHWM).   usage: bench/idle.sh [DURATION=900]
set -e
D=${1:-900}; W=${BENCH_DIR:-/tmp/coffer-idlebench}
cd "$(dirname "$0")/.."
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
pkill -f "$W/.*/coffer.toml run" 2>/dev/null || true
rm -rf $W; mkdir -p $W
export COFFER_PASSWORD=idle-bench
mkdir -p $W/data && head -c 10M /dev/urandom > $W/data/blob && seq 100000 > $W/data/lines
start() { # NAME PORT
  mkdir -p $W/$1
  "$COFFER" -q -r $W/$1/repo init
  cat > $W/$1/coffer.toml <<CONF
repository = "$W/$1/repo"
[service]
listen = "127.0.0.1:$2"
check = "0 5 * * *"
[sources.uploads]
type = "files"
paths = ["$W/data"]
schedule = "0 2 * * *"
rpo = "26h"
[sources.lines]
type = "command"
shell = "cat $W/data/lines"
schedule = "0 3 * * *"
rpo = "26h"
[sources.config]
type = "files"
paths = ["$PWD/src"]
every = "24h"
rpo = "26h"
CONF
  "$COFFER" --config $W/$1/coffer.toml run 2> $W/$1/log &
  echo $! > $W/$1/pid
}
start alone 19811
start scraped 19812
# Warm-up: the missed runs at start (each source never ran), the first check.
sleep 30
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
hz=$(getconf CLK_TCK)
a=$(cat $W/alone/pid); s=$(cat $W/scraped/pid)
a0=$(ticks $a); s0=$(ticks $s); t0=$(date +%s.%N)
scrapes=0
end=$(( $(date +%s) + D ))
while [ "$(date +%s)" -lt $end ]; do
  for p in /metrics /api/status /; do curl -fsS -o /dev/null http://127.0.0.1:19812$p; done
  scrapes=$((scrapes + 1))
  sleep 15
done
a1=$(ticks $a); s1=$(ticks $s); t1=$(date +%s.%N)
el=$(echo "$t1 - $t0" | bc)
report() { # NAME PID T0 T1
  cpu=$(echo "scale=3; ($4 - $3) / $hz" | bc)
  per_h=$(echo "scale=2; $cpu * 3600 / $el" | bc)
  rss=$(awk '/VmRSS/{print $2}' /proc/$2/status); hwm=$(awk '/VmHWM/{print $2}' /proc/$2/status)
  echo "$1: ${cpu} CPU s in ${el%.*} s = ${per_h} CPU s/hour; RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB)"
}
report "idle" $a $a0 $a1
report "scraped every 15 s ($scrapes scrapes of 3 pages)" $s $s0 $s1
kill $a $s; wait 2>/dev/null || true
grep -c "started" $W/alone/log $W/scraped/log | sed 's/^/runs started (warm-up): /'
