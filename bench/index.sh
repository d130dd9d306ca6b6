#!/usr/bin/env bash
# What the size of a repository's index costs every command that opens it.
#
#   bench/index.sh [BLOBS...]     (default 1000000 10000000; RUNS=3)
#
# For each size: a fresh local repository gets a synthetic index of that many blobs and
# sparse packs of the sizes it names (examples/synth_index.rs --sparse-packs: no data on
# disk). Then RUNS times, with /usr/bin/time, each command's wall time and peak RSS:
#   cold      a one-file backup right after `coffer cache clean` (reads every index file
#             from the repository, and fills the local cache)
#   no-cache  the same backup with --no-cache
#   warm      the same backup with the cache filled (reads the index from the cache)
#   snapshots, check, prune --dry-run (with the cache filled; check never uses it)
# and the RSS per blob of the warm backup over the same backup into an empty repository.
# The cache is in $BENCH_DIR/cache. BENCH_KEEP=1 keeps the repositories of an earlier run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZES=("${@:-1000000 10000000}")
W=${BENCH_DIR:-/tmp/coffer-indexbench}
cargo build --release --bin coffer --example synth_index
COFFER=${COFFER:-$PWD/target/release/coffer}   # another build to compare: COFFER=path
SYNTH=$PWD/target/release/examples/synth_index
export COFFER_PASSWORD=bench COFFER_CACHE="$W/cache"
[ -n "${BENCH_KEEP:-}" ] || rm -rf "$W"
mkdir -p "$W"; echo tiny > "$W/tiny"
measure() { # REPO ARGS...: "seconds KiB"
  /usr/bin/time -f "%e %M" -o "$W/time" env COFFER_REPO="$1" "$COFFER" -q "${@:2}" >/dev/null \
    || { echo "coffer ${*:2} failed" >&2; exit 1; }
  cat "$W/time"
}
row() { # LABEL "seconds KiB"
  read -r t k <<<"$2"
  printf '    %-16s %6s s %8s KiB\n' "$1" "$t" "$k"
}
[ -d "$W/empty" ] || "$COFFER" -q --repo "$W/empty" init
measure "$W/empty" backup "$W/tiny" >/dev/null
base=$(measure "$W/empty" backup "$W/tiny" | cut -d' ' -f2)
echo "empty repository: one-file backup peak RSS ${base} KiB"
for n in ${SIZES[@]}; do
  r="$W/repo-$n"
  if [ ! -d "$r" ]; then
    "$COFFER" -q --repo "$r" init
    t0=$(date +%s.%N); "$SYNTH" "$r" "$n" --sparse-packs
    echo "$n blobs: index written in $(echo "$(date +%s.%N) - $t0" | bc) s"
  fi
  echo "$n blobs: index $(du -sm "$r/index" | cut -f1) MiB in $(ls "$r/index" | wc -l) files"
  for i in $(seq "$RUNS"); do
    echo "  run $i"
    "$COFFER" -q cache clean >/dev/null
    row cold "$(measure "$r" backup "$W/tiny")"
    echo "    cache: $(du -sm "$W/cache" | cut -f1) MiB"
    row no-cache "$(measure "$r" --no-cache backup "$W/tiny")"
    warm=$(measure "$r" backup "$W/tiny")
    row warm "$warm"
    echo "    warm backup: $(( ($(cut -d' ' -f2 <<<"$warm") - base) * 1024 / n )) bytes/blob over empty"
    row snapshots "$(measure "$r" snapshots)"
    row check "$(measure "$r" check)"
    row "prune --dry-run" "$(measure "$r" prune --dry-run)"
  done
done
