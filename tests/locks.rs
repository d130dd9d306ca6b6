//! Locks fail closed, and forget plans only from every snapshot: against local
//! repositories, through the coffer binary (objects damaged on disk or crafted through the
//! library).

mod common;

use coffer::backend::{FileKind, LocalBackend};
use coffer::repo::lock::LockInfo;
use coffer::repo::Repository;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open(env: &Env) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(&env.repo)), b"correct horse").unwrap()
}

/// Run coffer with `args`, require exit code `code`, return stderr.
fn fails(env: &Env, args: &[&str], code: i32) -> String {
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "coffer {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "coffer {args:?} failed ({}): {stderr}",
        out.status
    );
    stderr
}

/// A repository with one small snapshot, and the file it backs up.
fn repo_with_a_backup() -> (Env, PathBuf) {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), noise(1, 100_000)).unwrap();
    env.backup(&[src.to_str().unwrap()]);
    (env, src)
}

const LOCK_NAME: &str = "4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c4c0c";

fn lock_path(env: &Env) -> PathBuf {
    env.repo.join("locks").join(LOCK_NAME)
}

fn age(p: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - secs, 0);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

/// Every lock-taking command refuses while a damaged lock is there (exit 5, naming it).
fn assert_refused_by_damaged_lock(env: &Env, src: &Path) {
    let named = format!("locks/{LOCK_NAME}");
    for args in [
        vec!["prune"],
        vec!["backup", src.to_str().unwrap()],
        vec!["forget", "--keep-last", "1"],
        vec!["check"],
    ] {
        let err = fails(env, &args, 5);
        assert!(err.contains(&named), "{args:?}: {err}");
        assert!(err.contains("cannot be read"), "{args:?}: {err}");
    }
}

#[test]
fn a_damaged_lock_blocks_until_unlock_removes_it() {
    let (env, src) = repo_with_a_backup();
    let packs = env.packs();
    fs::write(lock_path(&env), noise(7, 200)).unwrap();
    assert_refused_by_damaged_lock(&env, &src);
    assert_eq!(
        env.packs(),
        packs,
        "prune deleted packs past a damaged lock"
    );
    assert_eq!(env.snapshots().len(), 1);

    // A fresh damaged lock could be a running coffer's: plain unlock keeps it and says so.
    let said = ok(&env, &["unlock"]);
    assert!(
        said.contains(&format!("kept damaged lock locks/{LOCK_NAME}")),
        "{said}"
    );
    assert!(lock_path(&env).exists());
    // Once older than any live lock can be, plain unlock removes it, naming it.
    age(&lock_path(&env), 31 * 60);
    let said = ok(&env, &["unlock"]);
    assert!(
        said.contains(&format!("removed damaged lock locks/{LOCK_NAME}")),
        "{said}"
    );
    assert!(!lock_path(&env).exists());
    ok(&env, &["prune"]);
    ok(&env, &["check", "--read-data"]);
}

#[test]
fn a_truncated_lock_blocks_and_unlock_remove_all_removes_it() {
    let (env, src) = repo_with_a_backup();
    // A real exclusive lock of a live process, cut short on disk.
    let repo = open(&env);
    let info = LockInfo {
        time: chrono::Utc::now(),
        exclusive: true,
        hostname: "elsewhere".into(),
        username: "u".into(),
        pid: 1,
        operation: "prune".into(),
    };
    let id = repo.save_json(FileKind::Lock, &info).unwrap();
    let real = env.repo.join("locks").join(id.to_hex());
    let bytes = fs::read(&real).unwrap();
    fs::remove_file(&real).unwrap();
    fs::write(lock_path(&env), &bytes[..bytes.len() / 2]).unwrap();
    assert_refused_by_damaged_lock(&env, &src);
    let said = ok(&env, &["unlock", "--remove-all"]);
    assert!(
        said.contains(&format!("removed damaged lock locks/{LOCK_NAME}")),
        "{said}"
    );
    assert!(list_files(&env.repo.join("locks")).is_empty());
    ok(&env, &["backup", src.to_str().unwrap()]);
}

