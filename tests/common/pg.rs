//! A throwaway PostgreSQL 15 cluster for integration tests, ways to compare two databases
//! (schema and data), and a schema fixture with the objects that dumps and restores get
//! wrong.
//!
//! The cluster lives in a temporary directory and listens on 127.0.0.1 on a free port (and on
//! a unix socket inside the directory). The superuser is `postgres` with password
//! [`PG_PASSWORD`]; TCP connections need the password (scram-sha-256), local socket ones do
//! not. PostgreSQL refuses to run as root, so when the tests run as root the server programs
//! run as the `postgres` OS user through `runuser`; client programs (psql, pg_dump, …) always
//! run as the current user over TCP. Dropping the cluster stops the server, also when a test
//! panics.

use super::free_port;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The superuser's name.
pub const PG_USER: &str = "postgres";
/// The superuser's password.
pub const PG_PASSWORD: &str = "pg-secret-pw";
/// The password of the `app_writer` role made by [`PgCluster::ensure_roles`].
pub const APP_WRITER_PASSWORD: &str = "writer-pw";

/// The fixture loaded by [`PgCluster::load_rich_schema`]: schemas `sales` and `inventory`
/// (plus public) with an enum, a domain, a composite type, sequences, identity and serial
/// columns, generated columns, constraints across schemas, indexes, a view, a materialized
/// view, plpgsql triggers, a partitioned table, large objects, comments, grants, a quoted
/// table name and an unlogged table. Needs the roles from [`PgCluster::ensure_roles`].
pub const RICH_SCHEMA_SQL: &str = include_str!("../fixtures/rich_schema.sql");

/// Row counts of the fixture's main tables, for tests that check a restore by size.
pub const RICH_SCHEMA_ORDERS: i64 = 5000;
pub const RICH_SCHEMA_ITEMS: i64 = 1000;

/// The OS user that runs the server when the tests run as root.
const SERVER_OS_USER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    as_root: bool,
    /// The server process: the postmaster itself, or `runuser` around it when root.
    server: Option<Child>,
}

/// Where the PostgreSQL programs are: `COFFER_TEST_PG_BINDIR`, else
/// `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`.
pub fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("COFFER_TEST_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian;
    }
    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => panic!(
            "PostgreSQL 15 not found: set COFFER_TEST_PG_BINDIR, or install postgresql-15 \
             (scripts/test does it on Debian as root)"
        ),
    }
}

