//! Helpers shared by the integration tests: a coffer command with a clean environment,
//! checks on what a command did (succeeded, refused, refused without a snapshot),
//! generated trees, and a strict tree comparison.
#![allow(dead_code)]

pub mod http;
pub mod mariadb;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod strace;
pub mod tls;

use assert_cmd::Command;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        Env { dir, repo }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The variables that point coffer at this repository, with its passphrase and home.
    fn vars(&self) -> [(&'static str, OsString); 4] {
        [
            ("COFFER_HOME", self.dir.path().join("home").into()),
            ("COFFER_CACHE", self.dir.path().join("cache").into()),
            ("COFFER_REPO", self.repo.clone().into()),
            ("COFFER_PASSWORD", "correct horse".into()),
        ]
    }

    /// `coffer` with the repository and passphrase set and nothing inherited.
    pub fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("coffer").unwrap();
        clean_env(&mut c);
        c.envs(self.vars());
        c
    }

    /// `program` (coffer itself, or a tracer or `su` that runs it) as a
    /// `std::process::Command`, for a test that controls it while it runs, with the
    /// environment of [`Env::cmd`].
    pub fn std_cmd(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        clean_env(&mut c);
        c.envs(self.vars());
        c
    }

    pub fn init(&self) {
        self.cmd()
            .args(["init", "--pack-size", "4"])
            .assert()
            .success();
    }

    /// Run a backup and return the snapshot id from its JSON output.
    pub fn backup(&self, args: &[&str]) -> String {
        let mut all = vec!["backup", "--json"];
        all.extend_from_slice(args);
        self.json(&all)["id"].as_str().unwrap().to_string()
    }

    /// Run coffer with ARGS (which ask for `--json`), require success, parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "coffer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The repository's snapshots, from `snapshots --json`.
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.cmd().args(["snapshots", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        list_files(&self.repo.join("data"))
    }
}

impl Snapshots for Env {
    fn snapshots(&self) -> Vec<serde_json::Value> {
        Env::snapshots(self)
    }
}

/// A repository whose snapshots a test can list.
pub trait Snapshots {
    fn snapshots(&self) -> Vec<serde_json::Value>;
}

/// A command whose environment a test cleans: assert_cmd's or the standard library's.
pub trait EnvRemove {
    fn remove_env(&mut self, key: &OsStr);
}

impl EnvRemove for Command {
    fn remove_env(&mut self, key: &OsStr) {
        self.env_remove(key);
    }
}

impl EnvRemove for std::process::Command {
    fn remove_env(&mut self, key: &OsStr) {
        self.env_remove(key);
    }
}

/// Remove the inherited variables for which `pred` holds.
fn remove_vars(c: &mut impl EnvRemove, pred: impl Fn(&str) -> bool) {
    for (k, _) in std::env::vars_os() {
        if pred(&k.to_string_lossy()) {
            c.remove_env(&k);
        }
    }
}

/// Remove every inherited variable that would point coffer at another repository,
/// passphrase, home, cache, S3 account or Redis server: `COFFER_*`, `AWS_*`, `XDG_DATA_HOME`,
/// `XDG_CACHE_HOME`, `REDIS_URL` and `REDISCLI_AUTH`.
pub fn clean_env(c: &mut impl EnvRemove) {
    remove_vars(c, |k| {
        k.starts_with("COFFER_")
            || k.starts_with("AWS_")
            || k == "XDG_DATA_HOME"
            || k == "XDG_CACHE_HOME"
            || k == "REDIS_URL"
            || k == "REDISCLI_AUTH"
    });
}

/// Remove every inherited PostgreSQL setting: `PG*` and `DATABASE_URL`.
pub fn clean_pg_env(c: &mut impl EnvRemove) {
    remove_vars(c, |k| k.starts_with("PG") || k == "DATABASE_URL");
}

/// Whether the tests run as root (and PostgreSQL then runs as its own OS user).
pub fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// What a command wrote to standard error.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command that succeeded (or the test fails, showing its standard error); its
/// standard output.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "coffer failed ({:?}):\n{}",
        out.status,
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failed command: exit `code`, and standard error says `needle`.
pub fn refused(out: &Output, code: i32, needle: &str) {
    let said = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{said}");
    assert!(said.contains(needle), "expected {needle:?} in:\n{said}");
}

/// A command that was refused and wrote no snapshot: it failed (with exit `code`, when
/// given), its standard error says each of `needles`, and `repo` still holds exactly
/// `held` snapshots.
pub fn refused_without_snapshot(
    repo: &impl Snapshots,
    out: &Output,
    code: Option<i32>,
    needles: &[&str],
    held: usize,
) {
    let said = stderr(out);
    match code {
        Some(code) => assert_eq!(out.status.code(), Some(code), "{said}"),
        None => assert!(!out.status.success(), "{said}"),
    }
    for needle in needles {
        assert!(said.contains(needle), "expected {needle:?} in:\n{said}");
    }
    assert_eq!(
        repo.snapshots().len(),
        held,
        "snapshots after a refused command"
    );
}

pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(list_files(&p));
        } else if !e.file_name().as_bytes().starts_with(b".tmp-") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Wait until every file under `root` was last modified (mtime and ctime) more than a second
/// ago, so that a backup does not store them as "racy" and the next one takes them as unchanged.
pub fn wait_until_not_racy(root: &Path) {
    fn newest(p: &Path) -> i128 {
        let m = fs::symlink_metadata(p).unwrap();
        let mut t = (m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
            .max(m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128);
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                t = t.max(newest(&e.unwrap().path()));
            }
        }
        t
    }
    let until = newest(root) + 1_000_000_000;
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        if now > until {
            return;
        }
        std::thread::sleep(std::time::Duration::from_nanos(
            (until - now) as u64 + 1_000_000,
        ));
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A tree with the awkward cases: odd names, modes, symlinks, empty dirs and files.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    fs::write(root.join("dir/big.bin"), noise(1, 3 << 20)).unwrap();
    fs::write(root.join("dir/text.log"), "line of text\n".repeat(50_000)).unwrap();
    fs::write(root.join("dir/sub/deeper/x"), b"x").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"odd \xff\xfe name\twith\nnewline");
    fs::write(root.join(odd), b"odd").unwrap();
    fs::write(root.join("spa ce & ünïcødé ✓"), b"u").unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::set_permissions(root.join("hello.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("empty-file"), fs::Permissions::from_mode(0o4755)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_500_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("dir/text.log"), t).unwrap();
    filetime::set_file_mtime(root.join("dir/sub/deeper"), t).unwrap();
}

/// Assert two trees are identical: types, contents, permission bits, mtimes (files and
/// directories), symlink targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            fs::read_link(a).unwrap(),
            fs::read_link(b).unwrap(),
            "target of {}",
            b.display()
        );
        return;
    }
    assert_eq!(
        ma.mode() & 0o7777,
        mb.mode() & 0o7777,
        "mode of {}",
        b.display()
    );
    assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", b.display());
    assert_eq!(
        ma.mtime_nsec(),
        mb.mtime_nsec(),
        "mtime ns of {}",
        b.display()
    );
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {}", b.display());
        for n in na {
            assert_same_tree(&a.join(&n), &b.join(&n));
        }
    } else {
        assert!(
            fs::read(a).unwrap() == fs::read(b).unwrap(),
            "content of {}",
            b.display()
        );
    }
}

/// Where `src` lands inside a restore target (snapshots mirror absolute paths).
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// Everything observable about a tree, without following symlinks: for each entry (the
/// root too) its type, content or link target, permission bits, owner, group, link count
/// and mtime. Two equal fingerprints mean nothing there was written, chmodded, chowned,
/// touched, added or removed.
pub fn fingerprint(root: &Path) -> std::collections::BTreeMap<PathBuf, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let what = if m.file_type().is_symlink() {
            format!("link {:?}", fs::read_link(&p).unwrap())
        } else if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else {
            format!("file {:?}", fs::read(&p).unwrap())
        };
        out.insert(
            p.strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "{what} mode {:o} owner {}:{} links {} mtime {}.{}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.nlink(),
                m.mtime(),
                m.mtime_nsec()
            ),
        );
    }
    out
}

/// A directory of files coffer must never touch, each with an old mtime.
pub fn make_outside(dir: &Path, files: &[(&str, &[u8])]) {
    fs::create_dir_all(dir).unwrap();
    let old = filetime::FileTime::from_unix_time(1_000_000_000, 0);
    for (name, content) in files {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        filetime::set_file_mtime(&p, old).unwrap();
    }
}

/// Run one named step of a long scenario. The step's name goes to standard error when it
/// starts, and again when it fails, so a failing test says which step broke (the test
/// harness shows a failed test's standard error).
pub fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    struct Failed<'a>(&'a str);
    impl Drop for Failed<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("=== step failed: {}", self.0);
            }
        }
    }
    eprintln!("=== step: {name}");
    let _failed = Failed(name);
    f()
}

/// The library's view of a repository at `dir/repo` (not created yet), opened with the
/// passphrase file `dir/pw`, for tests that call operations without the CLI.
pub fn library_access(dir: &Path) -> coffer::ops::access::Access {
    let pw = dir.join("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    coffer::ops::access::Access::new(
        Some(dir.join("repo").display().to_string()),
        Some(pw),
        coffer::config::Config::default(),
        Box::new(|_, _| panic!("no prompt")),
    )
    .unwrap()
}

/// Back up `paths` into `repo` through the library, reporting to `progress`.
pub fn library_backup(
    repo: &std::sync::Arc<coffer::repo::Repository>,
    paths: Vec<PathBuf>,
    progress: &coffer::progress::Progress,
) -> coffer::ops::backup::BackupReport {
    coffer::ops::backup::backup(
        repo,
        coffer::ops::backup::Source::Files {
            paths,
            excludes: vec![],
            one_file_system: false,
        },
        coffer::sources::CommonOptions::default(),
        progress,
    )
    .unwrap()
}

/// A local TCP port that was free a moment ago (for servers that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
