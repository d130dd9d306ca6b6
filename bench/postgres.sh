#!/usr/bin/env bash
# Benchmark logical PostgreSQL backups, side by side in one run: the pg_dump floor, today's
# seed pipeline (pg_dump | gzip | gpg), restic reading a dump on stdin, and coffer --postgres.
#
#   bench/postgres.sh [SCALE]     (default 60; SCALE can also be given in the environment)
#
#   needs restic, gnupg, GNU time and PostgreSQL 15 with pgbench:
#     apt-get install restic gnupg time postgresql-contrib
#
# Environment:
#   SCALE=60          pgbench scale; the database is pgbench -i -s SCALE (≈ 15 MiB per unit) plus
#                     SCALE × 10000 rows of text/JSON in `events` (≈ 4.4 MiB per unit): 60 gives
#                     ≈ 1.1 GiB, the size the numbers in docs/BENCHMARKS.md are taken at
#   EVENTS_ROWS       rows in `events` instead of SCALE × 10000 (issue 10's database: SCALE=30
#                     EVENTS_ROWS=1500000, pgbench plus a 1.5M-row JSON table)
#   RUNS=3            every measurement is run RUNS times; the table shows the median time and
#                     the largest peak memory
#   BENCH_DIR         work directory (default /tmp/coffer-pgbench); must be reachable by the
#                     `postgres` OS user when run as root. The generated cluster is kept there
#                     and reused by later runs with the same SCALE (marker pg/.done-SCALE-EVENTS_ROWS)
#   COFFER            coffer binary (default target/release/coffer, built if missing)
#   SKIP_COFFER=1     leave out every coffer step (and the build): for trying the script on a
#                     machine whose coffer has no --postgres yet
#   COMPRESSION       zstd level for coffer's repositories (coffer init --compression; default:
#                     coffer's own default, 3)
#   RESTORE_JOBS      restore variants to measure (default "1 2": plain, then --jobs 2 for both
#                     pg_restore and coffer); "1" skips the parallel restores
#
# The script starts its own throwaway PostgreSQL 15 cluster (as the `postgres` user when run as
# root) on a free TCP port of 127.0.0.1, with scram-sha-256 password authentication for every
# connection and shared_buffers = 256MB, and stops it on exit. Every client connects over TCP
# with PGPASSWORD, so the password path is exercised; no password is ever on a command line.
#
# Measured, in this order within each run so that background load hits every tool alike:
#   floor    pg_dump -Fc -Z0 bench > /dev/null
#   seed     pg_dump bench | gzip | gpg --symmetric -o FILE     (what the runbooks do today)
#   restic   pg_dump -Fc -Z0 bench | restic backup --stdin      (into a fresh repository)
#   coffer   coffer backup --postgres URL --json                 (into a fresh repository; the
#            default --dump-jobs 2: pgbench_accounts' data in a stream of its own)
#   coffer2  the same again into the same repository, nothing changed: time and new bytes as a
#            percentage of the snapshot size
#   coffer1  coffer backup --postgres URL --dump-jobs 1          (one stream, into a fresh
#            repository: what coffer did before split dumps)
#   restore  pg_restore -d restored_N FILE (FILE made once with pg_dump -Fc, default compression)
#            versus coffer restore latest --to-postgres URL/restored_N, into a new, empty
#            database each time (dropped afterwards); then both again with --jobs 2
# Time is wall time and memory is GNU time's %M: for a pipeline that is the peak resident set of
# its largest single process, not the sum. Caches are warm (the database is dumped once first).
# The first run checks that every restored database has the same rows as `bench`.
# Prints a Markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-${SCALE:-60}}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-/tmp/coffer-pgbench}
COFFER=${COFFER:-$PWD/target/release/coffer}
SKIP_COFFER=${SKIP_COFFER:-0}
RESTORE_JOBS=${RESTORE_JOBS:-1 2}
PGBIN=/usr/lib/postgresql/15/bin
TIME=/usr/bin/time
EVENTS_ROWS=${EVENTS_ROWS:-$((SCALE * 10000))}

