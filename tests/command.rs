//! Command sources (`backup --command -- CMD ARGS…`) with real programs: `sqlite3 .backup`
//! into an output directory, `mariadb-dump` from a real MariaDB server on standard output
//! and its reload through a restore command; failures (a non-zero exit, a signal, a timeout,
//! empty output, a missing program) that must leave no snapshot, no process and no output
//! directory behind; and coffer's passphrase kept from the command.

mod common;

use coffer::backend::LocalBackend;
use coffer::progress::Progress;
use coffer::repo::Repository;
use coffer::sources::command::{
    backup_command, restore_command_output, CommandOptions, CommandRestore, Program,
};
use common::mariadb::{self, MariaDb};
use common::{ok, refused_without_snapshot, stderr, Env};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The temporary directory the test's coffer commands use (TMPDIR), where output
/// directories are made.
fn tmp(env: &Env) -> PathBuf {
    let t = env.path("tmp");
    std::fs::create_dir_all(&t).unwrap();
    t
}

fn run(env: &Env, args: &[&str]) -> Output {
    env.cmd()
        .env("TMPDIR", tmp(env))
        .args(args)
        .output()
        .unwrap()
}

/// `coffer backup --json ARGS` (which hold `--command … -- CMD …`): the snapshot's id.
fn backup(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["backup", "--json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&ok(&run(env, &all))).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The snapshot with this id, from `snapshots --json`.
fn snapshot(env: &Env, id: &str) -> Value {
    env.snapshots()
        .into_iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no snapshot {id}"))
}

/// No output directory is left in the test's TMPDIR.
fn no_output_dirs_left(env: &Env) {
    let left: Vec<_> = std::fs::read_dir(tmp(env))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

fn open(env: &Env) -> Arc<Repository> {
    Arc::new(Repository::open(Arc::new(LocalBackend::new(&env.repo)), b"correct horse").unwrap())
}

/// Restore the command output of snapshot `id` through the library, as `restore --stack`
/// does.
fn restore_output(
    env: &Env,
    id: &str,
    to: &CommandRestore,
) -> anyhow::Result<coffer::sources::command::CommandRestoreReport> {
    let repo = open(env);
    let snap = repo.find_snapshot(id).unwrap();
    let index = repo.load_index().unwrap();
    restore_command_output(&repo, &index, &snap, to, &Progress::hidden())
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

#[test]
fn sqlite_backup_into_an_output_dir_restores_a_database_that_opens() {
    let env = Env::new();
    env.init();
    let db = env.path("app.db");
    sqlite(
        &db,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, score REAL, photo BLOB);\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) \
         INSERT INTO users SELECT i, 'user ' || i || ' ✓ ''quoted''', i * 1.5, randomblob(100) FROM n;\
         CREATE INDEX users_name ON users(name);",
    );
    // The whole database as SQL, and a query over it.
    let same = |p: &Path| {
        (
            sqlite(p, ".dump"),
            sqlite(
                p,
                "SELECT count(*), sum(score), max(name), sum(length(photo)) FROM users",
            ),
        )
    };
    let before = same(&db);
    let backup_arg = ".backup {output_dir}/app.db".to_string();
    let id = backup(
        &env,
        &[
            "--command",
            "--command-output",
            "dir",
            "--name",
            "app",
            "--",
            "sqlite3",
            db.to_str().unwrap(),
            &backup_arg,
        ],
    );
    no_output_dirs_left(&env);
    let snap = snapshot(&env, &id);
    assert_eq!(snap["kind"], "command", "{snap}");
    assert_eq!(snap["paths"], serde_json::json!(["/app"]));
    assert_eq!(snap["requires"]["command-output"], "0.1.0");
    let src = &snap["sources"][0];
    assert_eq!(src["kind"], "command");
    assert_eq!(src["name"], "app");
    let m = &src["metadata"];
    assert_eq!(m["output"], "dir");
    assert_eq!(m["program"], "sqlite3");
    assert_eq!(m["exit_code"], 0);
    assert_eq!(m["files"], 1);
    assert!(m["bytes"].as_u64().unwrap() > 500_000, "{m}");
    // The arguments (which could hold secrets) are not recorded.
    assert!(!snap.to_string().contains(".backup"), "{snap}");

    // restore --target: the output directory comes back as TARGET/NAME.
    let target = env.path("restored");
    ok(&run(
        &env,
        &["restore", &id, "--target", target.to_str().unwrap()],
    ));
    let restored = target.join("app/app.db");
    assert_eq!(same(&restored), before);
    assert_eq!(sqlite(&restored, "PRAGMA integrity_check").trim(), "ok");

    // The library restore the stack restore uses: into a directory…
    let dir = env.path("lib-restore");
    let r = restore_output(&env, &id, &CommandRestore::Dir(dir.clone())).unwrap();
    assert_eq!((r.files, r.output.as_str()), (1, "dir"));
    assert_eq!(same(&dir.join("app/app.db")), before);
    // …and through a command given the restored directory.
    let copy = env.path("copy.db");
    let r = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Argv(vec![
                "sh".into(),
                "-c".into(),
                r#"test "$COFFER_OUTPUT_DIR" = "$1" && cp "$1/app.db" "$2""#.into(),
                "sh".into(),
                "{output_dir}".into(),
                copy.display().to_string(),
            ]),
            timeout: Some(Duration::from_secs(60)),
        },
    )
    .unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(same(&copy), before);
}

