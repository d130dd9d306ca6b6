#!/usr/bin/env bash
# Physical base backups and WAL archiving: coffer against pgBackRest on the same cluster,
# in one run.
#
#   bench/physical.sh [PGBENCH_SCALE]     (default 64, about 1 GB; run as root)
#
# Needs PostgreSQL 15 (server, pgbench) and pgbackrest (apt-get install postgresql-15
# pgbackrest time). pgBackRest is configured like a production setup: zstd, AES-256
# encryption, process-max 2, start-fast, asynchronous archive-push with process-max 2.
# coffer uses its defaults (zstd 3, XChaCha20-Poly1305). Both run as the postgres user.
#
# Measured, each tool in turn (order alternates between runs, RUNS default 1):
#   WAL archiving: a backlog of ready segments (pgbench -i) drained through the tool's
#                  archive_command, in segments per second;
#   full backup, backup with nothing changed (pgBackRest: --type=incr; coffer: a second
#                  base backup, which reuses unchanged files), restore into an empty
#                  directory (files only; recovery itself is PostgreSQL's work), and a
#                  delta restore over that restored directory (both tools' --delta: every
#                  file is read and checksummed, nothing needs writing).
# IMMEDIATE=1 restores to the end of the base backup (coffer --target-immediate, pgBackRest
# --type=immediate) instead of the end of the archive. Both tools make the restored files
# durable before they exit (pgBackRest fsyncs each file, coffer syncs the file system once);
# a `sync` before each timed restore keeps either from paying for the other's write-back.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-64}
RUNS=${RUNS:-1}
W=${BENCH_DIR:-/tmp/coffer-physbench}
COFFER=${COFFER:-$PWD/target/release/coffer}
BIN=/usr/lib/postgresql/15/bin
PORT=5488
[ -x "$COFFER" ] || cargo build --release
[ "$(id -u)" = 0 ] || { echo "run as root (the cluster and both tools run as the postgres user)" >&2; exit 1; }
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is not installed (apt-get install time)" >&2; exit 1; }

AS_PG=(runuser -u postgres -- env PGHOST=$W PGPORT=$PORT PGUSER=postgres
  COFFER_REPO=$W/coffer-repo COFFER_PASSWORD_FILE=$W/pw)
as_pg() { "${AS_PG[@]}" "$@"; }
PGBR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
psql_() { as_pg $BIN/psql -qAtX -d postgres -c "$1"; }

as_pg $BIN/pg_ctl -D $W/data -m immediate stop >/dev/null 2>&1 || true
rm -rf $W; mkdir -p $W/spool $W/log; chmod 755 $W
cp "$COFFER" $W/coffer
echo "bench archive secret" > $W/pw
cat > $W/pgbackrest.conf <<CONF
[global]
repo1-path=$W/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-retention-full=99
repo1-cipher-pass=bench-cipher-pass-0123456789
compress-type=zst
process-max=2
start-fast=y
archive-async=y
spool-path=$W/spool
lock-path=$W/spool
log-path=$W/log
log-level-console=warn
log-level-file=off
[global:archive-push]
process-max=2
[bench]
pg1-path=$W/data
pg1-port=$PORT
pg1-socket-path=$W
CONF
# archive_command dispatches on $W/mode: fail (build a backlog), coffer, pgbackrest, both.
# (pgBackRest insists that the archive_command contains "pgbackrest", hence the name.)
cat > $W/archive-coffer-or-pgbackrest.sh <<SH
#!/bin/sh
case "\$(cat $W/mode)" in
  coffer) exec $W/coffer wal-push -q "\$1" ;;
  pgbackrest) exec $PGBR archive-push "\$1" ;;
  both) $W/coffer wal-push -q "\$1" && exec $PGBR archive-push "\$1" ;;
  *) exit 1 ;;
esac
SH
chmod 755 $W/archive-coffer-or-pgbackrest.sh
echo fail > $W/mode
chown -R postgres:postgres $W
as_pg $W/coffer init -q
as_pg $BIN/initdb -N -U postgres -D $W/data >/dev/null
cat >> $W/data/postgresql.conf <<CONF
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$W/archive-coffer-or-pgbackrest.sh %p'
max_wal_size = 8GB
shared_buffers = 256MB
CONF
as_pg $BIN/pg_ctl -D $W/data -l $W/postgres.log -w start >/dev/null
as_pg $PGBR stanza-create >/dev/null

