#!/usr/bin/env bash
# What the size of a repository's index costs every command that opens it.
#
#   bench/index.sh [BLOBS...]     (default 1000000 10000000; RUNS=3)
#
# For each size: a fresh local repository gets a synthetic index of that many blobs
# (examples/synth_index.rs: index files only, no packs), then RUNS times, with /usr/bin/time:
# a backup of one tiny file into it (opens and loads the whole index), and `snapshots` (does
# not load it). Prints wall time and peak RSS, and the RSS per blob over the same backup into
# an empty repository. BENCH_KEEP=1 keeps the repositories of an earlier run (same sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZES=("${@:-1000000 10000000}")
W=${BENCH_DIR:-/tmp/coffer-indexbench}
cargo build --release --bin coffer --example synth_index
COFFER=${COFFER:-$PWD/target/release/coffer}   # another build to compare: COFFER=path
SYNTH=$PWD/target/release/examples/synth_index
export COFFER_PASSWORD=bench
[ -n "${BENCH_KEEP:-}" ] || rm -rf "$W"
mkdir -p "$W"; echo tiny > "$W/tiny"
measure() { # REPO LABEL ARGS...: "seconds KiB"
  /usr/bin/time -f "%e %M" -o "$W/time" env COFFER_REPO="$1" "$COFFER" -q "${@:3}" >/dev/null
  cat "$W/time"
}
[ -d "$W/empty" ] || "$COFFER" -q --repo "$W/empty" init
base=$(measure "$W/empty" empty backup "$W/tiny" | cut -d' ' -f2)
echo "empty repository: one-file backup peak RSS ${base} KiB"
for n in ${SIZES[@]}; do
  r="$W/repo-$n"
  if [ ! -d "$r" ]; then
    "$COFFER" -q --repo "$r" init
    t0=$(date +%s.%N); "$SYNTH" "$r" "$n"
    echo "$n blobs: index written in $(echo "$(date +%s.%N) - $t0" | bc) s"
  fi
  echo "$n blobs: index $(du -sm "$r/index" | cut -f1) MiB"
  for i in $(seq "$RUNS"); do
    read -r bt bk < <(measure "$r" "$n" backup "$W/tiny")
    read -r st sk < <(measure "$r" "$n" snapshots)
    echo "  run $i: one-file backup ${bt} s, ${bk} KiB ($(( (bk - base) * 1024 / n )) bytes/blob over empty); snapshots ${st} s, ${sk} KiB"
  done
done
