//! `coffer restore --stack` against a real stack, started by the tests: a PostgreSQL
//! database restored from its dump, a second PostgreSQL cluster archiving its WAL
//! (`coffer wal-push %p`) recovered from a base backup by point-in-time recovery, a Redis
//! server, an uploads tree and a `.env` file. Each test backs the stack up with `coffer
//! backup` (the sources of the config file), breaks it, and brings it back with one
//! command.

mod common;

use common::mariadb::{self, MariaDb};
use common::pg::{chown_to_server_user, pg_bindir, ArchiveRepo, PgCluster, PG_PASSWORD};
use common::redis::{fill_all_types, RedisServer};
use common::{as_root, fingerprint, make_tree, stderr, step};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// The servers and files of one stack, with the config file that declares them.
struct Stack {
    archive: ArchiveRepo,
    db: PgCluster,
    phys: PgCluster,
    redis: RedisServer,
    files: tempfile::TempDir,
    hook_log: PathBuf,
    pg_log: PathBuf,
    conf: PathBuf,
    /// With the command sources: a MariaDB server dumped by mariadb-dump (and reloaded by
    /// the mariadb client), and an SQLite database copied with `.backup`.
    mariadb: Option<MariaDb>,
}

impl Stack {
    /// The servers, started empty; the config file declares them all (see [`Stack::config`]).
    fn new() -> Stack {
        Stack::start(false)
    }

    /// The same with the command sources too.
    fn with_commands() -> Stack {
        Stack::start(true)
    }

    fn start(commands: bool) -> Stack {
        let archive = ArchiveRepo::new("stack secret\n", &["--pack-size", "8"]);
        let phys = archive.start_archiving(&[]);
        let db = PgCluster::start();
        let redis = RedisServer::start();
        let files = tempfile::tempdir().unwrap();
        let hook_log = files.path().join("hooks.log");
        // pg_ctl, run by the hooks as the server's OS user, writes the server's log here.
        let pg_log = archive.holder.path().join("phys-pg_ctl.log");
        fs::write(&pg_log, "").unwrap();
        chown_to_server_user(&pg_log);
        let conf = files.path().join("coffer.toml");
        let s = Stack {
            archive,
            db,
            phys,
            redis,
            files,
            hook_log,
            pg_log,
            conf,
            mariadb: commands.then(MariaDb::start),
        };
        fs::write(&s.conf, s.config("", &[])).unwrap();
        s
    }

    fn uploads(&self) -> PathBuf {
        self.files.path().join("srv/uploads")
    }

    fn env_file(&self) -> PathBuf {
        self.files.path().join("srv/app/.env")
    }

    fn sqlite_db(&self) -> PathBuf {
        self.files.path().join("srv/app/app.db")
    }

    /// Where command outputs without a restore command go (`[stack] restore_dir`).
    fn restore_dir(&self) -> PathBuf {
        self.files.path().join("restored-outputs")
    }

