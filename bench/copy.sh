#!/usr/bin/env bash
# `coffer copy` against a fresh backup into the destination, on the benchmark tree.
#
#   bench/copy.sh [SIZE_MIB]     (default 1024; RUNS=3)
#
# The tree (bench/tree.sh) is backed up once into the primary repository. Then, RUNS times:
# a new destination is made `init --like` the primary and the snapshot copied into it (timed),
# the tree backed up again into the primary (nothing changed) and that snapshot copied too
# (timed: an unchanged second copy), and the same tree backed up into a fresh repository
# (timed: what the copy replaces). All local repositories, page cache warm. Prints each time
# and the bytes each wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}; RUNS=${RUNS:-3}
W=${BENCH_DIR:-/tmp/coffer-copybench}
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
DATA=${BENCH_DATA:-/tmp/coffer-bench/data}
bench/tree.sh "$DATA" "$SIZE_MIB"
cat $(find "$DATA" -type f) >/dev/null
rm -rf "$W"; mkdir -p "$W"
cat > "$W/coffer.toml" <<CONF
repository = "$W/primary"
password = "bench"
[repositories.dest]
location = "$W/dest"
password = "bench"
[repositories.fresh]
location = "$W/fresh"
password = "bench"
CONF
C() { "$COFFER" --config "$W/coffer.toml" -q "$@"; }
t() { local t0; t0=$(date +%s.%N); "$@" > "$W/out.json"; echo "$(date +%s.%N) - $t0" | bc; }
C init
C backup "$DATA" > /dev/null
echo "tree: $(du -sm --exclude='.done-*' "$DATA" | cut -f1) MiB; primary repository $(du -sm "$W/primary" | cut -f1) MiB"
for i in $(seq "$RUNS"); do
  rm -rf "$W/dest" "$W/fresh"
  C --repo dest init --like primary
  sync
  c=$(t C copy --to dest --json); cb=$(jq .bytes_stored "$W/out.json")
  C backup "$DATA" > /dev/null
  sync
  c2=$(t C copy --to dest latest --json); c2b=$(jq .bytes_copied "$W/out.json")
  C --repo fresh init
  sync
  b=$(t C --repo fresh backup --json "$DATA"); bb=$(jq .summary.bytes_stored "$W/out.json")
  echo "run $i: copy ${c} s ($((cb >> 20)) MiB stored); unchanged second copy ${c2} s ($((c2b >> 10)) KiB moved); fresh backup ${b} s ($((bb >> 20)) MiB stored); copy / backup $(echo "scale=2; $c / $b" | bc)"
done
