#!/bin/bash
# What a physical restore drill costs above the restore it performs. A pgbench cluster (scale
# SCALE) archives its WAL through `coffer wal-push`; one base backup is taken, then more WAL is
# written on top (pgbench -t, so that recovery has work to do). Then, RUNS times each,
# alternating: the bare restore (`coffer restore latest --pgdata` into an empty directory,
# PostgreSQL started on it, recovery to the end of the archive until it promotes) and
# `coffer drill` of the same snapshot (the same restore, a scratch server, recovery and
# promotion, one SQL check). Prints each wall time.
#   usage: bench/drill-physical.sh [SCALE=20] [RUNS=3]   (root; PostgreSQL 15)
set -e
S=${1:-20}; RUNS=${2:-3}; W=${BENCH_DIR:-/tmp/coffer-physdrill}
cd "$(dirname "$0")/.."
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
[ "$(id -u)" = 0 ] || { echo "run as root (the clusters run as the postgres user)" >&2; exit 1; }
BIN=/usr/lib/postgresql/15/bin
PORT=5491; BARE_PORT=5492
as_pg() { runuser -u postgres -- env PGHOST=$W PGUSER=postgres COFFER_REPO=$W/repo \
  COFFER_PASSWORD_FILE=$W/pw "$@"; }
for d in $W/data $W/bare; do as_pg $BIN/pg_ctl -D $d -m immediate stop >/dev/null 2>&1 || true; done
rm -rf $W; mkdir -p $W/tmp; chmod 755 $W; chmod 1777 $W/tmp
cp "$COFFER" $W/coffer
echo "physical drill bench" > $W/pw
chown -R postgres:postgres $W; chmod 600 $W/pw
as_pg $W/coffer init -q
as_pg $BIN/initdb -N -U postgres -D $W/data >/dev/null
cat >> $W/data/postgresql.conf <<CONF
port = $PORT
unix_socket_directories = '$W'
listen_addresses = ''
archive_mode = on
archive_command = '$W/coffer wal-push -q %p'
max_wal_size = 4GB
CONF
as_pg $BIN/pg_ctl -D $W/data -l $W/postgres.log -w start >/dev/null
as_pg $BIN/pgbench -p $PORT -q -i -s "$S" postgres >/dev/null 2>&1
cat > $W/coffer.toml <<CONF
repository = "$W/repo"
password_file = "$W/pw"
[sources.phys]
type = "postgres"
mode = "physical"
url = "host=$W port=$PORT user=postgres dbname=postgres"
pgdata = "$W/data"
drill = { checks = ["select count(*) > 0 from pgbench_accounts"] }
CONF
chown postgres:postgres $W/coffer.toml
as_pg $W/coffer --config $W/coffer.toml -q backup --source phys
# WAL after the base backup: recovery replays it in both cases.
as_pg $BIN/pgbench -p $PORT -n -t 20000 postgres >/dev/null 2>&1
as_pg $BIN/psql -p $PORT -qAtXc "select pg_switch_wal()" postgres >/dev/null
while ls $W/data/pg_wal/archive_status/ | grep -q '\.ready$'; do sleep 0.2; done
size=$(as_pg $BIN/psql -p $PORT -qAtXc "select pg_size_pretty(pg_database_size('postgres'))" postgres)
echo "pgbench scale $S ($size), $(ls $W/data/pg_wal | grep -c '^0000') WAL segments in pg_wal"

t() { local t0=$(date +%s.%N); "$@" >/dev/null 2>$W/err || { cat $W/err; exit 1; }; echo "$(date +%s.%N) - $t0" | bc; }
bare() {
  rm -rf $W/bare; install -d -m 700 -o postgres -g postgres $W/bare
  as_pg $W/coffer --config $W/coffer.toml -q restore latest --pgdata $W/bare
  cat >> $W/bare/postgresql.auto.conf <<CONF
port = $BARE_PORT
archive_mode = off
CONF
  as_pg $BIN/pg_ctl -D $W/bare -l $W/bare.log -w -t 3600 start
  until [ "$(as_pg $BIN/psql -p $BARE_PORT -qAtXc 'select pg_is_in_recovery()' postgres 2>/dev/null)" = f ]; do
    sleep 0.1
  done
  as_pg $BIN/psql -p $BARE_PORT -qAtXc "select count(*) > 0 from pgbench_accounts" postgres
  as_pg $BIN/pg_ctl -D $W/bare -m immediate stop
}
for i in $(seq "$RUNS"); do
  sync
  if [ $((i % 2)) = 1 ]; then
    r=$(t bare); sync
    d=$(t env TMPDIR=$W/tmp $W/coffer --config $W/coffer.toml -q drill --source phys)
  else
    d=$(t env TMPDIR=$W/tmp $W/coffer --config $W/coffer.toml -q drill --source phys); sync
    r=$(t bare)
  fi
  echo "run $i: bare restore and recovery ${r} s; drill ${d} s ($(echo "scale=2; $d / $r" | bc)x)"
done
$W/coffer --config $W/coffer.toml drills | tail -n +2 | awk '{print "  recorded RTO", $6}' | head -3
$W/coffer --config $W/coffer.toml drill --source phys 2>&1 | grep -E '^ +[0-9.]+s' || true
as_pg $BIN/pg_ctl -D $W/data -m fast stop >/dev/null
