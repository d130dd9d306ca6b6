//! Physical base backups and point-in-time recovery with real PostgreSQL clusters that
//! archive through `coffer wal-push %p`: base backups under pgbench load, recovery to a
//! time, an LSN, a transaction id and a named restore point between marker rows, replay
//! to the end, timelines after a promotion, amcheck on the restored indexes, and the
//! errors a user can run into.

mod common;

use common::pg::PgCluster;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A cluster archiving into a fresh repository; the repository and the passphrase file
/// belong to the server's OS user, which runs wal-push and wal-fetch.
struct Archived {
    holder: tempfile::TempDir,
    repo: PathBuf,
    pwfile: PathBuf,
    pg: PgCluster,
}

fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn chown_to_server_user(p: &Path) {
    if as_root() {
        let st = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn coffer_for(holder: &Path, repo: &Path, pwfile: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("coffer").unwrap();
    common::clean_env(&mut c);
    c.env("COFFER_HOME", holder.join("home"))
        .env("COFFER_REPO", repo)
        .env("COFFER_PASSWORD_FILE", pwfile);
    c
}

impl Archived {
    fn new() -> Archived {
        let holder = tempfile::tempdir().unwrap();
        std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = holder.path().join("repo");
        let pwfile = holder.path().join("pw");
        std::fs::write(&pwfile, "pitr secret\n").unwrap();
        coffer_for(holder.path(), &repo, &pwfile)
            .args(["init", "--pack-size", "8"])
            .assert()
            .success();
        chown_to_server_user(holder.path());
        let archive_command = format!(
            "COFFER_REPO='{}' COFFER_PASSWORD_FILE='{}' '{}' wal-push %p",
            repo.display(),
            pwfile.display(),
            assert_cmd::cargo::cargo_bin("coffer").display()
        );
        let pg = PgCluster::start_with(&[
            ("archive_mode", "on"),
            ("archive_command", &archive_command),
            ("archive_timeout", "0"),
        ]);
        Archived {
            holder,
            repo,
            pwfile,
            pg,
        }
    }

    fn cmd(&self) -> assert_cmd::Command {
        coffer_for(self.holder.path(), &self.repo, &self.pwfile)
    }

    fn base_backup(&self) -> serde_json::Value {
        let out = self
            .cmd()
            .args([
                "backup",
                "--json",
                "--postgres",
                &self.pg.url("postgres"),
                "--physical",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "base backup failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn archive_all(&self) {
        archive_all(&self.pg);
    }

    /// `coffer restore --pgdata DIR ARGS…` into a new directory.
    fn restore(&self, name: &str, args: &[&str]) -> (PathBuf, Output) {
        let dir = self.holder.path().join(name);
        let out = self
            .cmd()
            .args(["restore", "--pgdata"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        (dir, out)
    }

    /// Restore with ARGS, start a server on the result (promoted at the target), and
    /// return it. Archiving stays on only when `archive` (the promoted server then pushes
    /// its new timeline into the same archive).
    fn recover(&self, name: &str, args: &[&str], archive: bool) -> PgCluster {
        let (dir, out) = self.restore(name, args);
        assert!(
            out.status.success(),
            "restore {args:?} failed: {}",
            stderr(&out)
        );
        let mode = if archive { "on" } else { "off" };
        let pg = PgCluster::start_on(&dir, &[("archive_mode", mode)]);
        // A hot standby accepts connections once consistent; wait for the promotion.
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.psql("postgres", "SELECT pg_is_in_recovery()") != "f" {
            assert!(
                Instant::now() < deadline,
                "{name}: recovery did not end:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }
}

fn markers(pg: &PgCluster) -> Vec<i32> {
    pg.psql(
        "postgres",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM marker",
    )
    .split(',')
    .filter(|s| !s.is_empty())
    .map(|s| s.parse().unwrap())
    .collect()
}

fn pgbench(pg: &PgCluster, args: &[&str]) -> std::process::Child {
    pg.client("pgbench")
        .args(args)
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn pgbench_init(pg: &PgCluster, scale: u32) {
    let out = pg
        .client("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Switch `pg` to a new segment and wait until everything up to it is archived.
fn archive_all(pg: &PgCluster) {
    let seg = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = pg.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        );
        if last.as_str() >= seg.as_str() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seg} not archived (last {last}):\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn amcheck(pg: &PgCluster) {
    pg.psql("postgres", "CREATE EXTENSION IF NOT EXISTS amcheck");
    let checked = pg.psql(
        "postgres",
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
         WHERE am.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid",
    );
    assert!(checked.parse::<i64>().unwrap() > 10, "{checked}");
}

#[test]
fn point_in_time_recovery_lands_on_each_target() {
    let a = Archived::new();
    let pg = &a.pg;
    pgbench_init(pg, 5);
    pg.psql(
        "postgres",
        "CREATE TABLE marker (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE UNLOGGED TABLE scratch AS SELECT generate_series(1, 1000) AS x;",
    );

    // A base backup while pgbench writes.
    let mut load = pgbench(pg, &["-c", "2", "-T", "6", "-n"]);
    std::thread::sleep(Duration::from_millis(500));
    let first = a.base_backup();
    let st = load.wait().unwrap();
    assert!(st.success(), "pgbench failed");
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(
        &a.cmd()
            .args(["snapshots", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["kind"], "postgres-physical");
    assert_eq!(snaps[0]["id"], first["id"]);

    // Marker rows, one transaction each; remember the points between them.
    let mut time_after = Vec::new();
    let mut lsn_after = Vec::new();
    let mut xid_of = Vec::new();
    for id in 1..=6 {
        xid_of.push(pg.psql(
            "postgres",
            &format!("INSERT INTO marker (id) VALUES ({id}) RETURNING txid_current()"),
        ));
        lsn_after.push(pg.psql("postgres", "SELECT pg_current_wal_lsn()"));
        if id == 4 {
            pg.psql("postgres", "SELECT pg_create_restore_point('after-4')");
        }
        std::thread::sleep(Duration::from_millis(1100));
        time_after.push(pg.psql("postgres", "SELECT clock_timestamp()"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let accounts = pg.psql(
        "postgres",
        "SELECT sum(abalance), count(*) FROM pgbench_accounts",
    );
    let history = pg.psql("postgres", "SELECT count(*) FROM pgbench_history");
    a.archive_all();

    // By time: between markers 2 and 3.
    let r = a.recover(
        "by-time",
        &[
            "--target-time",
            &time_after[1],
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1, 2]);
    amcheck(&r);
    // The unlogged table is there, empty (only its init fork was backed up).
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM scratch"), "0");
    drop(r);

    // By LSN: just after marker 3's commit.
    let r = a.recover(
        "by-lsn",
        &["--target-lsn", &lsn_after[2], "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3]);
    drop(r);

    // By transaction id, inclusive and exclusive.
    let r = a.recover(
        "by-xid",
        &["--target-xid", &xid_of[4], "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4, 5]);
    drop(r);
    let r = a.recover(
        "by-xid-excl",
        &[
            "--target-xid",
            &xid_of[4],
            "--target-exclusive",
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4]);
    drop(r);

    // By restore point name.
    let r = a.recover(
        "by-name",
        &["--target-name", "after-4", "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4]);
    drop(r);

    // Replay everything: every marker and the same pgbench state.
    let r = a.recover("to-end", &["--target-action", "promote"], false);
    assert_eq!(markers(&r), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT sum(abalance), count(*) FROM pgbench_accounts"
        ),
        accounts
    );
    assert_eq!(
        r.psql("postgres", "SELECT count(*) FROM pgbench_history"),
        history
    );
    amcheck(&r);
    drop(r);

    // Errors: a target before the only backup, a target past the archive, a non-empty
    // directory, a snapshot that is not a base backup.
    let (_, out) = a.restore("too-early", &["--target-time", "2001-01-01 00:00:00+00"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("before the oldest base backup"),
        "{}",
        stderr(&out)
    );
    let (_, out) = a.restore("too-late", &["--target-lsn", "FF/0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("after the newest archived WAL"),
        "{}",
        stderr(&out)
    );
    let now = pg.psql("postgres", "SELECT clock_timestamp()");
    let (_, out) = a.restore("too-late-time", &["--target-time", &now]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("after the newest archived WAL"),
        "{}",
        stderr(&out)
    );
    let busy = a.holder.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep-me"), "x").unwrap();
    let (_, out) = a.restore("busy", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(busy.join("keep-me").exists());

    // A segment missing from the archive after the backup: replay-to-end is refused and
    // names it, and nothing is written.
    let gap = pg.psql(
        "postgres",
        &format!("SELECT pg_walfile_name('{}')", lsn_after[5]),
    );
    pg.psql("postgres", "INSERT INTO marker (id) VALUES (7)");
    a.archive_all();
    std::fs::remove_file(a.repo.join("wal").join(&gap[..16]).join(&gap)).unwrap();
    let (dir, out) = a.restore("gap", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{gap} is missing")),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists());
}

#[test]
fn unchanged_base_backup_costs_little_and_timelines_are_followed() {
    let a = Archived::new();
    let pg = &a.pg;
    pgbench_init(pg, 10);
    pg.psql("postgres", "CREATE TABLE marker (id int PRIMARY KEY)");
    pg.psql("postgres", "CHECKPOINT");
    std::thread::sleep(Duration::from_millis(1100));
    let first = a.base_backup();
    let second = a.base_backup();
    let size = second["size"].as_u64().unwrap();
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    assert!(size > 100 << 20, "size {size}");
    // Only what a checkpoint rewrites (pg_control, a few catalog and FSM pages) is new.
    assert!(
        added < size / 50,
        "second base backup added {added} of {size} bytes"
    );
    assert_eq!(second["parent"], first["id"]);

    pg.psql("postgres", "INSERT INTO marker VALUES (1)");
    let t1 = pg.psql("postgres", "SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO marker VALUES (2)");
    a.archive_all();

    // Recover to between the markers and promote: a new timeline, archived by the
    // promoted server into the same archive.
    let r = a.recover(
        "tl2",
        &["--target-time", &t1, "--target-action", "promote"],
        true,
    );
    assert_eq!(markers(&r), [1]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
        ),
        "00000002"
    );
    r.psql("postgres", "INSERT INTO marker VALUES (100)");
    archive_all(&r);
    drop(r);

    // latest (the default) follows timeline 2; timeline 1 is the original history.
    let r = a.recover("latest", &["--target-action", "promote"], false);
    assert_eq!(markers(&r), [1, 100]);
    drop(r);
    let r = a.recover(
        "tl1",
        &["--target-timeline", "1", "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2]);
    drop(r);
    let (_, out) = a.restore("tl9", &["--target-timeline", "9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("timeline 9 is not in the archive"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn base_backup_needs_archiving() {
    let pg = PgCluster::start();
    let env = common::Env::new();
    env.init();
    let out = env
        .cmd()
        .args(["backup", "--postgres", &pg.url("postgres"), "--physical"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("archive_mode = on"),
        "{}",
        stderr(&out)
    );
    assert!(env.snapshots().is_empty());
}