#[test]
fn mariadb_dump_on_stdout_reloads_through_a_restore_command() {
    let db = MariaDb::start();
    db.create_user("backup", "dump-pw-1");
    db.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop; \
         CREATE TABLE shop.customers (id INT PRIMARY KEY, name VARCHAR(100), note TEXT) ENGINE=InnoDB; \
         CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT NOT NULL, \
           total DECIMAL(10,2), placed DATETIME(6), data BLOB, \
           FOREIGN KEY (customer) REFERENCES shop.customers(id)) ENGINE=InnoDB; \
         INSERT INTO shop.customers SELECT seq, CONCAT('customer ', seq, ' ✓ \\'q\\''), \
           IF(seq % 7 = 0, NULL, REPEAT('n', seq % 50)) FROM seq_1_to_2000; \
         INSERT INTO shop.orders (customer, total, placed, data) SELECT 1 + seq % 2000, seq / 7, \
           '2024-05-01 02:00:00.123456' + INTERVAL seq SECOND, UNHEX(SHA2(seq, 256)) FROM seq_1_to_20000; \
         CREATE VIEW shop.big AS SELECT * FROM shop.orders WHERE total > 1000;",
    );
    let tables = ["shop.customers", "shop.orders"];
    let before = db.checksums(&tables);
    let rows = |db: &MariaDb| {
        db.sql("SELECT COUNT(*) FROM shop.orders; SELECT COUNT(*) FROM shop.customers")
    };
    let rows_before = rows(&db);

    let env = Env::new();
    env.init();
    let socket = format!("--socket={}", db.socket().display());
    let dump = mariadb::program("mariadb-dump");
    // The password reaches mariadb-dump through its environment, never its arguments.
    let out = env
        .cmd()
        .env("TMPDIR", tmp(&env))
        .env("MYSQL_PWD", "dump-pw-1")
        .args(["backup", "--json", "--command", "--name", "shop.sql", "--"])
        .arg(&dump)
        .args([
            "--no-defaults",
            &socket,
            "--user=backup",
            "--single-transaction",
            "--routines",
            "--triggers",
            "--databases",
            "shop",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let snap = snapshot(&env, &id);
    let m = &snap["sources"][0]["metadata"];
    assert_eq!(m["output"], "stdout");
    assert_eq!(m["program"], dump.display().to_string());
    assert_eq!(m["exit_code"], 0);
    assert!(m["bytes"].as_u64().unwrap() > 1_000_000, "{m}");
    assert_eq!(snap["paths"], serde_json::json!(["/shop.sql"]));
    assert!(!snap.to_string().contains("--user"), "{snap}");

    // What was stored is the dump: restore --target writes it as TARGET/NAME.
    let target = env.path("restored");
    ok(&run(
        &env,
        &["restore", &id, "--target", target.to_str().unwrap()],
    ));
    // (Binary: the BLOB column is dumped as raw bytes.)
    let sql = std::fs::read(target.join("shop.sql")).unwrap();
    let sql = String::from_utf8_lossy(&sql);
    assert!(
        sql.contains("CREATE DATABASE"),
        "{}",
        &sql[..500.min(sql.len())]
    );
    assert!(sql.contains("-- Dump completed"));

    // Lose the database, then load it back through the client, fed the verified stream.
    db.sql("DROP DATABASE shop");
    assert!(!db.sql("SHOW DATABASES").contains("shop"));
    let mut client = vec![mariadb::program("mariadb").display().to_string()];
    client.extend(db.admin_args());
    let r = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Argv(client.clone()),
            timeout: Some(Duration::from_secs(120)),
        },
    )
    .unwrap();
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.bytes, m["bytes"].as_u64().unwrap());
    assert_eq!(db.checksums(&tables), before);
    assert_eq!(rows(&db), rows_before);
    assert!(db.sql("SHOW FULL TABLES FROM shop").contains("VIEW"));

    // A restore command that fails is an error with what it said (here a client that runs
    // a statement of its own that fails, instead of reading the dump).
    let mut strict = client.clone();
    strict.push("--execute=SELECT * FROM no_such_db.t".into());
    let e = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Argv(strict),
            timeout: None,
        },
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert_eq!(
        coffer::error::kind_of(&e),
        coffer::error::ErrorKind::Source,
        "{msg}"
    );
    assert!(msg.contains("exited with status 1"), "{msg}");
    assert!(msg.contains("no_such_db"), "{msg}");
}