case $SCALE in '' | *[!0-9]* | 0) echo "SCALE must be a positive integer, not '$SCALE'" >&2; exit 1 ;; esac
missing=()
command -v restic >/dev/null || missing+=(restic)
command -v gpg >/dev/null || missing+=(gpg)
[ -x $TIME ] || missing+=("GNU time")
[ -x $PGBIN/pgbench ] || missing+=(pgbench)
[ -x $PGBIN/initdb ] || missing+=("PostgreSQL 15 ($PGBIN)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (apt-get install restic gnupg time postgresql-contrib)" >&2
  exit 1
fi
if [ "$SKIP_COFFER" != 1 ]; then
  [ -x "$COFFER" ] || cargo build --release
fi
[ "$SCALE" -ge 60 ] || echo "note: SCALE=$SCALE makes a database under 1 GiB: fine for a try, not for docs/BENCHMARKS.md" >&2

# Client tools come straight from $PGBIN (no Debian wrapper), for us and for coffer's pg_dump.
export PATH="$PGBIN:$PATH"
unset PGDATABASE PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGPASSFILE COFFER_REPO COFFER_PASSWORD_FILE
# as_pg CMD... : run a server command as the postgres OS user when we are root
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$WORK"
chmod 755 "$WORK"
PGROOT=$WORK/pg
PGDATA=$PGROOT/data
PGLOG=$PGROOT/server.log
PWFILE=$PGROOT/superuser.pw
RES=$WORK/results

# Stop a server left running by an interrupted run before touching the cluster.
if [ -f "$PGDATA/postmaster.pid" ] && as_pg pg_ctl -D "$PGDATA" status >/dev/null 2>&1; then
  as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

if [ ! -f "$PGROOT/.done-$SCALE-$EVENTS_ROWS" ]; then
  rm -rf "$PGROOT"
  mkdir -p "$PGROOT/run"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$PGROOT"
  as_pg test -w "$PGROOT" || {
    echo "the postgres user cannot write $PGROOT: choose a BENCH_DIR it can reach (e.g. under /tmp)" >&2
    exit 1
  }
  python3 -c 'import secrets; print(secrets.token_hex(16))' | as_pg tee "$PWFILE" >/dev/null
  as_pg chmod 600 "$PWFILE"
  as_pg initdb -D "$PGDATA" -U postgres --auth=scram-sha-256 --pwfile="$PWFILE" \
    -E UTF8 --locale=C >"$PGROOT/initdb.log"
  cat <<EOF | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
# bench/postgres.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT/run'
shared_buffers = 256MB
max_wal_size = 2GB
EOF
  GENERATE=1
else
  GENERATE=0
fi

cleanup() {
  set +e
  if [ -n "${PG_STARTED:-}" ]; then
    for db in $(psql -d postgres -XAtq -c "SELECT datname FROM pg_database WHERE datname LIKE 'restored\_%'" 2>/dev/null); do
      psql -d postgres -Xq -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null 2>&1
    done
    as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  [ -d "$WORK/gnupg" ] && GNUPGHOME=$WORK/gnupg gpgconf --kill gpg-agent 2>/dev/null
  rm -rf "$WORK/repo-restic" "$WORK/repo-coffer" "$WORK/repo-coffer1" "$WORK/restic-cache" "$WORK/gnupg" \
    "$WORK/seed.sql.gz.gpg" "$WORK/bench.dump" "$WORK/pass" "$WORK"/*.json "$WORK"/cmd.* "$RES"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_pg pg_ctl -D "$PGDATA" -l "$PGLOG" -o "-p $PORT" -w start >/dev/null || { tail -20 "$PGLOG" >&2; exit 1; }
PG_STARTED=1
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
PGPASSWORD=$(cat "$PWFILE")
export PGPASSWORD
URL=postgresql://postgres@127.0.0.1:$PORT

if [ "$GENERATE" = 1 ]; then
  echo "generating the bench database (pgbench scale $SCALE + $EVENTS_ROWS events rows) in $PGDATA" >&2
  createdb bench
  pgbench -i -q -s "$SCALE" bench >"$PGROOT/pgbench-init.log" 2>&1
  psql -d bench -Xq -v ON_ERROR_STOP=1 -v rows="$EVENTS_ROWS" <<'SQL'
CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb, note text);
INSERT INTO events
SELECT i,
       jsonb_build_object(
         'user', 'user_' || (i % 5000),
         'kind', (ARRAY['click', 'view', 'purchase', 'signup', 'logout'])[1 + i % 5],
         'ts', to_char(timestamp '2024-01-01' + i * interval '7 seconds', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
         'session', md5(i::text),
         'amount', round((i % 100000) / 100.0, 2),
         'tags', jsonb_build_array('t' || (i % 7), 't' || (i % 11), 't' || (i % 13)),
         'agent', 'Mozilla/5.0 (X11; Linux x86_64) bench-client/' || (i % 17)),
       repeat(md5((i * 7)::text) || ' ', 3) || 'order ' || i || ' shipped to warehouse ' || (i % 97)
FROM generate_series(1, :rows) AS i;
VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
SQL
  touch "$PGROOT/.done-$SCALE-$EVENTS_ROWS"
fi
# Leftovers of an interrupted run
for db in $(psql -d postgres -XAtq -c "SELECT datname FROM pg_database WHERE datname LIKE 'restored\_%'"); do
  psql -d postgres -Xq -c "DROP DATABASE \"$db\" WITH (FORCE)" >/dev/null
done
DB_BYTES=$(psql -d bench -XAtq -c "SELECT pg_database_size('bench')")
PG_VERSION=$(psql -d bench -XAtq -c "SHOW server_version" | cut -d' ' -f1)

# fingerprint DB : row count and hash sum of every table, and the number of indexes
fingerprint() {
  psql -d "$1" -XAtq -v ON_ERROR_STOP=1 <<'SQL'
SELECT * FROM (
SELECT 'accounts', count(*), sum(hashtext(t::text)::bigint) FROM pgbench_accounts t
UNION ALL SELECT 'branches', count(*), sum(hashtext(t::text)::bigint) FROM pgbench_branches t
UNION ALL SELECT 'tellers', count(*), sum(hashtext(t::text)::bigint) FROM pgbench_tellers t
UNION ALL SELECT 'history', count(*), sum(hashtext(t::text)::bigint) FROM pgbench_history t
UNION ALL SELECT 'events', count(*), sum(hashtext(t::text)::bigint) FROM events t
UNION ALL SELECT 'indexes', count(*), NULL FROM pg_indexes WHERE schemaname = 'public'
) f ORDER BY 1;  -- the order of UNION ALL's rows is not guaranteed (parallel append)
SQL
}
echo "warming up (one pg_dump) and making the pg_restore source (pg_dump -Fc)" >&2
FP_BENCH=$(fingerprint bench)
pg_dump -Fc -Z0 bench >/dev/null
pg_dump -Fc -f "$WORK/bench.dump" bench
DUMP_FILE_BYTES=$(stat -c %s "$WORK/bench.dump")

export RESTIC_PASSWORD=bench COFFER_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
export GNUPGHOME=$WORK/gnupg
rm -rf "$GNUPGHOME"; mkdir -m 700 "$GNUPGHOME"
echo bench >"$WORK/pass"
export PASSFILE=$WORK/pass SEED_OUT=$WORK/seed.sql.gz.gpg REPO_RESTIC=$WORK/repo-restic
rm -rf "$RES"; mkdir -p "$RES"

# run KEY CMD... : run CMD under GNU time (its stdout to $OUT, default /dev/null) and append
# "seconds maxrss_kib" to $RES/KEY; stop with the command's error output if it fails
run() {
  local key=$1; shift
  if ! $TIME -o "$WORK/cmd.time" -f '%e %M' "$@" >"${OUT:-/dev/null}" 2>"$WORK/cmd.err"; then
    echo "failed: $*" >&2; cat "$WORK/cmd.err" >&2; exit 1
  fi
  tail -1 "$WORK/cmd.time" >>"$RES/$key"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
N=0
# restore_into TOOL JOBS RUN : restore into a new database restored_N with TOOL, check it on run 1
restore_into() {
  local tool=$1 jobs=$2 r=$3 db jobarg=()
  N=$((N + 1)); db=restored_$N
  [ "$jobs" = 1 ] || jobarg=(--jobs "$jobs")
  createdb "$db"
  if [ "$tool" = pg_restore ]; then
    run "pg_restore.j$jobs" pg_restore "${jobarg[@]}" -d "$db" "$WORK/bench.dump"
  else
    run "coffer_restore.j$jobs" "$COFFER" restore latest --to-postgres "$URL/$db" --yes --no-safety-backup "${jobarg[@]}"
  fi
  if [ "$r" = 1 ] && [ "$(fingerprint "$db")" != "$FP_BENCH" ]; then
    echo "$tool --jobs $jobs restored different data into $db:" >&2
    diff <(echo "$FP_BENCH") <(fingerprint "$db") >&2; exit 1
  fi
  psql -d postgres -Xq -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
}

declare -A S
SECOND_PCT=- SECOND_NEW=- SECOND_SIZE=-
for r in $(seq "$RUNS"); do
  echo "run $r of $RUNS" >&2
  run floor pg_dump -Fc -Z0 bench

  rm -f "$SEED_OUT"
  # shellcheck disable=SC2016  # expanded by the inner shell, from the environment
  run seed bash -o pipefail -c 'pg_dump bench | gzip | gpg --batch --yes --pinentry-mode loopback --passphrase-file "$PASSFILE" --symmetric -o "$SEED_OUT"'
  S[seed]=$(stat -c %s "$SEED_OUT")

  rm -rf "$REPO_RESTIC" "$RESTIC_CACHE_DIR"
  restic -q init -r "$REPO_RESTIC" >/dev/null
  # shellcheck disable=SC2016
  run restic bash -o pipefail -c 'pg_dump -Fc -Z0 bench | restic -q -r "$REPO_RESTIC" backup --stdin --stdin-filename bench.dump'
  S[restic]=$(du -sb "$REPO_RESTIC" | cut -f1)

  if [ "$SKIP_COFFER" != 1 ]; then
    export COFFER_REPO=$WORK/repo-coffer
    rm -rf "$COFFER_REPO"
    "$COFFER" -q init ${COMPRESSION:+--compression "$COMPRESSION"}
    OUT=$WORK/first.json run coffer "$COFFER" backup --postgres "$URL/bench" --json
    S[coffer]=$(du -sb "$COFFER_REPO" | cut -f1)
    OUT=$WORK/second.json run coffer2 "$COFFER" backup --postgres "$URL/bench" --json
    "$COFFER" snapshots --json >"$WORK/snapshots.json"
    # new bytes of the second backup, the size of its snapshot, and their ratio in percent
    read -r new size pct < <(python3 - "$WORK/first.json" "$WORK/second.json" "$WORK/snapshots.json" <<'PY'
import json, sys
first, second = (json.load(open(p)) for p in sys.argv[1:3])
snaps = {s["id"]: s for s in json.load(open(sys.argv[3]))}
assert first["id"] in snaps and second["id"] in snaps and len(snaps) == 2, "expected exactly the two snapshots"
new, size = second["summary"]["bytes_added"], snaps[second["id"]]["size"]
print(new, size, f"{100 * new / size:.2f}")
PY
)
    # keep the worst run
    if [ "$SECOND_PCT" = - ] || awk -v a="$pct" -v b="$SECOND_PCT" 'BEGIN { exit !(a > b) }'; then
      SECOND_PCT=$pct SECOND_NEW=$new SECOND_SIZE=$size
    fi
    # one stream, into a repository of its own (restores below use the split snapshot)
    rm -rf "$WORK/repo-coffer1"
    COFFER_REPO=$WORK/repo-coffer1 "$COFFER" -q init ${COMPRESSION:+--compression "$COMPRESSION"}
    COFFER_REPO=$WORK/repo-coffer1 run coffer1 "$COFFER" backup --postgres "$URL/bench" --dump-jobs 1
    rm -rf "$WORK/repo-coffer1"
  fi

  for j in $RESTORE_JOBS; do
    restore_into pg_restore "$j" "$r"
    [ "$SKIP_COFFER" = 1 ] || restore_into coffer "$j" "$r"
  done
done

declare -A T M
for f in "$RES"/*; do
  key=${f##*/}
  T[$key]=$(cut -d' ' -f1 "$f" | median)
  M[$key]=$(( $(cut -d' ' -f2 "$f" | sort -n | tail -1) / 1024 ))
done
# v KEY / m KEY / s KEY: time, peak memory in MiB, size in bytes, or "-" when not measured
v() { echo "${T[$1]:--}"; }
m() { echo "${M[$1]:--}"; }
s() { echo "${S[$1]:--}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
# check A OP B LABEL: "LABEL ✓" or "LABEL ✗", or just LABEL when A or B was not measured
check() {
  if [ "$1" = - ] || [ "$3" = - ]; then echo "$4"
  elif awk -v a="$1" -v b="$3" "BEGIN { exit !(a $2 b) }"; then echo "$4 ✓"
  else echo "$4 ✗"; fi
}
mib() { awk -v b="$1" 'BEGIN { if (b == "-") print "-"; else printf "%.0f MiB", b / 1048576 }'; }
scaled() { awk -v a="$1" -v f="$2" 'BEGIN { if (a == "-") print "-"; else print a * f }'; }

c=$(v coffer)
first_target="$(check "$c" '<=' "$(scaled "$(v floor)" 1.1)" '≤ 1.1× floor'); $(check "$c" '<' "$(v restic)" '< restic'); $(check "$c" '<=' "$(scaled "$(v seed)" 0.5)" '≤ 0.5× seed')"
if [ "$SECOND_PCT" = - ]; then
  second_new=- second_target='< 2 %'
else
  second_new="$(mib "$SECOND_NEW") of $(mib "$SECOND_SIZE") ($SECOND_PCT %)"
  second_target=$(check "$SECOND_PCT" '<' 2 '< 2 %')
fi

echo
echo "Database: bench, $(mib "$DB_BYTES") (pg_database_size): pgbench scale $SCALE + $EVENTS_ROWS rows of text/JSON in events;" \
  "PostgreSQL $PG_VERSION, shared_buffers 256MB, scram-sha-256 over TCP"
echo "$(nproc) cores, runs: $RUNS (median time, max RSS of the largest process)"
if [ "$SKIP_COFFER" = 1 ]; then echo "coffer: skipped (SKIP_COFFER=1)"; else echo "coffer $("$COFFER" version | cut -d' ' -f2), zstd level ${COMPRESSION:-3 (default)}"; fi
echo "$(restic version | cut -d' ' -f1-2), $(gpg --version | head -1), $(gzip --version | head -1)"
echo
echo "- floor: \`pg_dump -Fc -Z0 bench > /dev/null\`; for restores \`pg_restore -d restored_N\` from a \`pg_dump -Fc\` file"
echo "- seed: \`pg_dump bench | gzip | gpg --symmetric\` to a file"
echo "- restic: \`pg_dump -Fc -Z0 bench | restic backup --stdin\` into a new repository"
echo "- coffer: \`coffer backup --postgres\` into a new repository; \`coffer restore --to-postgres\`"
echo
echo "| measurement | floor | seed | restic | coffer | coffer / floor | coffer / restic | coffer / seed | target |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| backup, time (s) | $(v floor) | $(v seed) | $(v restic) | $c | $(ratio "$c" "$(v floor)") | $(ratio "$c" "$(v restic)") | $(ratio "$c" "$(v seed)") | $first_target |"
echo "| backup, one stream (\`--dump-jobs 1\`), time (s) | $(v floor) | $(v seed) | $(v restic) | $(v coffer1) | $(ratio "$(v coffer1)" "$(v floor)") | $(ratio "$(v coffer1)" "$(v restic)") | $(ratio "$(v coffer1)" "$(v seed)") | |"
echo "| backup, peak memory (MiB) | $(m floor) | $(m seed) | $(m restic) | $(m coffer) | $(ratio "$(m coffer)" "$(m floor)") | $(ratio "$(m coffer)" "$(m restic)") | $(ratio "$(m coffer)" "$(m seed)") | |"
echo "| second backup, nothing changed, time (s) | $(v floor) | - | - | $(v coffer2) | $(ratio "$(v coffer2)" "$(v floor)") | - | - | |"
echo "| second backup, new data | - | - | - | $second_new | - | - | - | $second_target |"
for j in $RESTORE_JOBS; do
  label=restore; [ "$j" = 1 ] || label="restore --jobs $j"
  echo "| $label, time (s) | $(v "pg_restore.j$j") | - | - | $(v "coffer_restore.j$j") | $(ratio "$(v "coffer_restore.j$j")" "$(v "pg_restore.j$j")") | - | - | |"
  echo "| $label, peak memory (MiB) | $(m "pg_restore.j$j") | - | - | $(m "coffer_restore.j$j") | $(ratio "$(m "coffer_restore.j$j")" "$(m "pg_restore.j$j")") | - | - | |"
done
echo "| stored size | $(mib "$DUMP_FILE_BYTES") (-Fc file) | $(mib "$(s seed)") | $(mib "$(s restic)") | $(mib "$(s coffer)") | $(ratio "$(s coffer)" "$DUMP_FILE_BYTES") | $(ratio "$(s coffer)" "$(s restic)") | $(ratio "$(s coffer)" "$(s seed)") | |"
