#!/bin/bash
# What a restore drill costs above the restore it performs. A pgbench database (scale SCALE) is
# backed up logically once; then, RUNS times each, alternating: the bare restore, `coffer restore
# latest --to-postgres` into a new database on the same (running) server with -j 2, and `coffer
# drill` (a scratch cluster started, the same restore with 2 jobs, the row counts, one SQL check;
# then with amcheck too). Prints each wall time.   usage: bench/drill.sh [SCALE=20] [RUNS=3]  (root)
set -e
S=${1:-20}; RUNS=${2:-3}; W=${BENCH_DIR:-/tmp/coffer-drillbench}
cd "$(dirname "$0")/.."
COFFER=${COFFER:-$PWD/target/release/coffer}
[ -x "$COFFER" ] || cargo build --release
[ "$(id -u)" = 0 ] || { echo "run as root (the clusters run as the postgres user)" >&2; exit 1; }
BIN=/usr/lib/postgresql/15/bin
runuser -u postgres -- $BIN/pg_ctl -D $W/data -m immediate stop >/dev/null 2>&1 || true
rm -rf $W; mkdir -p $W; chmod 755 $W; chown postgres $W
runuser -u postgres -- $BIN/initdb -N -U postgres -D $W/data >/dev/null
cat >> $W/data/postgresql.conf <<CONF
port = 5478
unix_socket_directories = '$W'
listen_addresses = ''
CONF
runuser -u postgres -- $BIN/pg_ctl -D $W/data -l $W/log -w start >/dev/null
export PGHOST=$W PGPORT=5478 PGUSER=postgres COFFER_PASSWORD=drill-bench
psql -qAtc "create database bench" postgres
pgbench -q -i -s $S bench >/dev/null 2>&1
mkdir -p $W/tmp && chmod 1777 $W/tmp
cat > $W/coffer.toml <<CONF
repository = "$W/repo"
[sources.db]
type = "postgres"
url = "host=$W port=5478 user=postgres dbname=bench"
drill = { checks = ["select count(*) > 0 from pgbench_accounts"] }
CONF
"$COFFER" -q -r $W/repo init
"$COFFER" --config $W/coffer.toml -q backup --source db
size=$(psql -qAtc "select pg_size_pretty(pg_database_size('bench'))" postgres)
echo "pgbench scale $S ($size)"
t() { local t0=$(date +%s.%N); "$@" >/dev/null 2>$W/err || { cat $W/err; exit 1; }; echo "$(date +%s.%N) - $t0" | bc; }
for i in $(seq $RUNS); do
  r=$(t "$COFFER" --config $W/coffer.toml -q restore latest -j 2 --to-postgres "host=$W port=5478 user=postgres dbname=r$i")
  psql -qAtc "drop database r$i" postgres
  d=$(t env TMPDIR=$W/tmp "$COFFER" --config $W/coffer.toml -q drill --source db)
  sed -i 's/^drill = .*/drill = { checks = ["select count(*) > 0 from pgbench_accounts"], amcheck = true }/' $W/coffer.toml
  a=$(t env TMPDIR=$W/tmp "$COFFER" --config $W/coffer.toml -q drill --source db)
  sed -i 's/, amcheck = true//' $W/coffer.toml
  echo "run $i: bare restore ${r} s; drill ${d} s ($(echo "scale=2; $d / $r" | bc)x); drill with amcheck ${a} s"
done
"$COFFER" --config $W/coffer.toml drills | tail -n +2 | awk '{print "  recorded RTO", $6}' | head -3
runuser -u postgres -- $BIN/pg_ctl -D $W/data -m fast stop >/dev/null