#[test]
fn a_failing_command_leaves_no_snapshot_and_says_why() {
    let env = Env::new();
    env.init();
    // A non-zero exit: the last 20 lines of standard error, exit 8.
    let out = run(
        &env,
        &[
            "backup",
            "--command",
            "--",
            "sh",
            "-c",
            "echo some output; echo first >&2; for i in $(seq 1 30); do echo err line $i >&2; done; exit 5",
        ],
    );
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &[
            "no snapshot was written",
            "sh exited with status 5 (success is 0)",
            "err line 11\n",
            "err line 30",
        ],
        0,
    );
    let said = stderr(&out);
    assert!(
        !said.contains("err line 10\n") && !said.contains("first"),
        "{said}"
    );
    // …unless the status is one of --success-code.
    let id = backup(
        &env,
        &[
            "--command",
            "--success-code",
            "5",
            "--success-code",
            "6",
            "--",
            "sh",
            "-c",
            "echo data; exit 5",
        ],
    );
    assert_eq!(
        snapshot(&env, &id)["sources"][0]["metadata"]["exit_code"],
        5
    );
    ok(&env.cmd().args(["forget", &id]).output().unwrap());

    // Killed by a signal.
    let out = run(
        &env,
        &[
            "backup",
            "--command",
            "--",
            "sh",
            "-c",
            "echo x; kill -9 $$",
        ],
    );
    refused_without_snapshot(&env, &out, Some(8), &["killed by signal 9 (SIGKILL)"], 0);

    // Empty output, on standard output and in an output directory, and less than --min-bytes.
    let out = run(&env, &["backup", "--command", "--", "true"]);
    refused_without_snapshot(&env, &out, Some(8), &["the output is empty"], 0);
    let out = run(
        &env,
        &[
            "backup",
            "--command",
            "--command-output",
            "dir",
            "--",
            "sh",
            "-c",
            "mkdir {output_dir}/empty",
        ],
    );
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &["the output is empty: it wrote nothing in the output directory"],
        0,
    );
    let out = run(
        &env,
        &[
            "backup",
            "--command",
            "--min-bytes",
            "100",
            "--",
            "echo",
            "hi",
        ],
    );
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &["wrote only 3 bytes on standard output, fewer than min_bytes (100)"],
        0,
    );

    // A program that does not exist.
    let out = run(&env, &["backup", "--command", "--", "no-such-program-7f3a"]);
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &["command not found: no-such-program-7f3a"],
        0,
    );

    // Usage errors (exit 2): no command, a bad duration, a bad name.
    let out = run(&env, &["backup", "--command"]);
    refused_without_snapshot(
        &env,
        &out,
        Some(2),
        &["--command needs the command after --"],
        0,
    );
    let out = run(
        &env,
        &[
            "backup",
            "--command",
            "--command-timeout",
            "soon",
            "--",
            "true",
        ],
    );
    refused_without_snapshot(
        &env,
        &out,
        Some(2),
        &["is not a duration", "write e.g. 90s"],
        0,
    );
    let out = run(
        &env,
        &["backup", "--command", "--name", "a/b", "--", "true"],
    );
    refused_without_snapshot(&env, &out, Some(2), &["give a plain name"], 0);
    no_output_dirs_left(&env);
}

/// The processes (not zombies) whose environment holds `marker`.
fn marked_processes(marker: &str) -> Vec<String> {
    let needle = format!("COFFER_TEST_MARKER={marker}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let Ok(environ) = std::fs::read(p.join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]).unwrap_or("?");
        if state != "Z" {
            out.push(stat);
        }
    }
    out
}

