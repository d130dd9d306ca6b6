//! The WAL archive contract (`wal-push` / `wal-fetch`) with segments from real clusters,
//! and PostgreSQL itself using `coffer wal-push %p` as its archive_command.

mod common;

use common::pg::PgCluster;
use common::Env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Make some WAL and switch to a new segment; returns the finished segment's name.
fn finished_segment(pg: &PgCluster) -> String {
    pg.psql(
        "postgres",
        "CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler SELECT generate_series(1, 1000);",
    );
    let name = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    name
}

fn copy_segment(pg: &PgCluster, name: &str, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let dest = to.join(name);
    std::fs::copy(pg.data_dir().join("pg_wal").join(name), &dest).unwrap();
    dest
}

#[test]
fn the_archive_contract_holds() {
    let pg = PgCluster::start();
    let other = PgCluster::start();
    let env = Env::new();
    env.init();
    let seg_name = finished_segment(&pg);
    let seg = copy_segment(&pg, &seg_name, &env.path("wal-a"));
    let bytes = std::fs::read(&seg).unwrap();

    // Push, then push the same again: both succeed.
    for _ in 0..2 {
        let out = env.cmd().args(["wal-push"]).arg(&seg).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let stored = common::list_files(&env.repo.join("wal"));
    assert!(
        stored
            .iter()
            .any(|p| p.ends_with(format!("{}/{seg_name}", &seg_name[..16]))),
        "{stored:?}"
    );
    // Nothing of the segment is readable in the stored object.
    let obj = stored.iter().find(|p| p.ends_with(&seg_name)).unwrap();
    let raw = std::fs::read(obj).unwrap();
    assert!(!raw.windows(16).any(|w| w == &bytes[24..40]));
    assert_eq!(
        std::fs::metadata(obj).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Different content under the same name is refused.
    let mut changed = bytes.clone();
    changed[bytes.len() / 2] ^= 0xff;
    let bad_dir = env.path("wal-changed");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join(&seg_name), &changed).unwrap();
    let out = env
        .cmd()
        .arg("wal-push")
        .arg(bad_dir.join(&seg_name))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );

    // A segment of another cluster is refused.
    let foreign_name = finished_segment(&other);
    let foreign = copy_segment(&other, &foreign_name, &env.path("wal-b"));
    let out = env.cmd().arg("wal-push").arg(&foreign).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("system identifier"),
        "{}",
        stderr(&out)
    );

    // A torn copy (shorter than a segment) is refused.
    let torn_dir = env.path("wal-torn");
    std::fs::create_dir_all(&torn_dir).unwrap();
    let torn_name = format!("{}FF", &seg_name[..22]);
    std::fs::write(torn_dir.join(&torn_name), &bytes[..8192]).unwrap();
    let out = env
        .cmd()
        .arg("wal-push")
        .arg(torn_dir.join(&torn_name))
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Fetch gives the exact bytes.
    let restore_dir = env.path("pg_wal");
    std::fs::create_dir_all(&restore_dir).unwrap();
    let dest = restore_dir.join("RECOVERYXLOG");
    let out = env
        .cmd()
        .args(["wal-fetch", &seg_name])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == bytes);

    // A missing file: exit 1, no file left behind, nothing printed.
    let missing = restore_dir.join("RECOVERYHISTORY");
    for name in ["00000002.history", "0000000100000000000000F0"] {
        let out = env
            .cmd()
            .args(["wal-fetch", name])
            .arg(&missing)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
        assert!(!missing.exists());
    }
    let leftovers: Vec<_> = std::fs::read_dir(&restore_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "RECOVERYXLOG" && n != ".coffer-prefetch")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // History files go through too.
    let hist_dir = env.path("hist");
    std::fs::create_dir_all(&hist_dir).unwrap();
    std::fs::write(
        hist_dir.join("00000002.history"),
        "1\t0/3000000\tbefore 2024\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .arg("wal-push")
        .arg(hist_dir.join("00000002.history"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .cmd()
        .args(["wal-fetch", "00000002.history"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&missing).unwrap(),
        "1\t0/3000000\tbefore 2024\n"
    );

    // Not a WAL file name; a wrong passphrase is not "not found" (recovery must stop).
    let out = env
        .cmd()
        .args(["wal-push", "/etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = env
        .cmd()
        .env("COFFER_PASSWORD", "wrong")
        .args(["wal-fetch", &seg_name])
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[test]
fn postgres_archives_through_coffer() {
    // A first cluster only to host the repository directory next to it.
    let holder = tempfile::tempdir().unwrap();
    std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = holder.path().join("repo");
    let pwfile = holder.path().join("pw");
    std::fs::write(&pwfile, "archive secret").unwrap();
    let coffer = assert_cmd::cargo::cargo_bin("coffer");
    let mut init = assert_cmd::Command::new(&coffer);
    common::clean_env(&mut init);
    init.env("COFFER_REPO", &repo)
        .env("COFFER_PASSWORD_FILE", &pwfile)
        .args(["init"])
        .assert()
        .success();
    let archive_command = format!(
        "COFFER_REPO='{}' COFFER_PASSWORD_FILE='{}' '{}' wal-push %p",
        repo.display(),
        pwfile.display(),
        coffer.display()
    );
    // The server user must own the repository and the password file.
    if unsafe { libc::geteuid() } == 0 {
        let st = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(holder.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let pg = PgCluster::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &archive_command),
        ("archive_timeout", "0"),
    ]);

    // Several segments in a row: every one is archived, none is lost.
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(finished_segment(&pg));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = pg.psql(
            "postgres",
            "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        );
        let ready = std::fs::read_dir(pg.data_dir().join("pg_wal/archive_status"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".ready")
            })
            .count();
        let parts: Vec<&str> = row.split('|').collect();
        if ready == 0 && parts[2] >= names.last().unwrap().as_str() {
            assert_eq!(parts[1], "0", "archive failures: {}", pg.log());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archiving did not catch up: {row}, {ready} ready\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each segment can be fetched back, byte for byte equal to what the server wrote.
    let out_dir = holder.path().join("fetched");
    std::fs::create_dir_all(&out_dir).unwrap();
    for n in &names {
        let mut fetch = assert_cmd::Command::new(&coffer);
        common::clean_env(&mut fetch);
        let dest = out_dir.join(n);
        let out = fetch
            .env("COFFER_REPO", &repo)
            .env("COFFER_PASSWORD_FILE", &pwfile)
            .args(["wal-fetch", n])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "{n}: {}", stderr(&out));
        let live = pg.data_dir().join("pg_wal").join(n);
        if let Ok(orig) = std::fs::read(&live) {
            assert!(std::fs::read(&dest).unwrap() == orig, "{n} differs");
        }
    }
}

#[test]
fn one_call_pushes_the_whole_ready_backlog() {
    let pg = PgCluster::start();
    let env = Env::new();
    env.init();
    let pg_wal = env.path("data/pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let mut names = Vec::new();
    for _ in 0..6 {
        let n = finished_segment(&pg);
        copy_segment(&pg, &n, &pg_wal);
        std::fs::write(pg_wal.join("archive_status").join(format!("{n}.ready")), "").unwrap();
        names.push(n);
    }
    // PostgreSQL asks for the oldest; the call pushes all six with two workers.
    let out = env
        .cmd()
        .current_dir(env.path("data"))
        .args(["wal-push", "-j", "2"])
        .arg(format!("pg_wal/{}", names[0]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = common::list_files(&env.repo.join("wal"));
    for n in &names {
        assert!(
            stored.iter().any(|p| p.ends_with(n)),
            "{n} not archived: {stored:?}"
        );
    }
    for n in &names[1..] {
        assert!(
            pg_wal.join(".coffer-pushed").join(n).exists(),
            "no marker for {n}"
        );
    }
    // Asking for a segment pushed ahead answers from its marker, even with a wrong
    // passphrase (the repository is not opened), and consumes the marker.
    let out = env
        .cmd()
        .env("COFFER_PASSWORD", "wrong")
        .current_dir(env.path("data"))
        .arg("wal-push")
        .arg(format!("pg_wal/{}", names[1]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!pg_wal.join(".coffer-pushed").join(&names[1]).exists());
}
