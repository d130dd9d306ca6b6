#!/usr/bin/env bash
# prune after forgetting half of 30 snapshots, coffer against restic on the same data.
#
#   bench/prune.sh      (RUNS=3 prunes of each tool, each on a fresh copy of its repository;
#                        needs restic and GNU time: apt-get install restic time)
#
# The tree: DIRS directories of FILES files of about 12 bytes each, every file different
# (default 1,000 × 1,000: a million data blobs). 30 snapshots; before each one after the
# first, CHANGE directories get new contents (default 10, so the repository holds about
# 1.3M data blobs). Then `forget --keep-last 15` (without prune), which leaves the first
# contents of the directories changed in snapshots 2 to 15 unused (about 140,000 blobs,
# scattered among the others in the packs). Each prune runs on a fresh copy of the
# repository after the forget, with each tool's defaults (coffer repacks packs with more than
# 10 % unused bytes, restic 0.14 with `--max-unused 5%`) and its local cache warm. Reported:
# wall time, peak RSS, the bytes of packs written (packs present after and not before) and
# the repository's size before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DIRS=${DIRS:-1000}
FILES=${FILES:-1000}
CHANGE=${CHANGE:-10}
W=${BENCH_DIR:-/tmp/coffer-prunebench}
command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -n "${COFFER:-}" ] || cargo build --release --bin coffer
COFFER=${COFFER:-$PWD/target/release/coffer}
export COFFER_PASSWORD=bench RESTIC_PASSWORD=bench
export COFFER_CACHE="$W/coffer-cache" RESTIC_CACHE_DIR="$W/restic-cache"
unset COFFER_REPO COFFER_PASSWORD_FILE RESTIC_REPOSITORY
rm -rf "$W"; mkdir -p "$W"
SRC=$W/tree

write_dir() { # DIR_NUMBER VERSION
  python3 - "$SRC" "$1" "$2" "$FILES" <<'PY'
import os, sys
root, d, v, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
p = os.path.join(root, f"d{d:04}")
os.makedirs(p, exist_ok=True)
for f in range(n):
    with open(os.path.join(p, f"f{f:04}"), "w") as fh:
        fh.write(f"{v}:{d}:{f}\n")
PY
}
t0=$(date +%s)
python3 - "$SRC" "$DIRS" "$FILES" <<'PY'
import os, sys
root, dirs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    p = os.path.join(root, f"d{d:04}")
    os.makedirs(p, exist_ok=True)
    for f in range(n):
        with open(os.path.join(p, f"f{f:04}"), "w") as fh:
            fh.write(f"0:{d}:{f}\n")
PY
echo "tree: $DIRS × $FILES files written in $(( $(date +%s) - t0 )) s"

"$COFFER" -q --repo "$W/coffer" init
restic -q -r "$W/restic" init >/dev/null
for s in $(seq 30); do
  if [ "$s" -gt 1 ]; then
    for c in $(seq 0 $((CHANGE - 1))); do write_dir $(( (s - 2) * CHANGE + c )) "$s"; done
    sleep 1  # past coffer's racy-file window, for both tools alike
  fi
  "$COFFER" -q --repo "$W/coffer" backup "$SRC" >/dev/null
  restic -q -r "$W/restic" backup "$SRC" >/dev/null
  [ $((s % 5)) -eq 0 ] && echo "  $s snapshots"
done
"$COFFER" -q --repo "$W/coffer" forget --keep-last 15 >/dev/null
restic -q -r "$W/restic" forget --keep-last 15 >/dev/null
packs() { find "$1/data" -type f -printf '%f %s\n' | sort; }
for tool in coffer restic; do
  echo "$tool: $(du -sm "$W/$tool" | cut -f1) MiB, $(find "$W/$tool/data" -type f | wc -l) packs after the forget"
  packs "$W/$tool" >"$W/$tool.packs"
done
for r in $(seq "$RUNS"); do
  for tool in coffer restic; do
    rm -rf "$W/run"; cp -a "$W/$tool" "$W/run"
    if [ $tool = coffer ]; then cmd=("$COFFER" -q --repo "$W/run" prune)
    else cmd=(restic -q -r "$W/run" prune); fi
    /usr/bin/time -f "%e %M" -o "$W/time" "${cmd[@]}" >/dev/null
    read -r t k <"$W/time"
    written=$(packs "$W/run" | join -v1 - "$W/$tool.packs" | awk '{s+=$2} END {print s+0}')
    printf '  run %s %-6s %6s s %8s KiB  %6s MiB of packs written, %s MiB after\n' "$r" "$tool" "$t" "$k" \
      "$(( written >> 20 ))" "$(du -sm "$W/run" | cut -f1)"
  done
done