    /// `pg_ctl` of the physical cluster, as a shell command line, run as the server's user.
    fn pg_ctl(&self) -> String {
        let prog = pg_bindir().join("pg_ctl");
        let prefix = if as_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{prefix}{} -D '{}'",
            prog.display(),
            self.phys.data_dir().display()
        )
    }

    /// The config file: every source of the stack, hooks that log and stop/start the
    /// physical cluster with pg_ctl, plus `extra` tables and `before` hook lines.
    fn config(&self, extra: &str, before: &[&str]) -> String {
        let log = self.hook_log.display();
        let pg_ctl = self.pg_ctl();
        let mut before_restore = vec![
            format!("echo before_restore $COFFER_STACK_SOURCES >> '{log}'"),
            format!(
                "if {pg_ctl} status >/dev/null 2>&1; then {pg_ctl} stop -m fast -w && echo stopped phys >> '{log}'; fi"
            ),
        ];
        before_restore.extend(before.iter().map(|s| s.to_string()));
        let after_restore = [
            format!("echo after_restore $COFFER_STATUS $COFFER_RESTORED >> '{log}'"),
            format!(
                "{pg_ctl} start -w -t 120 -l '{}' -o '-p {}' >/dev/null && echo started phys >> '{log}'",
                self.pg_log.display(),
                self.phys.port()
            ),
        ];
        let list = |v: &[String]| {
            let q: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
            format!("[{}]", q.join(", "))
        };
        format!(
            r#"repository = {repo}
password_file = {pw}

[sources.db]
type = "postgres"
url = {db_url}

[sources.phys]
type = "postgres"
mode = "physical"
url = {phys_url}
pgdata = {pgdata}

[sources.cache]
type = "redis"
url = {redis_url}

[sources.uploads]
type = "files"
paths = [{uploads}]

[sources.secrets]
type = "files"
paths = [{env}]
{commands}{extra}
[stack]
restore_order = ["{order}"]
restore_dir = {restore_dir}
before_restore = {before}
after_restore = {after}
"#,
            repo = toml_str(&self.archive.repo.display().to_string()),
            pw = toml_str(&self.archive.pwfile.display().to_string()),
            db_url = toml_str(&self.db.url("app")),
            phys_url = toml_str(&self.phys.url("postgres")),
            pgdata = toml_str(&self.phys.data_dir().display().to_string()),
            redis_url = toml_str(&self.redis.url()),
            uploads = toml_str(&self.uploads().display().to_string()),
            env = toml_str(&self.env_file().display().to_string()),
            commands = self.command_sources(),
            order = self.order().join("\", \""),
            restore_dir = toml_str(&self.restore_dir().display().to_string()),
            before = list(&before_restore),
            after = list(&after_restore),
        )
    }

    /// The sources in restore order.
    fn order(&self) -> Vec<&'static str> {
        let mut v = vec!["phys", "db", "cache", "uploads", "secrets"];
        if self.mariadb.is_some() {
            v.extend(["appdb", "shop"]);
        }
        v
    }

    /// `[sources.appdb]`: `sqlite3 .backup` into `{output_dir}`, restored into restore_dir;
    /// `[sources.shop]`: mariadb-dump on standard output, reloaded by the mariadb client.
    fn command_sources(&self) -> String {
        let Some(m) = &self.mariadb else {
            return String::new();
        };
        let list = |v: Vec<String>| {
            let q: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
            format!("[{}]", q.join(", "))
        };
        let mut dump = vec![mariadb::program("mariadb-dump").display().to_string()];
        dump.extend(m.admin_args());
        dump.extend(
            [
                "--single-transaction",
                "--routines",
                "--triggers",
                "--databases",
                "shop",
            ]
            .map(String::from),
        );
        let mut client = vec![mariadb::program("mariadb").display().to_string()];
        client.extend(m.admin_args());
        format!(
            r#"
[sources.appdb]
type = "command"
command = ["sqlite3", {db}, ".backup {{output_dir}}/app.db"]
output = "dir"

[sources.shop]
type = "command"
command = {dump}
restore = {client}
restore_timeout = "5m"
"#,
            db = toml_str(&self.sqlite_db().display().to_string()),
            dump = list(dump),
            client = list(client),
        )
    }

    /// `coffer --config CONF` (the repository comes from the config file).
    fn cmd_with(&self, conf: &Path) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
        common::clean_env(&mut c);
        common::clean_pg_env(&mut c);
        c.env("COFFER_HOME", self.files.path().join("home"));
        c.arg("--config").arg(conf);
        c
    }

    fn cmd(&self) -> assert_cmd::Command {
        self.cmd_with(&self.conf)
    }

    /// `coffer backup`: every source of the config file.
    fn backup(&self) {
        let out = self.cmd().args(["backup"]).output().unwrap();
        assert!(
            out.status.success(),
            "stack backup failed: {}",
            stderr(&out)
        );
    }

    fn restore_with(&self, conf: &Path, args: &[&str]) -> Output {
        self.cmd_with(conf)
            .args(["restore", "--stack"])
            .args(args)
            .output()
            .unwrap()
    }

    fn restore(&self, args: &[&str]) -> Output {
        self.restore_with(&self.conf, args)
    }

    fn hooks(&self) -> String {
        fs::read_to_string(&self.hook_log).unwrap_or_default()
    }

    fn snapshot_count(&self) -> usize {
        let out = self.cmd().args(["snapshots", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Vec<Value>>(&out.stdout)
            .unwrap()
            .len()
    }

    /// Wait until the physical cluster (started by the after_restore hook) has finished
    /// recovery and was promoted.
    fn wait_recovered(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self
                .phys
                .try_psql("postgres", "SELECT pg_is_in_recovery()")
                .as_deref()
                == Ok("f")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the physical cluster did not finish recovery:\n{}",
                fs::read_to_string(&self.pg_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn markers(&self) -> Vec<String> {
        self.phys
            .rows("postgres", "SELECT note FROM marker ORDER BY id")
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    }

    /// What the data looks like: logical schema and row checksums, the Redis digest, the
    /// files' fingerprints (contents, modes, owners, times).
    fn state(&self) -> State {
        State {
            schema: self.db.schema_dump("app"),
            rows: self.db.data_checksums("app"),
            digest: self.redis.digest(),
            uploads: fingerprint(&self.uploads()),
            env: fingerprint(&self.env_file()),
            shop: self.mariadb.as_ref().map(|m| {
                m.checksums(&["shop.customers", "shop.orders"])
                    + &m.sql("SELECT COUNT(*) FROM shop.orders; SHOW CREATE TABLE shop.orders")
            }),
        }
    }
}

impl Drop for Stack {
    /// A server the after_restore hook started with pg_ctl is not the harness's: stop it.
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} stop -m immediate -w >/dev/null 2>&1",
                self.pg_ctl()
            ))
            .status();
    }
}

