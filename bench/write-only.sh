#!/usr/bin/env bash
# A backup with a write-only key against one with the full key, on the benchmark tree.
#
#   bench/write-only.sh [SIZE_MIB]     (default 1024; RUNS=3)
#
# RUNS times, alternating which goes first: the tree is backed up into a fresh repository with
# the full key (timed), and into another fresh repository, upgraded by `key add --write-only`,
# with the write-only key (timed); then each backs the unchanged tree up again (timed: the
# full key skips unchanged files by the parent snapshot's trees, the write-only key by its
# local tree cache, $COFFER_CACHE). Local repositories, page cache warm. Prints each time and
# the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}; RUNS=${RUNS:-3}
W=${BENCH_DIR:-/tmp/coffer-wobench}
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
DATA=${BENCH_DATA:-/tmp/coffer-bench/data}
bench/tree.sh "$DATA" "$SIZE_MIB"
cat $(find "$DATA" -type f) >/dev/null
rm -rf "$W"; mkdir -p "$W"
echo "tree: $(du -sm --exclude='.done-*' "$DATA" | cut -f1) MiB"
C() { COFFER_CACHE="$W/cache" COFFER_REPO="$W/$1" COFFER_PASSWORD="$2" "$COFFER" -q "${@:3}"; }
t() { local t0; t0=$(date +%s.%N); "$@" > "$W/out.json"; echo "$(date +%s.%N) - $t0" | bc; }
full() { t C full bench backup --json "$DATA"; }
writer() { t C wo writer backup --json "$DATA"; }
for i in $(seq "$RUNS"); do
  rm -rf "$W/full" "$W/wo" "$W/cache"
  C full bench init; C wo bench init
  COFFER_NEW_PASSWORD=writer C wo bench key add --write-only
  sync
  if [ $((i % 2)) = 1 ]; then f=$(full); w=$(writer); else w=$(writer); f=$(full); fi
  sync
  f2=$(full); w2=$(writer); w2b=$(jq .summary.bytes_stored "$W/out.json")
  echo "run $i: first backup full key ${f} s, write-only ${w} s (ratio $(echo "scale=3; $w / $f" | bc)); unchanged second: full key ${f2} s, write-only ${w2} s (ratio $(echo "scale=3; $w2 / $f2" | bc); $((w2b >> 10)) KiB stored)"
done
