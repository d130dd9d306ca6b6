#!/usr/bin/env bash
# Benchmark coffer against restic on the same generated tree, in one run.
#
#   bench/files.sh [SIZE_MIB]     (default 1200; needs restic and GNU time: apt-get install restic time)
#
# The tree: half incompressible files (random, 1–32 MiB), half text (log-like lines), plus
# 3000 small files. Each tool gets its own fresh local repository; every measurement is run
# RUNS times (default 3) and the median (min-max) is reported. Prints a Markdown table for
# docs/BENCHMARKS.md. The page cache is warm for both tools (the tree is read once first).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1200}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/tmp/coffer-bench}
COFFER=${COFFER:-$PWD/target/release/coffer}
TIME=/usr/bin/time
[ -x "$COFFER" ] || cargo build --release
command -v restic >/dev/null || { echo "restic is not installed (apt-get install restic)" >&2; exit 1; }
[ -x $TIME ] || { echo "GNU time is not installed (apt-get install time)" >&2; exit 1; }

DATA=$WORK/data
bench/tree.sh "$DATA" "$SIZE_MIB"
cat $(find "$DATA" -type f) >/dev/null  # warm the page cache for both tools
DATA_BYTES=$(du -sb --exclude='.done-*' "$DATA" | cut -f1)

export RESTIC_PASSWORD=bench COFFER_PASSWORD=bench
unset COFFER_REPO COFFER_PASSWORD_FILE
# run NAME CMD... : prints "seconds maxrss_kib"
run() { local out; out=$($TIME -f '%e %M' "$@" 2>&1 >/dev/null | tail -1); echo "$out"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

OPS="first second restore synced"
# "synced": a restore that is on disk when it ends (restic's restore followed by sync,
# coffer's restore --sync); a coffer without --sync (before 0.1.0's last changes) skips it.
"$COFFER" restore --help | grep -q -- '--sync' && HAS_SYNC=1 || HAS_SYNC=
declare -A T M S R
for tool in restic coffer; do
  for op in $OPS; do : >"$WORK/$tool.$op"; done
done
# The tools take turns run by run rather than one after the other: the state of the file
# system drifts over a run of the script (on ext4 without a journal, creating a file skips
# every inode deleted in the last minutes, and each run deletes the previous trees), so
# running one tool's three runs after the other's would favour whichever goes first.
for r in $(seq "$RUNS"); do
  for tool in restic coffer; do
    repo=$WORK/repo-$tool; target=$WORK/restore-$tool
    rm -rf "$repo" "$target" "$target.synced"
    if [ $tool = restic ]; then
      restic -q init -r "$repo" >/dev/null
      first=(restic -q -r "$repo" backup "$DATA")
      restore=(restic -q -r "$repo" restore latest --target "$target")
      synced=(sh -c 'restic -q -r "$0" restore latest --target "$1" && sync' "$repo" "$target.synced")
    else
      "$COFFER" -q init --repo "$repo"
      first=("$COFFER" -q --repo "$repo" backup "$DATA")
      restore=("$COFFER" -q --repo "$repo" restore latest --target "$target")
      synced=("$COFFER" -q --repo "$repo" restore latest --sync --target "$target.synced")
    fi
    run "${first[@]}" >>"$WORK/$tool.first"
    run "${first[@]}" >>"$WORK/$tool.second"
    sync  # a timed restore does not pay for earlier writes
    run "${restore[@]}" >>"$WORK/$tool.restore"
    if [ -n "$HAS_SYNC" ]; then
      sync
      run "${synced[@]}" >>"$WORK/$tool.synced"
    fi
    S[$tool]=$(du -sb "$repo" | cut -f1)
    if [ "$r" = 1 ]; then
      diff -r "$DATA" "$target/$DATA" >/dev/null || { echo "$tool restored different data" >&2; exit 1; }
    fi
  done
done
for tool in restic coffer; do
  for op in $OPS; do
    [ -s "$WORK/$tool.$op" ] || continue
    T[$tool.$op]=$(cut -d' ' -f1 "$WORK/$tool.$op" | median)
    R[$tool.$op]=$(cut -d' ' -f1 "$WORK/$tool.$op" | sort -n | sed -n '1p;$p' | paste -sd-)
    M[$tool.$op]=$(cut -d' ' -f2 "$WORK/$tool.$op" | sort -n | tail -1)
  done
  rm -rf "$WORK/repo-$tool" "$WORK/restore-$tool" "$WORK/restore-$tool.synced"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
echo
echo "Data: $(mib "$DATA_BYTES") ($(find "$DATA" -type f | wc -l) files), $(nproc) cores, runs: $RUNS (median time, max RSS)"
echo "coffer $("$COFFER" version | cut -d' ' -f2), $(restic version | cut -d' ' -f1-2)"
echo
echo "| measurement | restic | coffer | coffer / restic |"
echo "|---|---|---|---|"
for op in $OPS; do
  [ -n "${T[coffer.$op]:-}" ] || continue
  echo "| $op: time (s) | ${T[restic.$op]} (${R[restic.$op]}) | ${T[coffer.$op]} (${R[coffer.$op]}) | $(ratio "${T[coffer.$op]}" "${T[restic.$op]}") |"
done
for op in first second restore; do
  echo "| $op: peak memory (MiB) | $((${M[restic.$op]} / 1024)) | $((${M[coffer.$op]} / 1024)) | $(ratio "${M[coffer.$op]}" "${M[restic.$op]}") |"
done
echo "| repository size | $(mib "${S[restic]}") | $(mib "${S[coffer]}") | $(ratio "${S[coffer]}" "${S[restic]}") |"