#[derive(Debug, PartialEq)]
struct State {
    schema: String,
    rows: BTreeMap<String, String>,
    digest: String,
    uploads: BTreeMap<PathBuf, String>,
    env: BTreeMap<PathBuf, String>,
    shop: Option<String>,
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (scripts/test installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SQLITE_CHECK: &str =
    "PRAGMA integrity_check; SELECT count(*), sum(id), group_concat(note, ',') FROM notes";

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "restore --stack failed ({:?}):\n{}",
        out.status,
        stderr(out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The report's sources by name, in report order.
fn by_name(report: &Value) -> Vec<(String, Value)> {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

/// Data in every source: the rich schema, marker rows, every Redis type, a tree of awkward
/// files and a private `.env`.
fn load(s: &Stack, rich: bool) {
    s.db.ensure_roles();
    s.db.create_db("app");
    if rich {
        s.db.load_rich_schema("app");
    } else {
        s.db.psql(
            "app",
            "CREATE TABLE orders (id int PRIMARY KEY, what text);
             INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 1000) g",
        );
    }
    s.phys.psql(
        "postgres",
        "CREATE TABLE marker (id serial PRIMARY KEY, note text NOT NULL);
         INSERT INTO marker (note) VALUES ('one'), ('two')",
    );
    fill_all_types(&s.redis);
    make_tree(&s.uploads());
    fs::create_dir_all(s.env_file().parent().unwrap()).unwrap();
    fs::write(s.env_file(), "DATABASE_URL=postgresql://app:pw@db/app\n").unwrap();
    fs::set_permissions(s.env_file(), fs::Permissions::from_mode(0o600)).unwrap();
    if let Some(m) = &s.mariadb {
        sqlite(
            &s.sqlite_db(),
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO notes SELECT i, 'note ' || i FROM n;",
        );
        m.sql(
            "CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop; \
             CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(100)) ENGINE=InnoDB; \
             CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL, \
               total DECIMAL(10,2), FOREIGN KEY (customer) REFERENCES shop.customers(id)) ENGINE=InnoDB; \
             INSERT INTO shop.customers SELECT seq, CONCAT('customer ', seq) FROM seq_1_to_500; \
             INSERT INTO shop.orders (customer, total) SELECT 1 + seq % 500, seq / 7 FROM seq_1_to_5000;",
        );
    }
}

/// Nothing of the stack is there: the database dropped, Redis empty, the files and the
/// physical data directory gone.
fn assert_destroyed(s: &Stack) {
    assert!(
        s.db.try_psql("app", "SELECT 1").is_err(),
        "database app is back"
    );
    assert_eq!(s.redis.dbsize(0), 0);
    assert!(!s.uploads().exists() && !s.env_file().exists());
    assert!(!s.phys.data_dir().exists(), "the data directory is back");
    if let Some(m) = &s.mariadb {
        assert!(!m.sql("SHOW DATABASES").contains("shop"));
        assert!(!s.sqlite_db().exists() && !s.restore_dir().exists());
    }
}

#[test]
fn the_whole_stack_comes_back_with_one_command() {
    let mut s = step("start the stack", Stack::with_commands);
    step("load data and back the stack up", || {
        load(&s, true);
        s.backup();
    });
    // Written after the base backup: recovery replays it from the archive.
    s.phys.psql(
        "postgres",
        "INSERT INTO marker (note) VALUES ('after the backup')",
    );
    s.phys.archive_all();
    let before = s.state();
    let markers = s.markers();
    assert_eq!(markers, ["one", "two", "after the backup"]);
    let sqlite_before = sqlite(&s.sqlite_db(), SQLITE_CHECK);
    let snapshots = s.snapshot_count();

    step("destroy everything", || {
        s.db.drop_db("app");
        s.redis.cmd(&["FLUSHALL"]);
        fs::remove_dir_all(s.files.path().join("srv")).unwrap();
        s.phys.stop();
        fs::remove_dir_all(s.phys.data_dir()).unwrap();
        s.mariadb.as_ref().unwrap().sql("DROP DATABASE shop");
        assert_destroyed(&s);
    });

    step(
        "a source without a snapshot fails the plan, nothing is written",
        || {
            let later = s.files.path().join("later");
            let conf = s.files.path().join("with-later.toml");
            fs::write(
                &conf,
                s.config(
                    &format!(
                        "\n[sources.later]\ntype = \"files\"\npaths = [{}]\n",
                        toml_str(&later.display().to_string())
                    ),
                    &[],
                ),
            )
            .unwrap();
            let out = s.restore_with(&conf, &["--yes"]);
            let said = stderr(&out);
            assert_eq!(out.status.code(), Some(6), "{said}");
            assert!(
                said.contains("no snapshot of source \"later\"")
                    && said.contains("coffer backup --source later")
                    && said.contains("nothing was written"),
                "{said}"
            );
            assert_eq!(s.hooks(), "", "hooks ran for a plan that failed");
            assert_destroyed(&s);
            assert!(!later.exists());
        },
    );

    step(
        "--dry-run reads and verifies everything, changes nothing",
        || {
            let r = json(&s.restore(&["--dry-run", "--json"]));
            assert_eq!(r["ok"], true);
            assert_eq!(r["dry_run"], true);
            let names: Vec<String> = by_name(&r).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, s.order());
            for (name, src) in by_name(&r) {
                assert_eq!(src["status"], "planned", "{name}: {src}");
                assert!(src["snapshot"].is_string(), "{name}: {src}");
                let read = &src["verification"]["read"];
                assert!(read["blobs"].as_u64().unwrap() > 0, "{name}: {read}");
                assert!(read["bytes"].as_u64().unwrap() > 0, "{name}: {read}");
            }
            assert_eq!(s.hooks(), "");
            assert_destroyed(&s);
            assert_eq!(s.snapshot_count(), snapshots, "a dry run wrote a snapshot");
        },
    );

    let report = step("restore --stack --yes", || {
        let out = s.restore(&["--yes", "--json"]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(
            !text.contains(PG_PASSWORD),
            "a password in the output:\n{text}"
        );
        json(&out)
    });

    step("the report", || {
        assert_eq!(report["ok"], true, "{report}");
        let sources = by_name(&report);
        let mut sum = 0.0;
        for (name, src) in &sources {
            assert_eq!(src["status"], "restored", "{name}: {src}");
            assert!(src["error"].is_null(), "{name}: {src}");
            sum += src["duration_secs"].as_f64().unwrap();
        }
        let total = report["duration_secs"].as_f64().unwrap();
        assert!(
            sum <= total,
            "per-source times {sum} add up to more than {total}"
        );
        let get = |n: &str| &sources.iter().find(|(m, _)| m == n).unwrap().1;
        let db = &get("db")["verification"];
        assert!(db["tables"].as_u64().unwrap() >= 5, "{db}");
        assert_eq!(db["row_mismatches"], 0, "{db}");
        assert!(get("db")["target"].as_str().unwrap().contains("\"app\""));
        let cache = &get("cache")["verification"];
        assert!(cache["keys"].as_u64().unwrap() > 0, "{cache}");
        assert_eq!(cache["key_mismatches"], 0, "{cache}");
        let up = &get("uploads")["verification"];
        assert_eq!(
            up["files"], up["read"]["files"],
            "every file of the snapshot restored: {up}"
        );
        assert!(get("phys")["verification"]["files"].as_u64().unwrap() > 100);
        assert_eq!(report["restored"].as_array().unwrap().len(), 7);
        let shop = &get("shop");
        assert_eq!(
            shop["target"],
            format!("restore command {}", mariadb::program("mariadb").display())
        );
        assert!(
            shop["verification"]["bytes"].as_u64().unwrap() > 10_000,
            "{shop}"
        );
        assert_eq!(
            get("appdb")["target"],
            s.restore_dir().display().to_string()
        );
        assert!(report["not_restored"].as_array().unwrap().is_empty());
        // The empty targets needed no safety backup.
        for (name, src) in &sources {
            assert!(
                src["safety_snapshots"].as_array().unwrap().is_empty(),
                "{name}"
            );
        }
    });

    step("the hooks ran in order", || {
        assert_eq!(
            s.hooks(),
            "before_restore phys db cache uploads secrets appdb shop\n\
             after_restore ok phys db cache uploads secrets appdb shop\n\
             started phys\n"
        );
    });

    step("everything is back, identical", || {
        // The SQLite copy in restore_dir opens and holds the same rows.
        let copy = s.restore_dir().join("appdb/app.db");
        assert_eq!(sqlite(&copy, SQLITE_CHECK), sqlite_before);
        assert!(sqlite_before.starts_with("ok\n5000|"), "{sqlite_before}");
        s.wait_recovered();
        assert_eq!(s.markers(), markers, "the physical cluster after recovery");
        let after = s.state();
        assert_eq!(after.schema, before.schema, "schema");
        assert_eq!(after.rows, before.rows, "row checksums");
        assert_eq!(after.digest, before.digest, "DEBUG DIGEST");
        assert_eq!(
            after.uploads, before.uploads,
            "uploads: digests, modes, times"
        );
        assert_eq!(after.env, before.env, ".env");
        assert!(before.shop.is_some());
        assert_eq!(after.shop, before.shop, "MariaDB: checksums, rows, schema");
        assert_eq!(fs::metadata(s.env_file()).unwrap().mode() & 0o777, 0o600);
    });
}

#[test]
fn restore_at_a_time_gives_each_source_as_it_was_then() {
    let s = step("start the stack", Stack::new);
    step("load data, first stack backup", || {
        load(&s, false);
        s.backup();
    });
    let first = s.state();
    let t = step("change everything, then take T", || {
        s.db.psql("app", "INSERT INTO orders VALUES (1001, 'late order')");
        s.redis.cmd(&["SET", "str:small", "changed"]);
        s.redis.cmd(&["SET", "new:key", "new"]);
        fs::write(s.uploads().join("hello.txt"), "changed\n").unwrap();
        fs::write(s.uploads().join("added.txt"), "added\n").unwrap();
        s.phys
            .psql("postgres", "INSERT INTO marker (note) VALUES ('before T')");
        std::thread::sleep(Duration::from_millis(1100));
        let t = s.phys.psql("postgres", "SELECT clock_timestamp()");
        std::thread::sleep(Duration::from_millis(1100));
        s.phys
            .psql("postgres", "INSERT INTO marker (note) VALUES ('after T')");
        t
    });
    step("second stack backup", || {
        s.backup();
        s.phys.archive_all();
    });
    let second = s.state();
    assert_ne!(second, first);

    step("targets that hold data need --yes", || {
        let out = s.restore(&["--time", &t]);
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(
            said.contains("give --yes") && said.contains("hold data"),
            "{said}"
        );
        assert_eq!(s.hooks(), "");
        assert_eq!(s.state(), second, "changed without --yes");
    });

    let report = step("restore --stack --time T --yes", || {
        json(&s.restore(&["--time", &t, "--yes", "--json"]))
    });
    step("each source as of T", || {
        assert_eq!(report["ok"], true, "{report}");
        let sources = by_name(&report);
        for (name, src) in &sources {
            assert_eq!(src["status"], "restored", "{name}: {src}");
        }
        // The live database and Redis were backed up before they were replaced.
        for name in ["db", "cache"] {
            let src = &sources.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(
                src["safety_snapshots"].as_array().unwrap().len(),
                1,
                "{src}"
            );
        }
        assert_eq!(
            s.hooks(),
            "before_restore phys db cache uploads secrets\n\
             stopped phys\n\
             after_restore ok phys db cache uploads secrets\n\
             started phys\n"
        );
        s.wait_recovered();
        // PITR to exactly T: the row committed before T is there, the one after is not.
        assert_eq!(s.markers(), ["one", "two", "before T"]);
        // The others: their newest snapshot at or before T, the first backup.
        assert_eq!(s.state(), first);
        assert!(!s.uploads().join("added.txt").exists());
    });
}

#[test]
fn a_failure_stops_the_sequence_and_after_restore_still_runs() {
    let s = step("start the stack", Stack::new);
    step("load data and back the stack up", || {
        load(&s, false);
        s.backup();
    });
    let before = s.state();
    fs::remove_dir_all(s.files.path().join("srv")).unwrap();
    // before_restore takes the Redis server down after the plan reached it: its restore
    // fails, the files before it are restored, the ones after are not.
    let conf = s.files.path().join("failing.toml");
    let shutdown = format!(
        "redis-cli -p {} shutdown nosave >/dev/null 2>&1; true",
        s.redis.port()
    );
    let mut text = s.config("", &[&shutdown]);
    text = text.replace(
        r#"restore_order = ["phys", "db", "cache", "uploads", "secrets"]"#,
        r#"restore_order = ["uploads", "cache", "secrets"]"#,
    );
    fs::write(&conf, text).unwrap();
    let out = s.restore_with(
        &conf,
        &[
            "--yes", "--json", "--source", "uploads", "--source", "cache", "--source", "secrets",
        ],
    );
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(8), "{said}");
    assert!(
        said.contains("source \"cache\"")
            && said.contains("restored: uploads; not restored: cache, secrets"),
        "{said}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], false);
    let status: Vec<(String, String)> = by_name(&r)
        .into_iter()
        .map(|(n, v)| (n, v["status"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        status,
        [
            ("uploads".to_string(), "restored".to_string()),
            ("cache".into(), "failed".into()),
            ("secrets".into(), "not_restored".into())
        ]
    );
    assert_eq!(fingerprint(&s.uploads()), before.uploads);
    assert!(!s.env_file().exists());
    let hooks = s.hooks();
    assert_eq!(
        hooks,
        "before_restore uploads cache secrets\nstopped phys\nafter_restore failed uploads\nstarted phys\n"
    );
}

#[test]
fn the_command_line_refuses_what_it_cannot_do_before_opening_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("coffer.toml");
    fs::write(
        &conf,
        format!(
            "repository = {}\n[sources.uploads]\ntype = \"files\"\npaths = [\"/srv/uploads\"]\n",
            toml_str(&dir.path().join("no-repo-here").display().to_string())
        ),
    )
    .unwrap();
    let run = |args: &[&str], with_conf: bool| {
        let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
        common::clean_env(&mut c);
        c.env("COFFER_HOME", dir.path().join("home"))
            .env("COFFER_PASSWORD", "pw");
        if with_conf {
            c.arg("--config").arg(&conf);
        }
        c.args(["restore", "--stack"]).args(args).output().unwrap()
    };
    common::refused(&run(&[], false), 2, "[sources.NAME]");
    common::refused(
        &run(&["--source", "nope"], true),
        2,
        "declares no such source (it has uploads)",
    );
    common::refused(
        &run(&["--time", "yesterday"], true),
        2,
        "--time \"yesterday\" is not a time",
    );
    common::refused(&run(&["latest"], true), 2, "cannot be used with");
    common::refused(&run(&["--delta"], true), 2, "cannot be used with");
    // A plan against a repository that is not there: nothing to restore from (exit 6).
    let out = run(&["--dry-run"], true);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(!dir.path().join("no-repo-here").exists());
}

#[test]
fn dumps_go_to_restore_url_and_each_database_to_its_own() {
    let pg = PgCluster::start();
    for db in ["app", "billing", "shop"] {
        pg.create_db(db);
        pg.psql(
            db,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, what text);
                 INSERT INTO t SELECT g, '{db} ' || g FROM generate_series(1, 300) g"
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("coffer.toml");
    fs::write(
        &conf,
        format!(
            "repository = {repo}\n\n[sources.app]\ntype = \"postgres\"\nurl = {app}\n\
             restore_url = {copy}\n\n[sources.two]\ntype = \"postgres\"\nurl = {two}\n\
             databases = [\"billing\", \"shop\"]\nrestore_jobs = 2\n",
            repo = toml_str(&dir.path().join("repo").display().to_string()),
            app = toml_str(&pg.url("app")),
            copy = toml_str(&pg.url("app_copy")),
            two = toml_str(&pg.url("postgres")),
        ),
    )
    .unwrap();
    let cmd = || {
        let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
        common::clean_env(&mut c);
        common::clean_pg_env(&mut c);
        c.env("COFFER_HOME", dir.path().join("home"))
            .env("COFFER_PASSWORD", "pw")
            .arg("--config")
            .arg(&conf);
        c
    };
    common::ok(&cmd().arg("init").output().unwrap());
    common::ok(&cmd().arg("backup").output().unwrap());
    let sums: Vec<_> = ["app", "billing", "shop"]
        .iter()
        .map(|d| pg.data_checksums(d))
        .collect();
    pg.psql("app", "DELETE FROM t WHERE id > 10");
    pg.drop_db("billing");
    pg.drop_db("shop");

    let out = cmd()
        .args(["restore", "--stack", "--json"])
        .output()
        .unwrap();
    let r = json(&out);
    // The dump of app went to app_copy; app (not a target) is as it was left.
    assert_eq!(pg.data_checksums("app_copy"), sums[0]);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "10");
    assert_eq!(pg.data_checksums("billing"), sums[1]);
    assert_eq!(pg.data_checksums("shop"), sums[2]);
    let two = &by_name(&r)[1].1;
    assert_eq!(two["verification"]["tables"], 2, "{two}");
    assert_eq!(two["verification"]["rows"], 600, "{two}");
    assert!(
        two["target"].as_str().unwrap().contains("\"billing\"")
            && two["target"].as_str().unwrap().contains("\"shop\""),
        "{two}"
    );
    // The roles are not restored: the report says how.
    assert!(
        two["notes"][0]
            .as_str()
            .unwrap()
            .contains("globals.sql | psql"),
        "{two}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PG_PASSWORD));

    // Now app_copy holds data: without --yes (and no terminal) nothing is replaced.
    let out = cmd()
        .args(["restore", "--stack", "--source", "app"])
        .output()
        .unwrap();
    common::refused(&out, 2, "database \"app_copy\"");
}

#[test]
fn damage_in_any_snapshot_stops_the_plan_before_anything_is_written() {
    let env = common::Env::new();
    env.init();
    let (a, b) = (env.path("srv/a"), env.path("srv/b"));
    make_tree(&a);
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("big.bin"), common::noise(9, 6 << 20)).unwrap();
    let log = env.path("hooks.log");
    let conf = env.path("coffer.toml");
    fs::write(
        &conf,
        format!(
            "[sources.a]\ntype = \"files\"\npaths = [{}]\n\n[sources.b]\ntype = \"files\"\n\
             paths = [{}]\n\n[stack]\nbefore_restore = [{}]\n",
            toml_str(&a.display().to_string()),
            toml_str(&b.display().to_string()),
            toml_str(&format!("echo before >> '{}'", log.display())),
        ),
    )
    .unwrap();
    let backup = |source: &str| {
        common::ok(
            &env.cmd()
                .arg("--config")
                .arg(&conf)
                .args(["backup", "--source", source])
                .output()
                .unwrap(),
        )
    };
    backup("a");
    let of_a = env.packs();
    backup("b");
    // Flip a byte in the middle of every pack b's backup wrote.
    let of_b: Vec<PathBuf> = env
        .packs()
        .into_iter()
        .filter(|p| !of_a.contains(p))
        .collect();
    assert!(!of_b.is_empty());
    for p in &of_b {
        let mut bytes = fs::read(p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(p, bytes).unwrap();
    }
    fs::remove_dir_all(env.path("srv")).unwrap();
    let out = env
        .cmd()
        .arg("--config")
        .arg(&conf)
        .args(["restore", "--stack", "--yes"])
        .output()
        .unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("the restore plan failed, nothing was written")
            && said.contains("source \"b\""),
        "{said}"
    );
    // a, first in order and undamaged, was not restored either; no hook ran.
    assert!(!a.exists() && !b.exists());
    assert!(!log.exists());
}