/// `name` quoted as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `pg_dump` text output reduced to what describes the database: without comment lines, blank
/// lines and the `\restrict`/`\unrestrict` lines (their key is random on every run since
/// 15.14).
pub fn normalise_dump(dump: &str) -> String {
    let mut out = String::with_capacity(dump.len());
    for line in dump.lines() {
        if line.trim().is_empty()
            || line.starts_with("--")
            || line.starts_with("\\restrict ")
            || line.starts_with("\\unrestrict ")
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl PgCluster {
    /// Start a fresh cluster with the default settings.
    pub fn start() -> PgCluster {
        PgCluster::start_with(&[])
    }

    /// Start a fresh cluster with extra `postgresql.conf` settings, e.g.
    /// `[("archive_mode", "on"), ("archive_command", "…")]`. They are written to
    /// `postgresql.conf` (so they survive [`PgCluster::stop`]/[`PgCluster::restart`]); values
    /// are quoted as needed.
    pub fn start_with(extra_conf: &[(&str, &str)]) -> PgCluster {
        let bindir = pg_bindir();
        assert!(
            bindir.join("postgres").exists(),
            "no postgres in {}",
            bindir.display()
        );
        let as_root = super::as_root();
        let dir = tempfile::Builder::new()
            .prefix("coffer-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let log = dir.path().join("postgres.log");
        for d in [&data, &socket_dir] {
            fs::create_dir(d).unwrap();
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, format!("{PG_PASSWORD}\n")).unwrap();
        if as_root {
            // The server user must reach the directory, own the data and socket directories
            // and read the password file.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o644)).unwrap();
            let (uid, gid) = server_user_ids();
            for d in [&data, &socket_dir] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut pg = PgCluster {
            dir,
            bindir,
            data,
            socket_dir,
            log,
            port: 0,
            as_root,
            server: None,
        };

        let out = pg
            .server_tool("initdb")
            .arg("-N")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                PG_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        fs::remove_file(&pwfile).unwrap();
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let socket = pg.socket_dir.to_str().unwrap();
        append_conf(
            &pg.data,
            &[
                ("listen_addresses", "127.0.0.1"),
                ("unix_socket_directories", socket),
                ("fsync", "off"),
                ("max_connections", "50"),
            ],
            extra_conf,
        );

        pg.launch();
        pg
    }

    /// Start a server on an existing data directory (e.g. one `coffer restore --pgdata` laid
    /// out), with extra settings appended to its `postgresql.conf`. Waits until it accepts
    /// connections (for a recovering server: until recovery ended and it was promoted). The
    /// socket and log live in a new temporary directory.
    pub fn start_on(data: &Path, extra_conf: &[(&str, &str)]) -> PgCluster {
        let as_root = super::as_root();
        let dir = tempfile::Builder::new()
            .prefix("coffer-pg-")
            .tempdir()
            .unwrap();
        let socket_dir = dir.path().join("sock");
        fs::create_dir(&socket_dir).unwrap();
        if as_root {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let (uid, gid) = server_user_ids();
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).unwrap();
        }
        append_conf(
            data,
            &[("unix_socket_directories", socket_dir.to_str().unwrap())],
            extra_conf,
        );
        let mut pg = PgCluster {
            log: dir.path().join("postgres.log"),
            dir,
            bindir: pg_bindir(),
            data: data.to_path_buf(),
            socket_dir,
            port: 0,
            as_root,
            server: None,
        };
        pg.launch();
        pg
    }

    /// Start the server on the data directory and wait until it accepts connections. Picks a
    /// new port when the chosen one was taken in the meantime.
    fn launch(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        for attempt in 0.. {
            let port = free_port();
            let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .unwrap();
            let child = self
                .server_tool("postgres")
                .arg("-D")
                .arg(&self.data)
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start postgres");
            self.port = port;
            self.server = Some(child);

            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                let exited = self.server.as_mut().unwrap().try_wait().unwrap();
                if let Some(status) = exited {
                    self.server = None;
                    let log = self.log();
                    let tail = log.get(log_start as usize..).unwrap_or(&log);
                    if attempt < 5 && tail.contains("could not bind") {
                        break;
                    }
                    panic!("postgres exited with {status} while starting; log:\n{log}");
                }
                if self.is_ready() {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "postgres not ready after {READY_TIMEOUT:?}; log:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.client("pg_isready")
            .args(["-q", "-t", "2", "-d", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stop the server cleanly (fast shutdown: a shutdown checkpoint is written). The data
    /// directory stays; [`PgCluster::restart`] starts the server on it again. Does nothing when
    /// the server is not running.
    pub fn stop(&mut self) {
        if !self.signal_and_wait(libc::SIGINT, Duration::from_secs(60)) {
            panic!("postgres did not stop within 60 s; log:\n{}", self.log());
        }
    }

    /// Start the server again on its data directory (after [`PgCluster::stop`], e.g. once a
    /// test has replaced the data directory's contents or added `recovery.signal`). The port
    /// may change.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Send `sig` to the postmaster and wait up to `grace` for it to exit; past that, kill it.
    /// Returns whether it exited within `grace`.
    fn signal_and_wait(&mut self, sig: libc::c_int, grace: Duration) -> bool {
        let Some(mut child) = self.server.take() else {
            return true;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        let pid = self.postmaster_pid(&mut child);
        if let Some(pid) = pid {
            unsafe { libc::kill(pid, sig) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = pid {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The postmaster's pid: the child itself, or (as root) the pid in `postmaster.pid` when that
    /// process is the child of our `runuser`.
    fn postmaster_pid(&self, child: &mut Child) -> Option<libc::pid_t> {
        if !self.as_root {
            return Some(child.id() as libc::pid_t);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
            {
                if parent_pid(pid) == Some(child.id()) {
                    return Some(pid as libc::pid_t);
                }
            }
            if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A server program (`initdb`, `pg_ctl`, `pg_controldata`, …) from the bindir, run as the
    /// server's OS user: through `runuser -u postgres --` when root. Runs in the cluster's
    /// directory, without the `PG*` environment.
    pub fn server_tool(&self, program: &str) -> Command {
        self.as_server_user(&self.bindir.join(program))
    }

    /// Any program run as the server's OS user (as [`PgCluster::server_tool`] does), e.g. to
    /// check that an `archive_command` works for that user.
    pub fn as_server_user(&self, prog: &Path) -> Command {
        let mut c = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", SERVER_OS_USER, "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        };
        super::clean_pg_env(&mut c);
        c.current_dir(self.dir.path());
        c
    }

    /// A client program (`psql`, `pg_dump`, `pg_restore`, …) from the bindir, run as the
    /// current user, with the connection in the environment: PGHOST, PGPORT, PGUSER and
    /// PGPASSWORD (the superuser over TCP). Other `PG*` variables are removed.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(self.bindir.join(program));
        super::clean_pg_env(&mut c);
        c.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", PG_USER)
            .env("PGPASSWORD", PG_PASSWORD);
        c
    }

    /// Give `path` (recursively) to the server's OS user, e.g. a data directory restored by a
    /// test running as root. Does nothing when not root.
    pub fn give_to_server_user(&self, path: &Path) {
        if !self.as_root {
            return;
        }
        let (uid, gid) = server_user_ids();
        fn walk(p: &Path, uid: u32, gid: u32) {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
            let meta = fs::symlink_metadata(p).unwrap();
            if meta.is_dir() {
                for e in fs::read_dir(p).unwrap() {
                    walk(&e.unwrap().path(), uid, gid);
                }
            }
        }
        walk(path, uid, gid);
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        self.url_as(PG_USER, PG_PASSWORD, db)
    }

    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The temporary directory holding the cluster; tests may put their own files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn run_psql(&self, db: &str, sql: &str, extra: &[&str]) -> Output {
        let mut child = self
            .client("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
            .args(extra)
            .args(["-d", db, "-f", "-"])
            .env("PGTZ", "UTC")
            .env("PGDATESTYLE", "ISO, MDY")
            .env("PGCLIENTENCODING", "UTF8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().unwrap();
        let sql = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Run SQL (one or more statements, psql meta-commands allowed) in `db` as the superuser;
    /// the unaligned, tuples-only output without the last newline, or psql's stderr.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self.run_psql(db, sql, &[]);
        if out.status.success() {
            let s = String::from_utf8_lossy(&out.stdout);
            Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`PgCluster::try_psql`], panicking with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql on {db} failed: {e}\nSQL: {}", excerpt(sql)))
    }

    /// The rows of all results of `sql`, each as its fields' text (NULL as ""), robust to any
    /// character in the values but NUL.
    pub fn rows(&self, db: &str, sql: &str) -> Vec<Vec<String>> {
        let out = self.run_psql(db, sql, &["-F", "\u{1f}", "-0"]);
        assert!(
            out.status.success(),
            "psql on {db} failed: {}\nSQL: {}",
            String::from_utf8_lossy(&out.stderr),
            excerpt(sql)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_terminator('\0')
            .map(|r| r.split('\u{1f}').map(str::to_string).collect())
            .collect()
    }

    pub fn create_db(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    pub fn drop_db(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
        );
    }

    /// Create the cluster-wide roles the fixture grants to, unless they exist: `app_reader`
    /// (NOLOGIN) and `app_writer` (LOGIN, password [`APP_WRITER_PASSWORD`]).
    pub fn ensure_roles(&self) {
        self.psql(
            "postgres",
            &format!(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_reader') THEN
                     CREATE ROLE app_reader NOLOGIN;
                   END IF;
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_writer') THEN
                     CREATE ROLE app_writer LOGIN PASSWORD '{APP_WRITER_PASSWORD}';
                   END IF;
                 END $$;"
            ),
        );
    }

    /// [`PgCluster::ensure_roles`], then [`RICH_SCHEMA_SQL`] into `db` (which must exist).
    pub fn load_rich_schema(&self, db: &str) {
        self.ensure_roles();
        self.psql(db, RICH_SCHEMA_SQL);
    }

    /// `pg_dump --schema-only` of `db`, through [`normalise_dump`].
    pub fn schema_dump(&self, db: &str) -> String {
        let out = self
            .client("pg_dump")
            .args(["--schema-only", "-d", db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump --schema-only {db} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        normalise_dump(&String::from_utf8_lossy(&out.stdout))
    }

    /// The user relations of `db` (outside pg_catalog, information_schema, pg_toast and other
    /// `pg_*` schemas) of the given relkinds: (schema, name, relkind, populated).
    fn relations(&self, db: &str, kinds: &str) -> Vec<(String, String, String, bool)> {
        let sql = format!(
            "SELECT n.nspname, c.relname, c.relkind, c.relispopulated
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = ANY ('{{{kinds}}}'::\"char\"[])
                AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
              ORDER BY 1, 2"
        );
        self.rows(db, &sql)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone(), r[3] == "t"))
            .collect()
    }

    /// A digest of every table's and materialized view's rows (partitions included, the
    /// partitioned parents not), keyed "schema.name": md5 over the rows' text in sorted order.
    /// Also each sequence as "schema.name" → "last_value:is_called", and `large_objects` → md5
    /// over the sorted md5s of all large objects' contents (independent of their OIDs).
    pub fn data_checksums(&self, db: &str) -> BTreeMap<String, String> {
        let mut queries = Vec::new();
        for (schema, name, kind, populated) in self.relations(db, "r,m,S") {
            let key = quote_literal(&format!("{schema}.{name}"));
            let rel = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            queries.push(match kind.as_str() {
                "S" => format!("SELECT {key}, last_value || ':' || is_called FROM {rel}"),
                "m" if !populated => format!("SELECT {key}, 'not populated'"),
                _ => format!(
                    "SELECT {key}, md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) \
                     FROM {rel} AS t"
                ),
            });
        }
        queries.push(
            "SELECT 'large_objects', md5(coalesce(string_agg(h, ',' ORDER BY h), '')) \
             FROM (SELECT md5(lo_get(oid)) AS h FROM pg_largeobject_metadata) AS lo"
                .to_string(),
        );
        self.key_values(db, &queries)
    }

    /// The number of rows of every table and materialized view (as for
    /// [`PgCluster::data_checksums`]), keyed "schema.name".
    pub fn row_counts(&self, db: &str) -> BTreeMap<String, i64> {
        let queries: Vec<String> = self
            .relations(db, "r,m")
            .into_iter()
            .filter(|(_, _, _, populated)| *populated)
            .map(|(schema, name, _, _)| {
                format!(
                    "SELECT {}, count(*) FROM {}.{}",
                    quote_literal(&format!("{schema}.{name}")),
                    quote_ident(&schema),
                    quote_ident(&name)
                )
            })
            .collect();
        self.key_values(db, &queries)
            .into_iter()
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect()
    }

    fn key_values(&self, db: &str, queries: &[String]) -> BTreeMap<String, String> {
        if queries.is_empty() {
            return BTreeMap::new();
        }
        let sql = queries.join(";\n") + ";\n";
        self.rows(db, &sql)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate shutdown: nothing of a throwaway cluster needs to be flushed.
        self.signal_and_wait(libc::SIGQUIT, Duration::from_secs(10));
    }
}

/// Append settings to a data directory's `postgresql.conf`, quoted (later lines win).
fn append_conf(data: &Path, base: &[(&str, &str)], extra: &[(&str, &str)]) {
    let mut conf = String::from("\n# Added by the coffer test harness.\n");
    for (k, v) in base.iter().chain(extra) {
        let v = v.replace('\\', "\\\\").replace('\'', "''");
        conf.push_str(&format!("{k} = '{v}'\n"));
    }
    OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
}

fn server_user_ids() -> (u32, u32) {
    let name = CString::new(SERVER_OS_USER).unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, and there is no `{SERVER_OS_USER}` user to run PostgreSQL as \
         (installing postgresql-15 creates it)"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// The parent of process `pid`, from /proc.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …"; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn excerpt(sql: &str) -> String {
    match sql.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &sql[..i]),
        None => sql.to_string(),
    }
}

/// Client authentication.
impl PgCluster {
    /// Put `lines` at the top of `pg_hba.conf` (the first matching line wins, so they come
    /// before the harness's own) and reload the configuration.
    pub fn prepend_hba(&self, lines: &[&str]) {
        let path = self.data.join("pg_hba.conf");
        let old = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{}\n{old}", lines.join("\n"))).unwrap();
        // New sessions inherit the postmaster's load time: wait until they show the reload.
        let before = self.psql("postgres", "SELECT pg_conf_load_time()");
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT pg_conf_load_time()") == before {
            assert!(
                Instant::now() < deadline,
                "pg_hba.conf not reloaded:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Archiving and recovery (for clusters whose `archive_command` is `coffer wal-push`).
impl PgCluster {
    /// Switch to a new WAL segment and wait until everything up to it is archived.
    pub fn archive_all(&self) {
        let seg = self.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("postgres", "SELECT pg_switch_wal()");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.psql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            if last.as_str() >= seg.as_str() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{seg} not archived (last {last}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start a server on a data directory that `coffer restore --pgdata` laid out, and
    /// wait until recovery has ended (a hot standby accepts connections while it still
    /// recovers, so readiness is not enough).
    pub fn start_recovered(data: &Path, extra_conf: &[(&str, &str)]) -> PgCluster {
        let pg = PgCluster::start_on(data, extra_conf);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.psql("postgres", "SELECT pg_is_in_recovery()") != "f" {
            assert!(
                Instant::now() < deadline,
                "recovery on {} did not end:\n{}",
                data.display(),
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }
}

/// Give `path` (recursively) to the server's OS user when the tests run as root, so that a
/// server running as that user can use it; does nothing otherwise.
pub fn chown_to_server_user(path: &Path) {
    if super::as_root() {
        let st = Command::new("chown")
            .args(["-R", &format!("{SERVER_OS_USER}:{SERVER_OS_USER}")])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// A repository that a cluster archives into through `coffer wal-push %p`: the repository
/// and its passphrase file sit in `holder` (mode 0755) and belong to the server's OS user,
/// which runs wal-push and wal-fetch.
pub struct ArchiveRepo {
    pub holder: tempfile::TempDir,
    pub repo: PathBuf,
    pub pwfile: PathBuf,
}

impl ArchiveRepo {
    /// `coffer init INIT_ARGS…` with the passphrase `secret` in a file, then handed to the
    /// server's OS user.
    pub fn new(secret: &str, init_args: &[&str]) -> ArchiveRepo {
        let holder = tempfile::tempdir().unwrap();
        fs::set_permissions(holder.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let repo = holder.path().join("repo");
        let pwfile = holder.path().join("pw");
        fs::write(&pwfile, secret).unwrap();
        let a = ArchiveRepo {
            holder,
            repo,
            pwfile,
        };
        a.cmd().arg("init").args(init_args).assert().success();
        chown_to_server_user(a.holder.path());
        a
    }

    /// The variables that point coffer at this repository (and a home and cache in the holder).
    pub fn vars(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("COFFER_HOME", self.holder.path().join("coffer-home")),
            ("COFFER_CACHE", self.holder.path().join("coffer-cache")),
            ("COFFER_REPO", self.repo.clone()),
            ("COFFER_PASSWORD_FILE", self.pwfile.clone()),
        ]
    }

    /// `coffer` with this repository and nothing else of ours inherited.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
        super::clean_env(&mut c);
        c.envs(self.vars());
        c
    }

    /// The archive_command that pushes into this repository.
    pub fn archive_command(&self) -> String {
        format!(
            "COFFER_REPO='{}' COFFER_PASSWORD_FILE='{}' '{}' wal-push %p",
            self.repo.display(),
            self.pwfile.display(),
            assert_cmd::cargo::cargo_bin("coffer").display()
        )
    }

    /// A cluster archiving into this repository (`archive_timeout = 0`), with `extra`
    /// settings.
    pub fn start_archiving(&self, extra: &[(&str, &str)]) -> PgCluster {
        let cmd = self.archive_command();
        let mut all = vec![
            ("archive_mode", "on"),
            ("archive_command", cmd.as_str()),
            ("archive_timeout", "0"),
        ];
        all.extend_from_slice(extra);
        PgCluster::start_with(&all)
    }
}

/// A primary repository and an `offsite` one made `--like` it, in one config; a cluster whose
/// archive_command is `coffer --config CONFIG wal-push %p`, with a table `t` of 100 rows; and
/// then, its port known, the config's physical source `db` with `copy_to = ["offsite"]`.
pub struct Offsite {
    pub a: ArchiveRepo,
    pub cfg: PathBuf,
    pub offsite: PathBuf,
    pub pg: PgCluster,
}

impl Offsite {
    /// `extra(holder)` gives more lines for the top level and for `[repositories.offsite]`.
    pub fn start(extra: impl Fn(&Path) -> (String, String)) -> Offsite {
        let a = ArchiveRepo::new("primary secret\n", &["--pack-size", "8"]);
        let holder = a.holder.path();
        let offsite = holder.join("offsite");
        fs::write(holder.join("offsite-pw"), "offsite secret\n").unwrap();
        let cfg = holder.join("coffer.toml");
        let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let (top, in_offsite) = extra(holder);
        let repositories = format!(
            "repository = {}\npassword_file = {}\n{top}\
             [repositories.offsite]\nlocation = {}\npassword_file = {}\n{in_offsite}",
            quote(&a.repo),
            quote(&a.pwfile),
            quote(&offsite),
            quote(&holder.join("offsite-pw")),
        );
        fs::write(&cfg, &repositories).unwrap();
        let mut init = a.cmd();
        init.arg("--config")
            .arg(&cfg)
            .args(["--repo", "offsite", "init", "--like", "primary"]);
        let out = init.output().unwrap();
        assert!(out.status.success(), "{}", super::stderr(&out));
        chown_to_server_user(holder);
        let archive_command = format!(
            "'{}' --config '{}' wal-push %p",
            assert_cmd::cargo::cargo_bin("coffer").display(),
            cfg.display()
        );
        let pg = PgCluster::start_with(&[
            ("archive_mode", "on"),
            ("archive_command", &archive_command),
            ("archive_timeout", "0"),
        ]);
        pg.psql(
            "postgres",
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
        );
        // The source, now that the server's port is known (the file keeps its owner).
        fs::write(
            &cfg,
            format!(
                "{repositories}[sources.db]\ntype = \"postgres\"\nmode = \"physical\"\nurl = {}\n\
                 pgdata = {}\ncopy_to = [\"offsite\"]\n",
                toml::Value::String(pg.url("postgres")),
                quote(pg.data_dir()),
            ),
        )
        .unwrap();
        Offsite {
            a,
            cfg,
            offsite,
            pg,
        }
    }

    /// `coffer --config CONFIG ARGS…` with the primary's passphrase.
    pub fn coffer(&self, args: &[&str]) -> Output {
        let mut c = self.a.cmd();
        c.arg("--config").arg(&self.cfg).args(args);
        c.output().unwrap()
    }
}

/// A fake WAL segment of the smallest size (1 MiB) of cluster `sysid`: zeros after its long
/// page header.
pub fn fake_segment(sysid: u64) -> Vec<u8> {
    let mut seg = vec![0u8; 1 << 20];
    seg[2..4].copy_from_slice(&2u16.to_le_bytes());
    seg[4..8].copy_from_slice(&1u32.to_le_bytes());
    seg[24..32].copy_from_slice(&sysid.to_le_bytes());
    seg[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
    seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
    seg
}
