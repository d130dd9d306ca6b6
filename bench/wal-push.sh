#!/bin/bash
# Archive throughput: build a backlog of ready segments with archiving paused, then let
# coffer wal-push -j J drain it and time it.  usage: bench/wal-push.sh [JOBS=4] [PGBENCH_SCALE=60]   (root; PostgreSQL 15 with pgbench)
set -e
J=${1:-4}; S=${2:-60}; W=${BENCH_DIR:-/tmp/coffer-walbench}
cd "$(dirname "$0")/.."
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
[ "$(id -u)" = 0 ] || { echo "run as root (the cluster runs as the postgres user)" >&2; exit 1; }
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $W/data -m immediate stop >/dev/null 2>&1 || true
rm -rf $W; mkdir -p $W; chmod 755 $W
echo "archive secret" > $W/pw
COFFER_REPO=$W/repo COFFER_PASSWORD_FILE=$W/pw $COFFER init -q
chown -R postgres:postgres $W
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -N -U postgres -D $W/data >/dev/null 2>&1
cat >> $W/data/postgresql.conf <<CONF
port = 5477
unix_socket_directories = '$W'
archive_mode = on
archive_command = '/bin/false'
max_wal_size = 8GB
shared_buffers = 256MB
CONF
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $W/data -l $W/log -w start >/dev/null
export PGHOST=$W PGPORT=5477 PGUSER=postgres
t0=$(date +%s.%N)
pgbench -q -i -s $S postgres >/dev/null 2>&1
psql -qAtc "select pg_switch_wal()" postgres >/dev/null
t1=$(date +%s.%N)
n=$(ls $W/data/pg_wal/archive_status/ | grep -c ready)
echo "load: $n segments of WAL in $(echo "$t1 - $t0" | bc) s ($(echo "scale=1; $n / ($t1 - $t0)" | bc) seg/s generated)"
psql -qAtc "alter system set archive_command = 'COFFER_REPO=$W/repo COFFER_PASSWORD_FILE=$W/pw $COFFER wal-push -j $J %p'" postgres
t0=$(date +%s.%N)
psql -qAtc "select pg_reload_conf()" postgres >/dev/null
while [ "$(ls $W/data/pg_wal/archive_status/ | grep -c ready || true)" != 0 ]; do sleep 0.05; done
t1=$(date +%s.%N)
echo "jobs=$J: archived $n segments in $(echo "$t1 - $t0" | bc) s = $(echo "scale=1; $n / ($t1 - $t0)" | bc) seg/s; repo $(du -sm $W/repo | cut -f1) MiB"
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D $W/data -m fast stop >/dev/null
