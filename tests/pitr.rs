//! Physical base backups and point-in-time recovery with real PostgreSQL clusters that
//! archive through `coffer wal-push %p`: base backups under pgbench load, recovery to a
//! time, an LSN, a transaction id and a named restore point between marker rows, replay
//! to the end, timelines after a promotion, amcheck on the restored indexes, and the
//! errors a user can run into.

mod common;

use common::pg::{chown_to_server_user, ArchiveRepo, PgCluster};
use common::{stderr, step};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A cluster archiving into a fresh repository; the repository and the passphrase file
/// belong to the server's OS user, which runs wal-push and wal-fetch.
struct Archived {
    archive: ArchiveRepo,
    holder: PathBuf,
    repo: PathBuf,
    pg: PgCluster,
}

impl Archived {
    fn new() -> Archived {
        let archive = ArchiveRepo::new("pitr secret\n", &["--pack-size", "8"]);
        let pg = archive.start_archiving(&[]);
        Archived {
            holder: archive.holder.path().to_path_buf(),
            repo: archive.repo.clone(),
            archive,
            pg,
        }
    }

    fn cmd(&self) -> assert_cmd::Command {
        self.archive.cmd()
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
        self.pg.archive_all();
    }

    /// `coffer restore --pgdata DIR ARGS…` into a new directory.
    fn restore(&self, name: &str, args: &[&str]) -> (PathBuf, Output) {
        let dir = self.holder.join(name);
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
        PgCluster::start_recovered(&dir, &[("archive_mode", mode)])
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
    step("a base backup while pgbench writes", || {
        base_backup_while_pgbench_writes(&a)
    });
    let m = step("marker rows between recovery points", || {
        write_markers(&a.pg)
    });
    step("recovery by time", || recovers_by_time(&a, &m));
    step("recovery by LSN", || recovers_by_lsn(&a, &m));
    step("recovery by transaction id", || recovers_by_xid(&a, &m));
    step("recovery by restore point name", || recovers_by_name(&a));
    step("replay to the end", || replays_to_the_end(&a, &m));
    step("targets outside the archive, a busy directory", || {
        refuses_bad_targets_and_a_busy_directory(&a)
    });
    step("a segment missing from the archive", || {
        refuses_a_gap_in_the_archive(&a, &m)
    });
}

/// The points between the marker rows of [`write_markers`], and the pgbench state after them.
struct Markers {
    time_after: Vec<String>,
    lsn_after: Vec<String>,
    xid_of: Vec<String>,
    accounts: String,
    history: String,
}

fn base_backup_while_pgbench_writes(a: &Archived) {
    let pg = &a.pg;
    pgbench_init(pg, 5);
    pg.psql(
        "postgres",
        "CREATE TABLE marker (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE UNLOGGED TABLE scratch AS SELECT generate_series(1, 1000) AS x;",
    );

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
}

/// Marker rows, one transaction each; remember the points between them.
fn write_markers(pg: &PgCluster) -> Markers {
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
    pg.archive_all();
    Markers {
        time_after,
        lsn_after,
        xid_of,
        accounts,
        history,
    }
}

/// By time: between markers 2 and 3.
fn recovers_by_time(a: &Archived, m: &Markers) {
    let r = a.recover(
        "by-time",
        &[
            "--target-time",
            &m.time_after[1],
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1, 2]);
    amcheck(&r);
    // The unlogged table is there, empty (only its init fork was backed up).
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM scratch"), "0");
}

/// By LSN: just after marker 3's commit.
fn recovers_by_lsn(a: &Archived, m: &Markers) {
    let r = a.recover(
        "by-lsn",
        &[
            "--target-lsn",
            &m.lsn_after[2],
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3]);
}

/// By transaction id, inclusive and exclusive.
fn recovers_by_xid(a: &Archived, m: &Markers) {
    let r = a.recover(
        "by-xid",
        &["--target-xid", &m.xid_of[4], "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4, 5]);
    drop(r);
    let r = a.recover(
        "by-xid-excl",
        &[
            "--target-xid",
            &m.xid_of[4],
            "--target-exclusive",
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4]);
}

/// By restore point name.
fn recovers_by_name(a: &Archived) {
    let r = a.recover(
        "by-name",
        &["--target-name", "after-4", "--target-action", "promote"],
        false,
    );
    assert_eq!(markers(&r), [1, 2, 3, 4]);
}

/// Replay everything: every marker and the same pgbench state.
fn replays_to_the_end(a: &Archived, m: &Markers) {
    let r = a.recover("to-end", &["--target-action", "promote"], false);
    assert_eq!(markers(&r), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT sum(abalance), count(*) FROM pgbench_accounts"
        ),
        m.accounts
    );
    assert_eq!(
        r.psql("postgres", "SELECT count(*) FROM pgbench_history"),
        m.history
    );
    amcheck(&r);
}

/// Errors: a target before the only backup, a target past the archive, a non-empty
/// directory.
fn refuses_bad_targets_and_a_busy_directory(a: &Archived) {
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
    let now = a.pg.psql("postgres", "SELECT clock_timestamp()");
    let (_, out) = a.restore("too-late-time", &["--target-time", &now]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("after the newest archived WAL"),
        "{}",
        stderr(&out)
    );
    let busy = a.holder.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep-me"), "x").unwrap();
    let (_, out) = a.restore("busy", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(busy.join("keep-me").exists());
}

/// A segment missing from the archive after the backup: replay-to-end is refused and
/// names it, and nothing is written.
fn refuses_a_gap_in_the_archive(a: &Archived, m: &Markers) {
    let pg = &a.pg;
    let gap = pg.psql(
        "postgres",
        &format!("SELECT pg_walfile_name('{}')", m.lsn_after[5]),
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
    r.archive_all();
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
    common::refused_without_snapshot(&env, &out, None, &["archive_mode = on"], 0);
}

impl Archived {
    /// The objects of the WAL archive, by file name.
    fn wal_objects(&self) -> Vec<PathBuf> {
        common::list_files(&self.repo.join("wal"))
    }

    /// Delete the archived WAL file `name` from the repository.
    fn lose_wal(&self, name: &str) {
        let obj = self
            .wal_objects()
            .into_iter()
            .find(|p| p.file_name().unwrap().to_str().unwrap() == name)
            .unwrap_or_else(|| panic!("{name} is not in the archive"));
        std::fs::remove_file(obj).unwrap();
    }

    /// Fill and finish `n` segments (a row each, then a switch), archived.
    fn more_segments(&self, n: usize) {
        self.pg
            .psql("postgres", "CREATE TABLE IF NOT EXISTS filler (x int)");
        for i in 0..n {
            self.pg.psql("postgres", "INSERT INTO filler VALUES (1)");
            if i + 1 < n {
                self.pg.psql("postgres", "SELECT pg_switch_wal()");
            }
        }
        // The last switch, and waiting for the archiver.
        self.archive_all();
    }

    /// `coffer ARGS…`, which must succeed; what it said on stderr.
    fn ok_stderr(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "coffer {args:?}: {}", stderr(&out));
        stderr(&out)
    }

    /// `coffer wal-verify ARGS…`.
    fn wal_verify(&self, args: &[&str]) -> Output {
        self.cmd().arg("wal-verify").args(args).output().unwrap()
    }

    fn wal_verify_json(&self) -> (Option<i32>, serde_json::Value) {
        let out = self.wal_verify(&["--json"]);
        let v =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        (out.status.code(), v)
    }
}

fn segno(name: &str) -> u64 {
    u64::from_str_radix(&name[8..16], 16).unwrap() * 256
        + u64::from_str_radix(&name[16..24], 16).unwrap()
}

fn is_segment(p: &Path) -> bool {
    let n = p.file_name().unwrap().to_str().unwrap();
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn wal_verify_names_a_missing_segment() {
    let a = Archived::new();
    // Nothing archived and no base backup yet: fine, with a note.
    let out = a.wal_verify(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = a.base_backup();
    let short = &backup["id"].as_str().unwrap()[..8];
    a.more_segments(3);
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["backups"][0]["status"], "ok");
    assert_eq!(v["backups"][0]["short_id"], short);
    let window = &v["window"];
    assert_eq!(window["earliest_backup"], backup["id"]);
    let latest = window["latest_segment"].as_str().unwrap().to_string();
    let stop = v["backups"][0]["stop_wal"].as_str().unwrap().to_string();
    assert!(segno(&latest) >= segno(&stop) + 3, "{v:#}");
    assert!(window["latest_archived_at"].is_string(), "{v:#}");
    // The segments after the backup hold commits: pg_waldump finds the newest.
    assert!(v["latest_commit_time"].is_string(), "{v:#}");
    let text = a.wal_verify(&[]);
    assert!(text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("recoverable window: from"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // Lose a segment between the backup's end and the newest one.
    let victim = a
        .wal_objects()
        .into_iter()
        .filter(|p| is_segment(p))
        .find(|p| segno(p.file_name().unwrap().to_str().unwrap()) == segno(&stop) + 2)
        .expect("a segment after the backup");
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(&victim).unwrap();
    let out = a.wal_verify(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&name), "{}", stderr(&out));
    assert!(stderr(&out).contains(short), "{}", stderr(&out));
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(3));
    assert_eq!(v["ok"], false);
    assert_eq!(v["gaps"][0]["first"], name.as_str());
    assert_eq!(v["gaps"][0]["count"], 1);
    assert_eq!(v["gaps"][0]["backups"][0], short);
    assert_eq!(v["backups"][0]["status"], "gap");
    // Recoverable up to the missing segment.
    assert_eq!(
        segno(v["window"]["latest_segment"].as_str().unwrap()),
        segno(&name) - 1
    );

    // Losing one of the backup's own segments makes it unrestorable.
    a.lose_wal(&stop);
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(3));
    assert_eq!(v["backups"][0]["status"], "incomplete");
    assert!(v["window"].is_null());
}

#[test]
fn wal_verify_follows_a_new_timeline() {
    let a = Archived::new();
    a.base_backup();
    a.pg.psql("postgres", "CREATE TABLE marker (id int PRIMARY KEY)");
    a.pg.psql("postgres", "INSERT INTO marker VALUES (1)");
    a.archive_all();
    // Replay everything and promote: timeline 2, archived into the same repository.
    let r = a.recover("tl2", &["--target-action", "promote"], true);
    assert_eq!(markers(&r), [1]);
    // Two segments on timeline 2.
    r.psql("postgres", "INSERT INTO marker VALUES (2)");
    r.psql("postgres", "SELECT pg_switch_wal()");
    r.psql("postgres", "INSERT INTO marker VALUES (3)");
    let seg = r.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(seg.starts_with("00000002"), "{seg}");
    r.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.psql(
        "postgres",
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < seg
    {
        assert!(
            Instant::now() < deadline,
            "timeline 2 not archived:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = a.wal_verify(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("follows timeline(s) 1 → 2): ok"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["backups"][0]["timelines"], serde_json::json!([1, 2]));
    assert_eq!(v["window"]["latest_timeline"], 2);
    assert!(segno(v["window"]["latest_segment"].as_str().unwrap()) >= segno(&seg));
    let tl2 = v["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 2)
        .unwrap();
    assert_eq!(tl2["parent"], 1);
    assert_eq!(tl2["history_file"], true);

    // Timeline 2's first segment lost: a gap on the new timeline (its second one follows).
    let first = tl2["first_segment"].as_str().unwrap().to_string();
    a.lose_wal(&first);
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(v["gaps"][0]["first"], first.as_str());

    // The original server goes on along timeline 1 and archives the same segment numbers:
    // recovery along timeline 2 still cannot pass the missing segment, and restore says so
    // instead of letting PostgreSQL end recovery early at the gap.
    a.more_segments(3);
    let (_, out) = a.restore("masked", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("WAL segment {first} is missing from the archive")),
        "{}",
        stderr(&out)
    );
    let (_, out) = a.restore("along-tl1", &["--target-timeline", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn forget_removes_wal_no_kept_base_backup_needs() {
    let a = Archived::new();
    a.pg.psql("postgres", "CREATE TABLE marker (id int PRIMARY KEY)");
    a.pg.psql("postgres", "INSERT INTO marker VALUES (1)");
    let first = a.base_backup();
    a.more_segments(3);
    let second = a.base_backup();
    a.pg.psql("postgres", "INSERT INTO marker VALUES (2)");
    a.archive_all();
    let snaps = a.cmd().args(["snapshots", "--json"]).output().unwrap();
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&snaps.stdout).unwrap();
    for s in &snaps {
        assert_eq!(
            s["requires"],
            serde_json::json!({"postgres-physical": "0.1.0"}),
            "{s}"
        );
    }
    let start2 = snaps.iter().find(|s| s["id"] == second["id"]).unwrap()["sources"][0]["metadata"]
        ["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    let before = a.wal_objects();
    let old = |objs: &[PathBuf]| -> Vec<PathBuf> {
        objs.iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.len() >= 24 && !n.ends_with(".history") && segno(n) < segno(&start2)
            })
            .cloned()
            .collect()
    };
    assert!(old(&before).len() >= 4, "{before:?}");

    // Dry run: lists, deletes nothing.
    let said = a.ok_stderr(&["forget", "--keep-last", "1", "--dry-run"]);
    assert!(said.contains("would remove"), "{said}");
    assert!(said.contains(&start2), "{said}");
    assert_eq!(a.wal_objects(), before);

    let said = a.ok_stderr(&["forget", "--keep-last", "1"]);
    assert!(said.contains("WAL archive: removed"), "{said}");
    let after = a.wal_objects();
    assert!(old(&after).is_empty(), "{after:?}");
    // Plus the horizon, which says that WAL was removed on purpose.
    assert_eq!(after.len(), before.len() - old(&before).len() + 1);
    assert!(after.iter().any(|p| p.ends_with("wal/archive")));
    assert!(after.iter().any(|p| p.ends_with("wal/retention")));
    // Nothing left to remove on a second run.
    let said = a.ok_stderr(&["forget", "--keep-last", "1"]);
    assert!(said.contains("nothing to remove"), "{said}");
    assert_eq!(a.wal_objects(), after);
    let snaps = a.cmd().args(["snapshots", "--json"]).output().unwrap();
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_ne!(snaps[0]["id"], first["id"]);

    // Forgetting the last base backup would leave the WAL alone.
    let said = a.ok_stderr(&[
        "forget",
        "--dry-run",
        snaps[0]["short_id"].as_str().unwrap(),
    ]);
    assert!(
        said.contains("no physical base backup of the archived cluster is kept"),
        "{said}"
    );

    // The kept backup still verifies and recovers.
    let (code, v) = a.wal_verify_json();
    assert_eq!(code, Some(0), "{v:#}");
    let r = a.recover("kept", &["--target-action", "promote"], false);
    assert_eq!(markers(&r), [1, 2]);
}

#[test]
fn tablespaces_are_restored_moved_and_updated_in_place() {
    let a = Archived::new();
    let pg = &a.pg;
    let ts1 = a.holder.join("ts1");
    std::fs::create_dir(&ts1).unwrap();
    chown_to_server_user(&ts1);
    pg.psql(
        "postgres",
        &format!("CREATE TABLESPACE ts LOCATION '{}'", ts1.display()),
    );
    pg.psql(
        "postgres",
        "CREATE TABLE big (id int PRIMARY KEY USING INDEX TABLESPACE ts, pad text) TABLESPACE ts;
         INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;
         CREATE TABLE marker (id int PRIMARY KEY)",
    );
    a.base_backup();
    pg.psql(
        "postgres",
        "INSERT INTO big SELECT g, repeat('y', 100) FROM generate_series(20001, 30000) g;
         INSERT INTO marker VALUES (1)",
    );
    let t1 = pg.psql("postgres", "SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO marker VALUES (2)");
    a.archive_all();

    // The original location is in use by the running cluster.
    let (_, out) = a.restore("moved", &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is not empty") && err.contains("--tablespace-map ts=DIR"),
        "{err}"
    );
    let (_, out) = a.restore("moved", &["--tablespace-map", "nosuch=/tmp/x"]);
    assert!(
        stderr(&out).contains("has no such tablespace; it has ts ("),
        "{}",
        stderr(&out)
    );

    let ts2 = a.holder.join("ts2");
    let map = format!("ts={}", ts2.display());
    let r = a.recover(
        "moved",
        &[
            "--tablespace-map",
            &map,
            "--target-time",
            &t1,
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(markers(&r), [1]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM big"), "30000");
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"
        ),
        ts2.display().to_string()
    );
    amcheck(&r);
    let relpath = r.psql("postgres", "SELECT pg_relation_filepath('big')");
    drop(r);
    // The original cluster and its tablespace are untouched.
    assert_eq!(markers(pg), [1, 2]);
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM big"), "30000");

    // Damage the moved table's file (same size) and leave a stray file: --delta rewrites
    // the one, removes the other and keeps what is unchanged.
    let rel_in_ts2 = ts2.join(relpath.splitn(3, '/').nth(2).unwrap());
    let len = std::fs::metadata(&rel_in_ts2).unwrap().len();
    std::fs::write(&rel_in_ts2, vec![0x55u8; len as usize]).unwrap();
    let stray = a.holder.join("moved").join("stray.txt");
    std::fs::write(&stray, "not in the backup").unwrap();
    // Links planted in the tablespace directory and the data directory must not lead the
    // delta restore outside: a hard link to an outside copy of an unchanged file (which
    // would otherwise be kept and chowned in place), and pg_tblspc/OID pointing elsewhere.
    let outside = a.holder.join("outside-ts");
    let oid = a.pg.psql(
        "postgres",
        "SELECT oid FROM pg_tablespace WHERE spcname = 'ts'",
    );
    // A file that recovery left as the backup has it, so --delta could keep it.
    let kept = common::list_files(&ts2)
        .into_iter()
        .find(|f| {
            let rel = f.strip_prefix(&ts2).unwrap().display().to_string();
            let out = a
                .cmd()
                .args(["dump", "latest", &format!("/tablespaces/{oid}/{rel}")])
                .output()
                .unwrap();
            *f != rel_in_ts2 && out.status.success() && out.stdout == std::fs::read(f).unwrap()
        })
        .unwrap();
    common::make_outside(&outside, &[("copy", &std::fs::read(&kept).unwrap())]);
    // (Taken before the hard link is made: the restore replaces it, leaving one link.)
    let before = common::fingerprint(&outside);
    std::fs::remove_file(&kept).unwrap();
    std::fs::hard_link(outside.join("copy"), &kept).unwrap();
    let link = a.holder.join("moved/pg_tblspc").join(&oid);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let (_, out) = a.restore("moved", &["--tablespace-map", &map]);
    assert!(stderr(&out).contains("--delta"), "{}", stderr(&out));
    let (dir, out) = a.restore(
        "moved",
        &[
            "--delta",
            "--json",
            "--tablespace-map",
            &map,
            "--target-action",
            "promote",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"].as_u64().unwrap();
    let unchanged = v["unchanged_files"].as_u64().unwrap();
    assert!(unchanged > files / 2 && unchanged < files, "{v}");
    assert!(v["removed"].as_u64().unwrap() >= 1, "{v}");
    assert!(!stray.exists());
    assert_eq!(common::fingerprint(&outside), before);
    assert_eq!(std::fs::read_link(&link).unwrap(), ts2);
    let r = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(markers(&r), [1, 2]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM big"), "30000");
    assert_eq!(
        r.psql("postgres", "SELECT count(*) FROM big WHERE pad LIKE 'x%'"),
        "20000"
    );
    amcheck(&r);
}

#[test]
fn forget_keeps_wal_a_recovery_holds_and_refuses_wal_it_removed() {
    let a = Archived::new();
    a.pg.psql("postgres", "CREATE TABLE marker (id int PRIMARY KEY)");
    a.pg.psql("postgres", "INSERT INTO marker VALUES (1)");
    let first = a.base_backup();
    a.more_segments(3);
    a.base_backup();
    a.pg.psql("postgres", "INSERT INTO marker VALUES (2)");
    a.archive_all();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = a.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "coffer {args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let snaps = json(&["snapshots", "--json"]);
    let first_snap = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == first["id"])
        .unwrap();
    let start1 = first_snap["sources"][0]["metadata"]["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    let first_short = first_snap["short_id"].as_str().unwrap().to_string();

    // Restore the older base backup. Its recovery has not started yet.
    let (dir, out) = a.restore(
        "held",
        &[
            first["id"].as_str().unwrap(),
            "--target-action",
            "promote",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = v["wal_hold"]["id"].as_str().unwrap().to_string();
    assert_eq!(v["wal_hold"]["start_wal"], start1.as_str());
    let holds = || json(&["wal-hold", "list", "--json"]);
    let h = holds();
    assert_eq!(h.as_array().unwrap().len(), 1, "{h:#}");
    assert_eq!(h[0]["id"], hold.as_str());
    assert_eq!(h[0]["expired"], false);

    // A wal-fetch with the hold refreshes it, but not on every call: a stamp file says when
    // it last did, and ten minutes later the next call refreshes again.
    let scratch = a.holder.join("scratch/pg_wal");
    std::fs::create_dir_all(&scratch).unwrap();
    let fetch = |name: &str| {
        let out = a
            .cmd()
            .args(["wal-fetch", "--prefetch", "0", "--hold", &hold, name])
            .arg(scratch.join("RECOVERYXLOG"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let refreshed = || holds()[0]["refreshed"].as_str().unwrap().to_string();
    let r0 = refreshed();
    fetch(&start1);
    let r1 = refreshed();
    assert_ne!(r0, r1);
    fetch(&start1);
    assert_eq!(refreshed(), r1);
    let stamp = scratch
        .join(".coffer-prefetch")
        .join(format!(".hold-{hold}"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stamp)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(11 * 60))
        .unwrap();
    fetch(&start1);
    assert_ne!(refreshed(), r1);

    // Forget the older backup while the restored cluster still needs its WAL: the held WAL
    // stays, and forget says so (also in --json).
    let v = json(&["forget", "--dry-run", "--json", &first_short]);
    assert_eq!(v["wal"]["held_by"], hold.as_str(), "{v:#}");
    assert_eq!(v["wal"]["keep_from"], start1.as_str(), "{v:#}");
    assert_eq!(v["wal"]["holds"][0]["id"], hold.as_str(), "{v:#}");
    let said = a.ok_stderr(&["forget", &first_short]);
    assert!(
        said.contains(&format!("kept from {start1} on for WAL hold {hold}")),
        "{said}"
    );
    assert!(
        a.wal_objects().iter().any(|p| p.ends_with(&start1)),
        "{said}"
    );
    // The recovery fetches all it needs, and releases the hold when it ends.
    let r = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(markers(&r), [1, 2]);
    drop(r);
    assert_eq!(holds(), serde_json::json!([]));

    // Now forget removes that WAL and records how far: fetching it fails (126, with a
    // message), it is never "not archived" (1), which would end a recovery early.
    let said = a.ok_stderr(&["forget", "--keep-last", "1"]);
    assert!(said.contains("WAL archive: removed"), "{said}");
    assert!(!a.wal_objects().iter().any(|p| p.ends_with(&start1)));
    let dest = scratch.join("RECOVERYXLOG");
    let out = a
        .cmd()
        .args(["wal-fetch", &start1])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed from the archive by WAL retention"),
        "{}",
        stderr(&out)
    );
    // What is simply not archived still answers 1: a history file, a segment past the end.
    for name in ["00000009.history", "00000001000000AA00000000"] {
        let out = a
            .cmd()
            .args(["wal-fetch", name])
            .arg(&dest)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
    }
}

/// `restore --pgdata` keeps the cluster's `postgresql.auto.conf` byte for byte (ALTER SYSTEM
/// settings, bytes that are not UTF-8) and only adds its recovery settings; the file used to
/// be dropped when it was not UTF-8.
#[test]
fn restore_keeps_alter_system_settings_in_any_encoding() {
    let a = Archived::new();
    let pg = &a.pg;
    pg.psql("postgres", "ALTER SYSTEM SET work_mem = '7MB'");
    let auto = pg.data_dir().join("postgresql.auto.conf");
    let mut conf = std::fs::read(&auto).unwrap();
    conf.extend_from_slice(b"# caf\xe9 (Latin-1, written by an admin)\n");
    std::fs::write(&auto, &conf).unwrap();
    a.base_backup();
    a.archive_all();
    let (dir, out) = a.restore(
        "restored",
        &["--target-immediate", "--target-action", "promote"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = std::fs::read(dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        restored.starts_with(&conf),
        "{}",
        String::from_utf8_lossy(&restored)
    );
    let text = String::from_utf8_lossy(&restored);
    assert!(text.contains("restore_command = "), "{text}");
    assert!(text.contains("recovery_target = 'immediate'"), "{text}");
    let recovered = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(recovered.psql("postgres", "SHOW work_mem"), "7MB");
}

#[test]
fn pgdata_restore_never_writes_through_links_planted_in_the_target() {
    use std::os::unix::fs::symlink;
    let a = Archived::new();
    a.pg.psql(
        "postgres",
        "CREATE TABLE marker (id int PRIMARY KEY); INSERT INTO marker VALUES (1)",
    );
    a.base_backup();
    a.archive_all();
    let (dir, out) = a.restore("planted", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outside = a.holder.join("outside");
    let control = std::fs::read(dir.join("global/pg_control")).unwrap();
    common::make_outside(
        &outside,
        &[
            ("pg_control", &control),
            ("auto.conf", b"outside"),
            ("recovery.toml", b"outside"),
            ("notify/stray", b"outside"),
            ("tblspc/stray", b"outside"),
            ("base/stray", b"outside"),
        ],
    );
    let before = common::fingerprint(&outside);
    let plant = |dir: &Path| {
        // A hard link to an outside copy of a file whose content is right.
        let _ = std::fs::remove_file(dir.join("global/pg_control"));
        std::fs::hard_link(outside.join("pg_control"), dir.join("global/pg_control")).unwrap();
        // Links where directories go, at a file's name and at coffer's own files.
        for (name, to) in [
            ("pg_notify", "notify"),
            ("pg_tblspc", "tblspc"),
            ("base", "base"),
            ("postgresql.auto.conf", "auto.conf"),
            ("coffer-recovery.toml", "recovery.toml"),
        ] {
            let p = dir.join(name);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                let _ = std::fs::remove_file(&p);
            }
            symlink(outside.join(to), &p).unwrap();
        }
    };
    plant(&dir);
    let (_, out) = a.restore("planted", &["--delta", "--target-action", "promote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::fingerprint(&outside),
        before,
        "--delta wrote outside"
    );
    plant(&dir);
    let (_, out) = a.restore("planted", &["--force", "--target-action", "promote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        common::fingerprint(&outside),
        before,
        "--force wrote outside"
    );
    let r = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(markers(&r), [1]);
}

/// `restore --pgdata` makes every restored file durable (a syncfs of the data directory's
/// file system) and flushes the directory before `recovery.signal` gets its name, and
/// flushes the directory again after, so a data directory that has the signal is complete
/// even after a power failure. Watched with strace.
#[test]
fn pgdata_restore_is_durable_before_recovery_signal_appears() {
    let a = Archived::new();
    a.base_backup();
    a.archive_all();
    let dir = a.holder.canonicalize().unwrap().join("traced");
    let log = a.holder.join("restore.strace");
    let mut c = std::process::Command::new(common::strace::binary());
    common::clean_env(&mut c);
    let out = c
        .envs(a.archive.vars())
        .args(["-f", "-y", "-qq", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
        ])
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args([
            "restore",
            "--target-immediate",
            "--target-action",
            "promote",
            "--pgdata",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = common::strace::completed_calls(&std::fs::read_to_string(&log).unwrap());
    let at_dir = format!("<{}>", dir.display());
    let signal = calls
        .iter()
        .position(|l| l.contains("rename") && l.contains("\"recovery.signal\""))
        .unwrap_or_else(|| panic!("recovery.signal was not renamed into place:\n{calls:#?}"));
    let synced_fs = calls[..signal]
        .iter()
        .rposition(|l| l.contains("syncfs(") && l.contains(&dir.display().to_string()))
        .unwrap_or_else(|| panic!("no syncfs of {at_dir} before recovery.signal:\n{calls:#?}"));
    // Every restored file was named before that syncfs (pg_control last of all).
    let last_file = calls[..signal]
        .iter()
        .rposition(|l| l.contains("rename") && l.contains("\"pg_control\""))
        .expect("pg_control was not renamed into place");
    assert!(
        last_file < synced_fs,
        "pg_control named after the syncfs:\n{calls:#?}"
    );
    assert!(
        calls[synced_fs..signal]
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&at_dir)),
        "{at_dir} was not flushed before recovery.signal:\n{calls:#?}"
    );
    assert!(
        calls[signal..]
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&at_dir)),
        "{at_dir} was not flushed after recovery.signal:\n{calls:#?}"
    );
    let recovered = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(recovered.psql("postgres", "SELECT 1"), "1");
}