fn none_left(marker: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    while !marked_processes(marker).is_empty() {
        assert!(
            Instant::now() < until,
            "left running: {:?}",
            marked_processes(marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_timeout_stops_the_whole_process_group_and_leaves_nothing_behind() {
    let env = Env::new();
    env.init();
    for (i, (output, script, within)) in [
        // A shell waiting for two sleeps: SIGTERM ends them all.
        ("stdout", "echo started; sleep 60 & sleep 60; wait", 10),
        (
            "dir",
            "echo x > {output_dir}/f; sleep 60 & sleep 60; wait",
            10,
        ),
        // A group that ignores SIGTERM (ignored signals are inherited): SIGKILL after the
        // grace period.
        (
            "stdout",
            "trap '' TERM; echo started; while :; do sleep 0.2; done",
            15,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let marker = format!("{}-{i}", std::process::id());
        let t = Instant::now();
        let out = env
            .cmd()
            .env("TMPDIR", tmp(&env))
            .env("COFFER_TEST_MARKER", &marker)
            .args([
                "backup",
                "--command",
                "--command-timeout",
                "1s",
                "--command-output",
                output,
            ])
            .args(["--", "sh", "-c", script])
            .output()
            .unwrap();
        let took = t.elapsed();
        refused_without_snapshot(
            &env,
            &out,
            Some(8),
            &["sh did not finish within 1s and was stopped"],
            0,
        );
        assert!(
            took < Duration::from_secs(within),
            "{script}: took {took:?}"
        );
        none_left(&marker);
        no_output_dirs_left(&env);
    }
    // What a command that succeeded left running in its group is stopped too (here a
    // sleep that holds its standard output open).
    let marker = format!("{}-left", std::process::id());
    let t = Instant::now();
    let out = env
        .cmd()
        .env("TMPDIR", tmp(&env))
        .env("COFFER_TEST_MARKER", &marker)
        .args([
            "backup",
            "--json",
            "--command",
            "--",
            "sh",
            "-c",
            "sleep 60 & echo data",
        ])
        .output()
        .unwrap();
    ok(&out);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    none_left(&marker);
    // A restore command that runs out of time fails the same way.
    let id = backup(&env, &["--command", "--", "echo", "data"]);
    let t = Instant::now();
    let e = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Shell("cat >/dev/null; sleep 60".into()),
            timeout: Some(Duration::from_secs(1)),
        },
    )
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        format!("{e:#}").contains("sh did not finish within 1s"),
        "{e:#}"
    );
}

#[test]
fn the_command_does_not_see_coffers_passphrase() {
    let env = Env::new();
    env.init();
    let pwfile = env.path("pw");
    std::fs::write(&pwfile, "correct horse\n").unwrap();
    // Env::cmd sets COFFER_PASSWORD; the password file is named too, and a variable of
    // the user's passes through.
    let out = env
        .cmd()
        .env("TMPDIR", tmp(&env))
        .env("COFFER_PASSWORD_FILE", &pwfile)
        .env("APP_SETTING", "kept")
        .args([
            "backup",
            "--json",
            "--command",
            "--name",
            "env",
            "--",
            "env",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = v["id"].as_str().unwrap();
    let dumped = env.cmd().args(["dump", id]).output().unwrap();
    let seen = ok(&dumped);
    assert!(seen.contains("APP_SETTING=kept"), "{seen}");
    assert!(!seen.contains("correct horse"), "{seen}");
    assert!(!seen.contains("COFFER_PASSWORD"), "{seen}");
    // The library's own variables for the command (the stack's `env`), with a shell
    // command line.
    let mut opts =
        CommandOptions::new("token", Program::Shell(r#"echo "token=$APP_TOKEN""#.into()));
    opts.env = vec![("APP_TOKEN".into(), "t0k".into())];
    let snap = backup_command(open(&env), &opts, &Progress::hidden()).unwrap();
    let seen = ok(&env
        .cmd()
        .args(["dump", &snap.id.to_hex()])
        .output()
        .unwrap());
    assert_eq!(seen, "token=t0k\n");
    assert_eq!(snap.sources[0].metadata["program"], "sh");
    // An output directory is named in the environment too, as in the arguments.
    let id = backup(
        &env,
        &[
            "--command",
            "--command-output",
            "dir",
            "--",
            "sh",
            "-c",
            r#"test "$COFFER_OUTPUT_DIR" = "$1" && test -z "${COFFER_PASSWORD+set}" && echo ok > "$1/f""#,
            "sh",
            "{output_dir}",
        ],
    );
    let target = env.path("r");
    ok(&run(
        &env,
        &["restore", &id, "--target", target.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read_to_string(target.join("sh/f")).unwrap(),
        "ok\n"
    );
}

#[test]
fn standard_output_is_stored_as_one_stream_and_restored_as_a_file() {
    // As a program using the library may: a write into a pipe whose reader is gone would
    // kill this process, unless the restore keeps SIGPIPE off its writer.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let env = Env::new();
    env.init();
    // Several MiB, in many chunks.
    let id = backup(
        &env,
        &[
            "--command",
            "--name",
            "numbers",
            "--",
            "seq",
            "1",
            "1000000",
        ],
    );
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    let m = &snapshot(&env, &id)["sources"][0]["metadata"];
    assert_eq!(m["bytes"].as_u64().unwrap(), expected.len() as u64);
    assert_eq!(m["files"], 1);
    let target = env.path("r");
    ok(&run(
        &env,
        &["restore", &id, "--target", target.to_str().unwrap()],
    ));
    assert!(std::fs::read_to_string(target.join("numbers")).unwrap() == expected);
    let dumped = env.cmd().args(["dump", &id]).output().unwrap();
    assert!(dumped.status.success() && dumped.stdout == expected.as_bytes());

    // Piped into a restore command, verified on the way.
    let copy = env.path("copy");
    let r = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Argv(vec![
                "sh".into(),
                "-c".into(),
                r#"cat > "$1""#.into(),
                "sh".into(),
                copy.display().to_string(),
            ]),
            timeout: None,
        },
    )
    .unwrap();
    assert_eq!(r.bytes, expected.len() as u64);
    assert!(std::fs::read_to_string(&copy).unwrap() == expected);
    // A restore command that stops reading early has not restored the output.
    let e = restore_output(
        &env,
        &id,
        &CommandRestore::Run {
            program: Program::Argv(vec!["head".into(), "-c".into(), "10".into()]),
            timeout: None,
        },
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("head exited (status 0) before it read all of its input"),
        "{e:#}"
    );
    // The text report says what ran and what was stored.
    let said = stderr(&run(
        &env,
        &["backup", "--command", "--name", "n", "--", "seq", "1", "10"],
    ));
    assert!(
        said.contains(r#"command source "n": seq exited with status 0 after "#)
            && said.contains("of standard output as /n")
            && said.contains("saved: 1 streams"),
        "{said}"
    );
    // Into a directory: the stream as DIR/NAME.
    let dir = env.path("lib");
    let r = restore_output(&env, &id, &CommandRestore::Dir(dir.clone())).unwrap();
    assert_eq!((r.files, r.bytes), (1, expected.len() as u64));
    assert!(std::fs::read_to_string(dir.join("numbers")).unwrap() == expected);
}

#[test]
fn declared_command_sources_back_up_with_the_stack_and_failing_ones_leave_no_snapshot() {
    let env = Env::new();
    env.init();
    let db = env.path("app.db");
    sqlite(
        &db,
        "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
    );
    let config = env.path("coffer.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sources.app]
type = "command"
command = ["sqlite3", "{db}", ".backup {{output_dir}}/app.db"]
output = "dir"
timeout = "5m"

[sources.listing]
type = "command"
shell = "echo one; echo two"

[sources.slow]
type = "command"
command = ["sleep", "60"]
timeout = "1s"

[sources.empty]
type = "command"
shell = "true"

[sources.broken]
type = "command"
shell = "echo 'cannot connect' >&2; exit 2"
"#,
            db = db.display()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = env
        .cmd()
        .env("TMPDIR", tmp(&env))
        .arg("--config")
        .arg(&config)
        .args(["backup", "--json"])
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = |name: &str| {
        report["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    for ok_source in ["app", "listing"] {
        assert_eq!(by(ok_source)["status"], "ok", "{report}");
    }
    for (failed, why) in [
        ("slow", "sleep did not finish within 1s"),
        ("empty", "the output is empty"),
        ("broken", "cannot connect"),
    ] {
        let s = by(failed);
        assert_eq!(s["status"], "failed", "{s}");
        assert!(s["snapshot"].is_null(), "{s}");
        assert!(s["error"].as_str().unwrap().contains(why), "{s}");
    }
    let snaps = env.snapshots();
    let mut names: Vec<&str> = snaps
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app", "listing"]);
    let app = snaps.iter().find(|s| s["source"] == "app").unwrap();
    let target = env.path("r");
    ok(&run(
        &env,
        &[
            "restore",
            app["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        sqlite(&target.join("app/app.db"), "SELECT sum(x) FROM t").trim(),
        "6"
    );
    no_output_dirs_left(&env);
}