ready() { ls $W/data/pg_wal/archive_status/ | grep -c '\.ready$' || true; }
# Build a backlog with archiving failing, then time how long TOOL takes to drain it.
drain() {
  local tool=$1
  echo fail > $W/mode
  as_pg $BIN/pgbench -q -i -s "$SCALE" postgres >/dev/null 2>&1
  psql_ "select pg_switch_wal()" >/dev/null
  local n; n=$(ready)
  local t0; t0=$(date +%s.%N)
  echo "$tool" > $W/mode
  psql_ "select pg_reload_conf()" >/dev/null   # the archiver retries at once
  while [ "$(ready)" != 0 ]; do sleep 0.05; done
  local t1; t1=$(date +%s.%N)
  echo "$(echo "scale=1; $n / ($t1 - $t0)" | bc) $n"
}
timed() { # timed NAME CMD... (run as postgres) -> "seconds maxrss_kb" in $W/NAME.t
  /usr/bin/time -o $W/$1.t -f "%e %M" "${AS_PG[@]}" "${@:2}" >/dev/null
}

declare -A T
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then order="coffer pgbackrest"; else order="pgbackrest coffer"; fi
  for tool in $order; do
    read -r rate n < <(drain $tool)
    T[$tool.wal]="${T[$tool.wal]:-} $rate"
    echo "run $run: $tool archived $n segments at $rate seg/s" >&2
  done
  echo both > $W/mode
  for tool in $order; do
    rm -rf $W/r-$tool; mkdir -m 700 $W/r-$tool; chown postgres:postgres $W/r-$tool
    # Flush what the WAL drain's pgbench left dirty, so that neither tool's first backup
    # pays for the other's checkpoint (both start with a fast checkpoint of their own).
    psql_ "checkpoint"
    if [ $tool = coffer ]; then
      timed c-full $W/coffer backup -q --postgres --physical
      timed c-incr $W/coffer backup -q --postgres --physical
      sync
      timed c-restore $W/coffer restore -q ${IMMEDIATE:+--target-immediate} --pgdata $W/r-coffer
      timed c-delta $W/coffer restore -q --delta --pgdata $W/r-coffer
    else
      timed p-full $PGBR backup --type=full
      timed p-incr $PGBR backup --type=incr
      sync
      timed p-restore $PGBR restore ${IMMEDIATE:+--type=immediate} --pg1-path=$W/r-pgbackrest
      timed p-delta $PGBR restore --delta --pg1-path=$W/r-pgbackrest
    fi
  done
  for m in c-full c-incr c-restore c-delta p-full p-incr p-restore p-delta; do
    T[$m]="${T[$m]:-} $(cut -d' ' -f1 $W/$m.t)"
    T[$m.mem]="$(cut -d' ' -f2 $W/$m.t)"
  done
  echo "run $run: coffer full $(cut -d' ' -f1 $W/c-full.t) s, unchanged $(cut -d' ' -f1 $W/c-incr.t) s, restore $(cut -d' ' -f1 $W/c-restore.t) s, delta $(cut -d' ' -f1 $W/c-delta.t) s; pgBackRest full $(cut -d' ' -f1 $W/p-full.t) s, incr $(cut -d' ' -f1 $W/p-incr.t) s, restore $(cut -d' ' -f1 $W/p-restore.t) s, delta $(cut -d' ' -f1 $W/p-delta.t) s" >&2
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
db=$(psql_ "select pg_size_pretty(pg_database_size('postgres'))")
cat <<EOF

Cluster: pgbench scale $SCALE ($db), PostgreSQL $(psql_ "show server_version"), $(nproc) cores, runs: $RUNS (median)
coffer $($W/coffer version | head -1 | cut -d' ' -f2), $(pgbackrest version)

| measurement | pgBackRest | coffer | coffer / pgBackRest |
|---|---|---|---|
| full backup (s) | $(med "${T[p-full]}") | $(med "${T[c-full]}") | $(ratio "$(med "${T[c-full]}")" "$(med "${T[p-full]}")") |
| backup, nothing changed (s) | $(med "${T[p-incr]}") | $(med "${T[c-incr]}") | $(ratio "$(med "${T[c-incr]}")" "$(med "${T[p-incr]}")") |
| restore (s) | $(med "${T[p-restore]}") | $(med "${T[c-restore]}") | $(ratio "$(med "${T[c-restore]}")" "$(med "${T[p-restore]}")") |
| delta restore, nothing changed (s) | $(med "${T[p-delta]}") | $(med "${T[c-delta]}") | $(ratio "$(med "${T[c-delta]}")" "$(med "${T[p-delta]}")") |
| WAL archived (segments/s) | $(med "${T[pgbackrest.wal]}") | $(med "${T[coffer.wal]}") | $(ratio "$(med "${T[pgbackrest.wal]}")" "$(med "${T[coffer.wal]}")") (time) |
| full backup peak memory (MiB) | $((${T[p-full.mem]} / 1024)) | $((${T[c-full.mem]} / 1024)) | |
| repository size (MiB) | $(du -sm $W/pgbr-repo | cut -f1) | $(du -sm $W/coffer-repo | cut -f1) | |
EOF
as_pg $BIN/pg_ctl -D $W/data -m fast stop >/dev/null