#[test]
fn a_lock_that_cannot_be_read_stops_every_locker() {
    let (env, src) = repo_with_a_backup();
    let packs = env.packs();
    // A lock the storage lists but cannot read back: reading it fails with EISDIR (the
    // same as a GET failing), not "not found".
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, lock_path(&env)).unwrap();
    let named = format!("locks/{LOCK_NAME}");
    for args in [
        vec!["prune"],
        vec!["backup", src.to_str().unwrap()],
        vec!["forget", "--keep-last", "1"],
        // Whether it is stale cannot be told either.
        vec!["unlock"],
    ] {
        let err = fails(&env, &args, 7);
        assert!(
            err.contains(&format!("cannot read lock {named}")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.packs(), packs);
    assert_eq!(env.snapshots().len(), 1);
    // The way out: remove every lock without reading it.
    let said = ok(&env, &["unlock", "--remove-all"]);
    assert!(said.contains(&named), "{said}");
    assert!(fs::symlink_metadata(lock_path(&env)).is_err());
    assert!(elsewhere.is_dir(), "unlock removed what the link points to");
    ok(&env, &["prune"]);
}

#[test]
fn stale_and_live_locks_are_told_apart_as_before() {
    let (env, src) = repo_with_a_backup();
    // A readable, fresh exclusive lock of another host: everyone waits, unlock keeps it.
    let repo = open(&env);
    let mut info = LockInfo {
        time: chrono::Utc::now(),
        exclusive: true,
        hostname: "elsewhere".into(),
        username: "u".into(),
        pid: 1,
        operation: "prune".into(),
    };
    let live = repo.save_json(FileKind::Lock, &info).unwrap();
    let err = fails(&env, &["backup", src.to_str().unwrap()], 5);
    assert!(err.contains("an exclusive lock by u@elsewhere"), "{err}");
    assert!(ok(&env, &["unlock"]).contains("removed 0 lock(s)"));
    fs::remove_file(env.repo.join("locks").join(live.to_hex())).unwrap();
    // The same lock 31 minutes old is stale: taken for gone, removed by unlock.
    info.time = chrono::Utc::now() - chrono::Duration::minutes(31);
    repo.save_json(FileKind::Lock, &info).unwrap();
    ok(&env, &["backup", src.to_str().unwrap()]);
    assert!(ok(&env, &["unlock"]).contains("removed 1 lock(s)"));
    assert!(list_files(&env.repo.join("locks")).is_empty());
}

#[test]
fn forget_stops_on_a_damaged_snapshot_before_deleting_anything() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    for (i, t) in [
        "2024-01-01T00:00:00Z",
        "2024-01-02T00:00:00Z",
        "2024-01-03T00:00:00Z",
    ]
    .iter()
    .enumerate()
    {
        fs::write(src.join("a"), noise(i as u64, 1000)).unwrap();
        ids.push(env.backup(&[src.to_str().unwrap(), "--time", t]));
    }
    // The newest snapshot is damaged. Deciding on the two others alone, --keep-last 1
    // would keep the middle one and remove the oldest.
    let newest = env.repo.join("snapshots").join(&ids[2]);
    let mut bytes = fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    fs::write(&newest, &bytes).unwrap();
    for args in [
        vec!["forget", "--keep-last", "1", "--dry-run"],
        vec!["forget", "--keep-last", "1"],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["forget", &ids[0][..8]],
    ] {
        let err = fails(&env, &args, 3);
        assert!(
            err.contains(&format!("snapshots/{}", ids[2])),
            "{args:?}: {err}"
        );
    }
    for id in &ids {
        assert!(
            env.repo.join("snapshots").join(id).exists(),
            "forget removed {id}"
        );
    }
}
