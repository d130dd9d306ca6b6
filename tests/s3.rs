//! The `coffer` binary against real S3-protocol servers on 127.0.0.1:
//!
//! - moto (Python; does not check signatures, lists nested keys): the whole life of a
//!   repository, wrong passphrase, missing bucket, slow uploads.
//! - s3s-fs (Rust; checks SigV4 signatures, buckets are directories): backup and restore with
//!   the right credentials, exit code 7 and a clear message with wrong ones.
//!
//! Each test starts its own server on a free port and kills it when done. The servers are
//! installed under `.tools/` by `scripts/s3-test-servers`; without them these tests fail.

mod common;

use assert_cmd::Command;
use common::pg::PgCluster;
use common::proxy::ThrottledProxy;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const PASSWORD: &str = "correct horse battery staple";
/// Longest any one coffer command may run before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

// --- servers ----------------------------------------------------------------------------

fn tool(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/s3-test-servers to install the S3 test servers \
         (moto and s3s-fs under .tools/), then run the tests again",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running server, killed when dropped.
struct Server {
    name: &'static str,
    port: u16,
    log: PathBuf,
    _child: Killed,
    /// Holds the log (and, for s3s-fs, the stored objects).
    dir: TempDir,
}

fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    let start = t.len().saturating_sub(4000);
    let start = (start..t.len())
        .find(|&i| t.is_char_boundary(i))
        .unwrap_or(t.len());
    t[start..].to_string()
}

impl Server {
    /// Start `make(port)` on a free port and wait until it accepts connections. Tries a
    /// few ports: another process may take one between our probe and the server's bind.
    fn start(
        name: &'static str,
        dir: TempDir,
        make: impl Fn(u16) -> std::process::Command,
    ) -> Server {
        let log = dir.path().join(format!("{name}.log"));
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let out = std::fs::File::create(&log).unwrap();
            let mut cmd = make(port);
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            let mut child = Killed(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}")),
            );
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Some(status) = child.0.try_wait().unwrap() {
                    last = format!(
                        "{name} exited with {status} on port {port}:\n{}",
                        tail(&log)
                    );
                    break;
                }
                if TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_secs(1),
                )
                .is_ok()
                {
                    return Server {
                        name,
                        port,
                        log,
                        _child: child,
                        dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not listen on port {port} within 90 s:\n{}",
                    tail(&log)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("could not start {name}: {last}");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- end of the {} log ---\n{}", self.name, tail(&self.log));
        }
    }
}

/// moto's S3 server: any credentials, buckets created with [`http`].
fn moto() -> Server {
    let python = tool("moto-venv/bin/python");
    Server::start("moto", TempDir::new().unwrap(), |port| {
        let mut c = std::process::Command::new(&python);
        c.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        c
    })
}

const S3S_KEY: &str = "coffer-test-key";
const S3S_SECRET: &str = "coffer-test-secret-0123456789";

/// s3s-fs with credentials [`S3S_KEY`]/[`S3S_SECRET`] and the bucket `bucket`.
fn s3s_fs() -> Server {
    let bin = tool("bin/s3s-fs");
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    Server::start("s3s-fs", dir, |port| {
        let mut c = std::process::Command::new(&bin);
        c.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3S_KEY, "--secret-key", S3S_SECRET])
            .arg(&root);
        c
    })
}

/// One HTTP/1.1 request without a signature (fine for moto): status and whole response.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    // moto's development server occasionally resets a connection under load: retry.
    let mut last = String::new();
    for _ in 0..10 {
        match http_once(port, method, path, body) {
            Ok(r) if r.0 != 0 => return r,
            Ok(r) => last = r.1,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{method} {path} to the S3 server failed: {last}");
}

fn http_once(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

fn create_bucket(port: u16, bucket: &str) {
    let (status, resp) = http(port, "PUT", &format!("/{bucket}"), b"");
    assert_eq!(status, 200, "creating bucket {bucket} failed:\n{resp}");
}

/// The names (keys) and sizes of the objects under `prefix` (one listing page, ≤ 1000 keys).
fn list_objects(port: u16, bucket: &str, prefix: &str) -> BTreeMap<String, u64> {
    let (status, resp) = http(
        port,
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
        b"",
    );
    assert_eq!(status, 200, "listing {bucket}/{prefix} failed:\n{resp}");
    assert!(
        !resp.contains("<IsTruncated>true"),
        "listing is paged: {resp}"
    );
    let field = |s: &str, tag: &str| {
        let start = s.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
        s[start..start + s[start..].find('<').unwrap()].to_string()
    };
    resp.split("<Contents>")
        .skip(1)
        .map(|c| (field(c, "Key"), field(c, "Size").parse().unwrap()))
        .collect()
}

/// Number and total size of the objects under `prefix` (one listing page, ≤ 1000 keys).
fn objects_under(port: u16, bucket: &str, prefix: &str) -> (usize, u64) {
    let objects = list_objects(port, bucket, prefix);
    (objects.len(), objects.values().sum())
}

// --- coffer -----------------------------------------------------------------------------

/// How the child process reaches the S3 server.
struct S3Env {
    endpoint: String,
    key: String,
    secret: String,
    password: String,
    home: TempDir,
}

impl S3Env {
    fn new(endpoint: String, key: &str, secret: &str) -> S3Env {
        S3Env {
            endpoint,
            key: key.into(),
            secret: secret.into(),
            password: PASSWORD.into(),
            home: TempDir::new().unwrap(),
        }
    }

    /// `coffer --repo REPO ARGS…` with only this environment's COFFER_*/AWS_* variables.
    fn coffer(&self, repo: &str, args: &[&str]) -> Command {
        let mut c = Command::from_std(self.command(repo, args));
        c.timeout(COMMAND_TIMEOUT);
        c
    }

    /// The same as a plain process, for a test that controls it while it runs.
    fn command(&self, repo: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
        common::clean_env(&mut c);
        c.env("COFFER_HOME", self.home.path())
            .env("COFFER_CACHE", self.home.path().join("cache"))
            .env("COFFER_PASSWORD", &self.password)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .arg("--repo")
            .arg(repo)
            .args(args);
        c
    }

    /// Run and require exit code 0; stdout.
    fn ok(&self, repo: &str, args: &[&str]) -> String {
        let out = self.coffer(repo, args).output().unwrap();
        assert!(
            out.status.success(),
            "coffer {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and require exit code `code`; stderr.
    fn fails(&self, repo: &str, args: &[&str], code: i32) -> String {
        let out = self.coffer(repo, args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "coffer {args:?}: expected exit code {code}, got {}\nstdout: {}\nstderr: {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            !stderr.contains("panicked"),
            "coffer {args:?} panicked:\n{stderr}"
        );
        stderr
    }

    fn snapshots(&self, repo: &str) -> Vec<serde_json::Value> {
        let out = self.ok(repo, &["snapshots", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("snapshots --json is not JSON ({e}): {out}"))
            .as_array()
            .expect("snapshots --json is an array")
            .clone()
    }

    fn backup(&self, repo: &str, src: &Path) -> serde_json::Value {
        let out = self.ok(repo, &["backup", "--json", src.to_str().unwrap()]);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("backup --json is not JSON ({e}): {out}"))
    }
}

// --- data -------------------------------------------------------------------------------

/// Deterministic incompressible bytes (xorshift64*).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A directory to back up, with its absolute (canonical) path.
fn source_tree(files: &[(&str, Vec<u8>)]) -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let src = dir.path().canonicalize().unwrap().join("src");
    for (name, data) in files {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    (dir, src)
}

/// Every regular file under `root`, by relative path.
fn files_in(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else {
                assert!(
                    t.is_file(),
                    "unexpected file type at {}",
                    e.path().display()
                );
                out.insert(
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Restore the latest snapshot and compare it byte for byte with `src`.
fn restore_and_compare(env: &S3Env, repo: &str, src: &Path) {
    let target = TempDir::new().unwrap();
    env.ok(
        repo,
        &[
            "restore",
            "latest",
            "--target",
            target.path().to_str().unwrap(),
        ],
    );
    // Snapshots keep absolute paths: the tree comes back under target/<src>.
    let restored = target.path().join(src.strip_prefix("/").unwrap());
    let want = files_in(src);
    let got = files_in(&restored);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "restored files differ from the source"
    );
    for (name, data) in &want {
        assert!(
            got[name] == *data,
            "restored {} differs from the source",
            name.display()
        );
    }
}

// --- moto -------------------------------------------------------------------------------

#[test]
fn moto_full_lifecycle() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/some/prefix";

    let (_keep, src) = source_tree(&[
        ("big.bin", random_bytes((41 << 20) + 12345, 1)),
        ("doomed.bin", random_bytes(10 << 20, 2)),
        ("small.txt", b"hello, object storage\n".to_vec()),
        ("sub/dir/notes.md", b"# notes\n".repeat(1000)),
        ("sub/empty", Vec::new()),
    ]);

    env.ok(repo, &["init", "--pack-size", "8"]);
    // Files modified within a second of being read are read again next time (racy).
    common::wait_until_not_racy(&src);
    // Everything lives under the prefix.
    assert_eq!(
        objects_under(server.port, "bucket", "some/prefix/config").0,
        1
    );

    let first = env.backup(repo, &src);
    let (packs, stored) = objects_under(server.port, "bucket", "some/prefix/data/");
    assert!(
        packs >= 5,
        "51 MiB in 8 MiB packs should make several packs, found {packs}"
    );
    assert!(
        stored > 51 << 20,
        "{stored} bytes stored for 51 MiB of random data"
    );

    let snaps = env.snapshots(repo);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["id"], first["id"]);
    assert_eq!(snaps[0]["paths"][0], src.to_str().unwrap());

    restore_and_compare(&env, repo, &src);
    env.ok(repo, &["check", "--read-data"]);

    // Nothing changed: the second backup stores (almost) nothing new.
    let second = env.backup(repo, &src);
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added < 64 << 10,
        "an unchanged second backup added {added} bytes: {second}"
    );
    assert_eq!(second["summary"]["files_unchanged"], 5, "{second}");
    // At most a small pack of changed directory metadata (the parents of `src` in /tmp).
    let (_, stored2) = objects_under(server.port, "bucket", "some/prefix/data/");
    assert!(
        stored2 - stored < 64 << 10,
        "packs grew from {stored} to {stored2} bytes"
    );

    // Drop a 10 MiB file and change another: after forgetting the older snapshots, prune
    // has data to delete or repack.
    std::fs::remove_file(src.join("doomed.bin")).unwrap();
    std::fs::write(src.join("small.txt"), b"changed\n").unwrap();
    env.backup(repo, &src);
    assert_eq!(env.snapshots(repo).len(), 3);
    env.ok(repo, &["forget", "--keep-last", "1", "--prune"]);
    let snaps = env.snapshots(repo);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let (_, stored_after) = objects_under(server.port, "bucket", "some/prefix/data/");
    assert!(
        stored_after + (5 << 20) < stored,
        "prune freed too little: {stored} bytes of packs before, {stored_after} after"
    );

    env.ok(repo, &["check", "--read-data"]);
    restore_and_compare(&env, repo, &src);
}

#[test]
fn moto_wrong_passphrase_exits_4() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let mut env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/repo";
    env.ok(repo, &["init"]);
    env.password = "not the passphrase".into();
    let err = env.fails(repo, &["snapshots"], 4);
    assert!(err.contains("passphrase"), "{err}");
}

#[test]
fn moto_missing_bucket_is_a_clear_error() {
    let server = moto();
    create_bucket(server.port, "other");
    let env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let repo = "s3://no-such-bucket/prefix";
    for args in [&["snapshots"][..], &["init"][..]] {
        let out = env.coffer(repo, args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code.is_some() && code != Some(0) && code != Some(101),
            "coffer {args:?} on a missing bucket: {}\n{err}",
            out.status
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("bucket \"no-such-bucket\" does not exist"),
            "coffer {args:?}: the message should name the missing bucket:\n{err}"
        );
        assert_eq!(code, Some(7), "{err}");
    }
    // init did not create the bucket or anything else.
    let (_, list) = http(server.port, "GET", "/", b"");
    assert!(!list.contains("no-such-bucket"), "{list}");
}

/// A pack is uploaded in one PUT; on a link slower than pack size / 10 s that used to hit
/// OpenDAL's default 10 s IO timeout on every try, so backups could never finish.
#[test]
fn moto_slow_uploads_finish() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let proxy = ThrottledProxy::new(server.port, 1 << 20);
    let env = S3Env::new(proxy.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/slow";
    let (_keep, src) = source_tree(&[("twelve.bin", random_bytes(12 << 20, 3))]);
    env.ok(repo, &["init", "--pack-size", "16"]);
    let started = Instant::now();
    env.backup(repo, &src);
    assert!(
        started.elapsed() > Duration::from_secs(10),
        "the proxy did not slow the upload down ({:?})",
        started.elapsed()
    );
    let (_, stored) = objects_under(server.port, "bucket", "slow/data/");
    assert!(stored > 12 << 20, "{stored}");
    drop(proxy);
    // Read back directly.
    let env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    restore_and_compare(&env, repo, &src);
}

/// A backup killed on a slow link is resumed: index files are written every 30 s
/// (`saver::INDEX_INTERVAL`), not only every 16 packs, so the next backup finds what the
/// killed one had stored and indexed and does not upload it again; prune then deletes exactly
/// the killed backup's packs that no index lists.
///
/// 1 GiB of random data in 64 MiB packs: 16 packs are the whole tree, so every index file
/// written before the end is written because of time (an old coffer writes none, and this
/// test fails because the backup ends before it can be killed). Uploads cross a 24 MiB/s link
/// in all, so the tree takes well over 30 s. The backup is paused (SIGSTOP) whenever an index
/// file appears, to count what the index files list, and killed (SIGKILL) once they list more
/// than 35 % of the tree (usually at the first: six uploads share the link, so the packs
/// complete in groups of about six, and the first index file, written when the first pack
/// after 30 s is stored, lists seven); the next backup then adds less than 65 %.
#[test]
fn moto_killed_backup_on_a_slow_link_resumes_from_its_index_files() {
    const FILES: usize = 32;
    const FILE: usize = 32 << 20;
    const TOTAL: u64 = (FILES * FILE) as u64;
    const PACK: u64 = 64 << 20;
    let server = moto();
    create_bucket(server.port, "bucket");
    let direct = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/resume";
    // Random data does not compress: spare the CPU, so that the link is what limits.
    direct.ok(
        repo,
        &[
            "init",
            "--pack-size",
            &(PACK >> 20).to_string(),
            "--compression",
            "0",
        ],
    );
    let keep = TempDir::new().unwrap();
    let src = keep.path().canonicalize().unwrap().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(
            src.join(format!("f{i:02}.bin")),
            // random_bytes sets the lowest bit of the seed: odd seeds, all different.
            random_bytes(FILE, 1001 + 2 * i as u64),
        )
        .unwrap();
    }
    let indexed_packs = || -> u64 {
        let out = direct.ok(repo, &["check", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["packs"].as_u64().unwrap()
    };

    let proxy = ThrottledProxy::new(server.port, 24 << 20);
    let slow = S3Env::new(proxy.endpoint(), "test-key", "test-secret");
    let stderr = keep.path().join("stderr");
    let mut child = slow
        .command(repo, &["backup", "--quiet", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let signal = |sig| assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let started = Instant::now();
    let (mut index_files, mut first_index) = (0, None);
    let indexed_at_kill = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the backup ended ({status}) before it could be killed:\n{}",
                std::fs::read_to_string(&stderr).unwrap()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no index file listed 35 % of the tree within 300 s"
        );
        let n = objects_under(server.port, "bucket", "resume/index/").0;
        if n > index_files {
            signal(libc::SIGSTOP);
            let indexed = indexed_packs();
            first_index.get_or_insert((indexed, started.elapsed(), proxy.uploaded()));
            if indexed * PACK > TOTAL * 35 / 100 {
                signal(libc::SIGKILL);
                break indexed;
            }
            index_files = n;
            signal(libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.wait().unwrap();
    let killed_after = started.elapsed();
    assert!(
        proxy.wait_idle(Duration::from_secs(60)),
        "connections stayed open after the kill"
    );
    let uploaded = proxy.uploaded();
    drop(proxy);
    let (first_packs, first_at, first_uploaded) = first_index.unwrap();
    eprintln!(
        "first index file after {first_at:?} and {} MiB uploaded, listing {first_packs} packs; \
         killed after {killed_after:?} and {} MiB uploaded, {indexed_at_kill} packs indexed",
        first_uploaded >> 20,
        uploaded >> 20
    );
    // Old coffer wrote index files only every 16 packs: here, only at the end.
    assert!(
        first_packs > 0 && first_packs < 16,
        "the first index file of the backup lists {first_packs} packs: not written because of time"
    );
    assert!(direct.snapshots(repo).is_empty());

    // What the killed backup left: indexed packs (reused below) and packs stored after the last
    // index file (in no index; prune deletes them). A pack whose upload was cut off by the kill
    // does not exist (one PUT per object).
    let killed: BTreeMap<String, u64> = list_objects(server.port, "bucket", "resume/data/");
    let indexed = indexed_packs();
    assert!(indexed >= indexed_at_kill, "{indexed} < {indexed_at_kill}");
    let unindexed = killed.len() as u64 - indexed;
    eprintln!("the killed backup left {indexed} indexed and {unindexed} unindexed packs");

    // The next backup, on a fast link, adds only what was not indexed.
    let second = direct.backup(repo, &src);
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    eprintln!(
        "the second backup added {} MiB of {} MiB",
        added >> 20,
        TOTAL >> 20
    );
    assert!(
        added <= TOTAL * 65 / 100,
        "the backup after the kill added {added} of {TOTAL} bytes: {second}"
    );
    // Every blob of every indexed pack was reused (a pack holds at least PACK - 1 MiB of data).
    assert!(
        added + indexed * (PACK - (1 << 20)) <= TOTAL + (1 << 20),
        "{indexed} packs were indexed but the backup still added {added} bytes"
    );
    direct.ok(repo, &["check", "--read-data"]);

    // prune deletes the unindexed packs of the killed backup and nothing else: every indexed
    // pack of it holds blobs the new snapshot uses (same files, same chunks), and nothing of a
    // partly read file was stored but whole chunks.
    let before_prune = list_objects(server.port, "bucket", "resume/data/");
    let out = direct.coffer(repo, &["prune"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let expect = format!(
        "0 of {} pack(s) unused, 0 to repack, {unindexed} unindexed",
        before_prune.len() as u64 - unindexed
    );
    assert!(
        said.contains(&expect),
        "expected {expect:?} from prune:\n{said}"
    );
    let after_prune = list_objects(server.port, "bucket", "resume/data/");
    let kept_of_killed = killed
        .keys()
        .filter(|k| after_prune.contains_key(*k))
        .count();
    assert_eq!(
        kept_of_killed as u64, indexed,
        "packs of the killed backup kept by prune"
    );
    for k in before_prune.keys().filter(|k| !killed.contains_key(*k)) {
        assert!(
            after_prune.contains_key(k),
            "prune deleted {k} of the second backup"
        );
    }
    let out = direct.coffer(repo, &["check"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("not in any index"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Once no snapshot needs them, the killed backup's indexed packs go too.
    direct.ok(repo, &["forget", second["id"].as_str().unwrap(), "--prune"]);
    assert_eq!(
        objects_under(server.port, "bucket", "resume/data/"),
        (0, 0),
        "packs left after forgetting the only snapshot"
    );
}

#[test]
fn unreachable_endpoint_is_a_storage_error() {
    let port = free_port(); // nothing listens there
    let env = S3Env::new(format!("http://127.0.0.1:{port}"), "k", "s");
    let err = env.fails("s3://bucket/x", &["snapshots"], 7);
    assert!(err.contains("s3://bucket/x/config"), "{err}");
    // For PostgreSQL's restore_command, storage out of reach is a failure (126), never
    // "not archived" (1).
    let dest = env.home.path().join("RECOVERYXLOG");
    let err = env.fails(
        "s3://bucket/x",
        &[
            "wal-fetch",
            "000000010000000000000001",
            dest.to_str().unwrap(),
        ],
        126,
    );
    assert!(err.contains("s3://bucket/x/config"), "{err}");
    assert!(!dest.exists());
}

// --- s3s-fs -----------------------------------------------------------------------------

#[test]
fn s3s_fs_backup_and_restore_with_signed_requests() {
    let server = s3s_fs();
    let env = S3Env::new(server.endpoint(), S3S_KEY, S3S_SECRET);
    let repo = "s3://bucket/nested/prefix";
    let (_keep, src) = source_tree(&[
        ("a.bin", random_bytes(12 << 20, 4)),
        ("b/c.txt", b"signed\n".to_vec()),
    ]);
    env.ok(repo, &["init", "--pack-size", "4"]);
    env.backup(repo, &src);
    // s3s-fs lists only one level, so no `check` (it lists data/xx/); snapshots and
    // restore list only the flat folders.
    let snaps = env.snapshots(repo);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    restore_and_compare(&env, repo, &src);
    // The objects really are under the prefix on the server's disk.
    assert!(server
        .dir
        .path()
        .join("root/bucket/nested/prefix/config")
        .is_file());
}

#[test]
fn s3s_fs_wrong_credentials_exit_7() {
    let server = s3s_fs();
    let good = S3Env::new(server.endpoint(), S3S_KEY, S3S_SECRET);
    let repo = "s3://bucket/repo";
    good.ok(repo, &["init"]);

    let wrong_secret = S3Env::new(server.endpoint(), S3S_KEY, "not-the-secret");
    let wrong_key = S3Env::new(server.endpoint(), "no-such-key", S3S_SECRET);
    for env in [&wrong_secret, &wrong_key] {
        let err = env.fails(repo, &["snapshots"], 7);
        assert!(
            err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            "{err}"
        );
        let err = env.fails("s3://bucket/fresh", &["init"], 7);
        assert!(
            err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            "{err}"
        );
        // wal-fetch, as PostgreSQL's restore_command: refused credentials are a failure
        // (126), never "not archived" (1).
        let dest = env.home.path().join("RECOVERYXLOG");
        let err = env.fails(
            repo,
            &[
                "wal-fetch",
                "000000010000000000000001",
                dest.to_str().unwrap(),
            ],
            126,
        );
        assert!(
            err.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            "{err}"
        );
        assert!(!dest.exists());
    }
    // With the right credentials, a file that is not archived is "not archived".
    let dest = good.home.path().join("RECOVERYXLOG");
    good.fails(
        repo,
        &[
            "wal-fetch",
            "000000010000000000000001",
            dest.to_str().unwrap(),
        ],
        1,
    );
    assert!(!server.dir.path().join("root/bucket/fresh").exists());
    // The repository is still fine for the right credentials.
    assert!(good.snapshots(repo).is_empty());
}

/// WAL archiving and point-in-time recovery with the repository on S3. The server's
/// archive_command reaches S3 through a config file's `[s3]` table alone; the restore is
/// run with the AWS_* variables instead, and the restored server (which has none of them)
/// fetches WAL through the `coffer-recovery.toml` that restore wrote.
#[test]
fn moto_point_in_time_recovery_without_aws_variables_in_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let server = moto();
    create_bucket(server.port, "pitr");
    let env = S3Env::new(server.endpoint(), "pitr-key", "pitr-secret");
    let holder = TempDir::new().unwrap();
    std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = "s3://pitr/cluster";
    let pw = holder.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let conf = holder.path().join("coffer.toml");
    std::fs::write(
        &conf,
        format!(
            "repository = \"{repo}\"\npassword_file = \"{}\"\n\n[s3]\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\naccess_key_id = \"pitr-key\"\nsecret_access_key = \"pitr-secret\"\n",
            pw.display(),
            server.endpoint()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let coffer = assert_cmd::cargo::cargo_bin("coffer");
    let with_config = || {
        let mut c = Command::cargo_bin("coffer").unwrap();
        common::clean_env(&mut c);
        c.arg("--config").arg(&conf).timeout(COMMAND_TIMEOUT);
        c
    };
    with_config()
        .args(["init", "--pack-size", "8"])
        .assert()
        .success();
    let archive_command = format!(
        "'{}' --config '{}' wal-push %p",
        coffer.display(),
        conf.display()
    );
    let pg = PgCluster::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &archive_command),
        ("archive_timeout", "0"),
    ]);
    pg.give_to_server_user(holder.path());
    pg.psql("postgres", "CREATE TABLE marker (id int PRIMARY KEY)");
    pg.psql("postgres", "INSERT INTO marker VALUES (1)");
    let out = with_config()
        .args([
            "backup",
            "--json",
            "--postgres",
            &pg.url("postgres"),
            "--physical",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pg.log()
    );
    pg.psql("postgres", "INSERT INTO marker VALUES (2)");
    let t = pg.psql("postgres", "SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "INSERT INTO marker VALUES (3)");
    pg.archive_all();

    let dir = holder.path().join("restored");
    let args = [
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
        "--target-time",
        &t,
        "--target-action",
        "promote",
    ];
    env.ok(repo, &args);
    let recovery_conf = std::fs::read_to_string(dir.join("coffer-recovery.toml")).unwrap();
    assert!(
        recovery_conf.contains("[s3]") && recovery_conf.contains("pitr-secret"),
        "{recovery_conf}"
    );
    let r = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM marker"
        ),
        "1,2"
    );
    assert!(
        r.log().contains("restored log file"),
        "WAL did not come from the archive:\n{}",
        r.log()
    );
}

// --- locks fail closed ------------------------------------------------------------------

/// Forwards connections to `target`, one request per connection, and records each request
/// (method, and path with its query). With `fail`, GETs of objects whose path contains it
/// are answered `500 InternalError` (as a struggling S3 service does) without reaching the
/// server. Stops accepting when dropped.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Proxy {
    fn failing_gets(target: u16, fail: &'static str) -> Proxy {
        Proxy::start(target, Some(fail))
    }

    fn counting(target: u16) -> Proxy {
        Proxy::start(target, None)
    }

    fn start(target: u16, fail: Option<&'static str>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stopped, log) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let log = log.clone();
                std::thread::spawn(move || Self::serve(client, target, fail, &log));
            }
        });
        Proxy { port, stop, seen }
    }

    fn serve(
        mut client: TcpStream,
        target: u16,
        fail: Option<&str>,
        log: &Mutex<Vec<(String, String)>>,
    ) {
        // The request head.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request = lines.next().unwrap_or("").to_string();
        let mut parts = request.split(' ');
        let (method, target_path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        log.lock()
            .unwrap()
            .push((method.to_string(), target_path.to_string()));
        let path = target_path.split('?').next().unwrap_or("");
        if method == "GET" && fail.is_some_and(|f| path.contains(f)) {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                        <Message>We encountered an internal error. Please try again.</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        // One request per connection, so that every request passes through here.
        let mut fwd = format!("{request}\r\n");
        for l in lines.filter(|l| !l.is_empty()) {
            if !l.to_ascii_lowercase().starts_with("connection:") {
                fwd.push_str(l);
                fwd.push_str("\r\n");
            }
        }
        fwd.push_str("Connection: close\r\n\r\n");
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
            return;
        };
        if server.write_all(fwd.as_bytes()).is_err() {
            return;
        }
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || pump(c2, s2));
        pump(server, client);
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests seen since the last call, and forget them.
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Copy one direction of a connection until it closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake up accept()
    }
}

/// On S3, a lock that is damaged blocks every locker until `unlock` removes it, and a
/// lock whose GET fails is never skipped: prune and backup stop (exit 7), naming it.
#[test]
fn moto_locks_that_cannot_be_read_stop_prune_and_backup() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/repo";
    let (_keep, src) = source_tree(&[("a.bin", random_bytes(1 << 20, 9))]);
    env.ok(repo, &["init", "--pack-size", "4"]);
    env.backup(repo, &src);
    let packs = objects_under(server.port, "bucket", "repo/data/");

    // A lock object the key does not open.
    let name = "5a".repeat(32);
    let (status, resp) = http(
        server.port,
        "PUT",
        &format!("/bucket/repo/locks/{name}"),
        &random_bytes(300, 3),
    );
    assert_eq!(status, 200, "{resp}");
    for args in [vec!["prune"], vec!["backup", src.to_str().unwrap()]] {
        let err = env.fails(repo, &args, 5);
        assert!(err.contains(&format!("locks/{name}")), "{args:?}: {err}");
        assert!(err.contains("cannot be read"), "{args:?}: {err}");
    }
    assert_eq!(objects_under(server.port, "bucket", "repo/data/"), packs);
    let said = String::from_utf8(
        env.coffer(repo, &["unlock", "--remove-all"])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(
        said.contains(&format!("removed damaged lock locks/{name}")),
        "{said}"
    );
    assert_eq!(objects_under(server.port, "bucket", "repo/locks/").0, 0);

    // A readable lock, but every GET of a lock fails on the way.
    env.backup(repo, &src);
    let (status, resp) = http(
        server.port,
        "PUT",
        &format!("/bucket/repo/locks/{name}"),
        &random_bytes(300, 4),
    );
    assert_eq!(status, 200, "{resp}");
    let proxy = Proxy::failing_gets(server.port, "/locks/");
    let through = S3Env::new(proxy.endpoint(), "test-key", "test-secret");
    for args in [
        vec!["prune"],
        vec!["backup", src.to_str().unwrap()],
        vec!["unlock"],
    ] {
        let err = through.fails(repo, &args, 7);
        assert!(
            err.contains(&format!("cannot read lock locks/{name}")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.snapshots(repo).len(), 2);
    // Only the lock GETs fail: everything else passes through.
    through.ok(repo, &["snapshots"]);
    through.ok(repo, &["unlock", "--remove-all"]);
    assert_eq!(objects_under(server.port, "bucket", "repo/locks/").0, 0);
    env.ok(repo, &["prune"]);
    env.ok(repo, &["check", "--read-data"]);
}

/// `storage_class` applies to data packs only (everything else is read by every command and
/// stays STANDARD); a class that needs a retrieval before reads is refused unless allowed.
#[test]
fn moto_data_packs_take_the_storage_class_and_retrieval_classes_are_refused() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let env = S3Env::new(server.endpoint(), "test-key", "test-secret");
    let dir = TempDir::new().unwrap();
    let config = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ia = config("ia.toml", "[s3]\nstorage_class = \"STANDARD_IA\"\n");
    let repo = "s3://bucket/ia";
    env.ok(repo, &["--config", &ia, "init"]);
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = common::noise(5, 3 << 20);
    std::fs::write(src.join("f.bin"), &data).unwrap();
    env.ok(repo, &["--config", &ia, "backup", src.to_str().unwrap()]);

    let (status, listing) = http(server.port, "GET", "/bucket?list-type=2&prefix=ia/", b"");
    assert_eq!(status, 200, "{listing}");
    let field = |s: &str, tag: &str| {
        s.find(&format!("<{tag}>")).map(|i| {
            let start = i + tag.len() + 2;
            s[start..start + s[start..].find('<').unwrap()].to_string()
        })
    };
    let objects: Vec<(String, String)> = listing
        .split("<Contents>")
        .skip(1)
        .map(|c| {
            (
                field(c, "Key").unwrap(),
                field(c, "StorageClass").unwrap_or_else(|| "STANDARD".into()),
            )
        })
        .collect();
    assert!(
        objects.iter().any(|(k, _)| k.starts_with("ia/data/")),
        "{listing}"
    );
    for (key, class) in &objects {
        let expected = if key.starts_with("ia/data/") {
            "STANDARD_IA"
        } else {
            "STANDARD"
        };
        assert_eq!(class, expected, "{key}");
    }
    let target = dir.path().join("restored");
    env.ok(
        repo,
        &[
            "--config",
            &ia,
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    let restored = target.join(src.strip_prefix("/").unwrap()).join("f.bin");
    assert!(std::fs::read(restored).unwrap() == data);

    let glacier = config("glacier.toml", "[s3]\nstorage_class = \"GLACIER\"\n");
    let err = env.fails(repo, &["--config", &glacier, "snapshots"], 2);
    assert!(err.contains("allow_retrieval_class"), "{err}");
    let allowed = config(
        "allowed.toml",
        "[s3]\nstorage_class = \"GLACIER\"\nallow_retrieval_class = true\n",
    );
    env.ok(repo, &["--config", &allowed, "snapshots"]);
}

/// A local primary and an S3 copy (`[repositories.offsite]` with its own `[s3]` table):
/// each backup of a `copy_to` source lands in both, the copy restores identically, an
/// unchanged second copy adds almost nothing, retention on the copy leaves the primary
/// alone, and with the primary gone a physical base backup and its WAL, archived into both,
/// recover the cluster from the S3 copy alone.
#[test]
fn moto_a_local_primary_and_an_s3_copy_and_recovery_from_the_copy_alone() {
    use std::os::unix::fs::PermissionsExt;
    let server = moto();
    create_bucket(server.port, "offsite");
    let holder = TempDir::new().unwrap();
    std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = holder.path();
    std::fs::write(h.join("pw"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(h.join("offsite-pw"), "offsite secret\n").unwrap();
    let (_src_dir, src) = source_tree(&[
        ("a.bin", random_bytes(3 << 20, 1)),
        ("b/c.txt", b"some text\n".repeat(20_000)),
    ]);
    let conf = h.join("coffer.toml");
    let base = format!(
        "repository = {}\npassword_file = {}\n\
         [repositories.offsite]\nlocation = \"s3://offsite/copy\"\npassword_file = {}\n\
         [repositories.offsite.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"off-key\"\nsecret_access_key = \"off-secret\"\n\
         [sources.files]\ntype = \"files\"\npaths = [{}]\ncopy_to = [\"offsite\"]\n",
        toml::Value::String(h.join("repo").display().to_string()),
        toml::Value::String(h.join("pw").display().to_string()),
        toml::Value::String(h.join("offsite-pw").display().to_string()),
        server.endpoint(),
        toml::Value::String(src.display().to_string()),
    );
    std::fs::write(&conf, &base).unwrap();
    let coffer = |args: &[&str]| {
        let mut c = Command::cargo_bin("coffer").unwrap();
        common::clean_env(&mut c);
        c.env("COFFER_HOME", h.join("home"))
            .arg("--config")
            .arg(&conf)
            .args(args)
            .timeout(COMMAND_TIMEOUT);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "coffer {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snapshots = |repo: &str| -> Vec<serde_json::Value> {
        serde_json::from_str(&coffer(&["--repo", repo, "snapshots", "--json"])).unwrap()
    };
    coffer(&["init", "--pack-size", "8"]);
    coffer(&[
        "--repo",
        "offsite",
        "init",
        "--like",
        "primary",
        "--pack-size",
        "8",
    ]);

    coffer(&["backup", "--source", "files"]);
    let (_, first_bytes) = objects_under(server.port, "offsite", "copy/data/");
    let out = h.join("from-s3");
    coffer(&[
        "--repo",
        "offsite",
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        files_in(&out.join(src.strip_prefix("/").unwrap())),
        files_in(&src)
    );
    coffer(&["backup", "--source", "files"]);
    let (_, second_bytes) = objects_under(server.port, "offsite", "copy/data/");
    assert!(
        (second_bytes - first_bytes) * 50 < first_bytes,
        "an unchanged second copy stored {} bytes after {first_bytes}",
        second_bytes - first_bytes
    );
    assert_eq!(snapshots("offsite").len(), 2);
    coffer(&["--repo", "offsite", "forget", "--keep-last", "1", "--prune"]);
    assert_eq!(snapshots("offsite").len(), 1);
    assert_eq!(
        snapshots("primary").len(),
        2,
        "forget on the copy touched the primary"
    );

    let archive_command = format!(
        "'{}' --config '{}' wal-push %p",
        assert_cmd::cargo::cargo_bin("coffer").display(),
        conf.display()
    );
    let pg = PgCluster::start_with(&[
        ("archive_mode", "on"),
        ("archive_command", &archive_command),
        ("archive_timeout", "0"),
    ]);
    std::fs::write(
        &conf,
        format!(
            "{base}[sources.db]\ntype = \"postgres\"\nmode = \"physical\"\nurl = {}\n\
             pgdata = {}\ncopy_to = [\"offsite\"]\n",
            toml::Value::String(pg.url("postgres")),
            toml::Value::String(pg.data_dir().display().to_string()),
        ),
    )
    .unwrap();
    pg.give_to_server_user(h);
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)",
    );
    coffer(&["backup", "--source", "db"]);
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(101, 250)");
    pg.archive_all();
    assert_eq!(
        pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"),
        "0",
        "{}",
        pg.log()
    );
    std::fs::remove_dir_all(h.join("repo")).unwrap();
    let dir = h.join("recovered");
    coffer(&[
        "--repo",
        "offsite",
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
    ]);
    pg.give_to_server_user(&dir);
    let r = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "250");
}

// --- the local cache --------------------------------------------------------------------

/// What the proxy saw one command do to the repository at `repo/`.
struct Seen(Vec<(String, String)>);

impl Seen {
    /// GETs of objects under `repo/<dir>/`.
    fn gets(&self, dir: &str) -> usize {
        let under = format!("/bucket/repo/{dir}/");
        self.0
            .iter()
            .filter(|(m, t)| m == "GET" && t.split('?').next().unwrap().starts_with(&under))
            .count()
    }

    /// Listings of `repo/<dir>/`.
    fn lists(&self, dir: &str) -> usize {
        let (plain, encoded) = (format!("prefix=repo/{dir}"), format!("prefix=repo%2F{dir}"));
        self.0
            .iter()
            .filter(|(m, t)| {
                m == "GET"
                    && t.contains("list-type")
                    && (t.contains(&plain) || t.contains(&encoded))
            })
            .count()
    }
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (m, t) in &self.0 {
            writeln!(f, "{m} {t}")?;
        }
        Ok(())
    }
}

/// The one repository cache of a host, and the names in one of its directories.
fn cached(env: &S3Env, dir: &str) -> std::collections::BTreeSet<String> {
    let root = env.home.path().join("cache");
    let repos: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(repos.len() <= 1, "{repos:?}");
    let Some(repo) = repos.first() else {
        return Default::default();
    };
    common::list_files(&repo.join(dir))
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Names of the objects under `repo/<dir>/`.
fn stored(port: u16, dir: &str) -> std::collections::BTreeSet<String> {
    let prefix = format!("repo/{dir}/");
    list_objects(port, "bucket", &prefix)
        .into_keys()
        .map(|k| k[prefix.len()..].to_string())
        .collect()
}

/// Two hosts, each with its own cache, share a repository on S3 through a proxy that counts
/// requests. Listing snapshots costs one LIST plus a GET per snapshot this host has not
/// seen; another host's forget and prune show at once, and what they removed is never read
/// from the cache; `--no-cache` and `cache clean` go back to the repository.
#[test]
fn moto_the_local_cache_saves_requests_and_never_shows_a_state_that_is_gone() {
    let server = moto();
    create_bucket(server.port, "bucket");
    let proxy = Proxy::counting(server.port);
    let a = S3Env::new(proxy.endpoint(), "test-key", "test-secret");
    let b = S3Env::new(proxy.endpoint(), "test-key", "test-secret");
    let repo = "s3://bucket/repo";
    let (_keep, src) = source_tree(&[
        ("a.bin", random_bytes(1 << 20, 11)),
        ("sub/b.txt", b"b\n".to_vec()),
    ]);
    a.ok(repo, &["init", "--pack-size", "4"]);
    for i in 0..10 {
        std::fs::write(src.join("sub/b.txt"), format!("version {i}\n")).unwrap();
        a.backup(repo, &src);
    }
    let ids = |snaps: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        snaps
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Host A kept what it wrote: listing costs one LIST and no GET.
    proxy.take();
    assert_eq!(a.snapshots(repo).len(), 10);
    let seen = Seen(proxy.take());
    assert_eq!(
        (seen.lists("snapshots"), seen.gets("snapshots")),
        (1, 0),
        "{seen:?}"
    );
    assert_eq!(cached(&a, "snapshots"), stored(server.port, "snapshots"));

    // Host B reads each snapshot once, then none.
    assert_eq!(b.snapshots(repo).len(), 10);
    let seen = Seen(proxy.take());
    assert_eq!(seen.gets("snapshots"), 10, "{seen:?}");
    assert_eq!(b.snapshots(repo).len(), 10);
    let seen = Seen(proxy.take());
    assert_eq!(
        (seen.lists("snapshots"), seen.gets("snapshots")),
        (1, 0),
        "{seen:?}"
    );

    // A writer on host B: its snapshot costs host A one GET, its index file one more.
    std::fs::write(src.join("sub/c.txt"), b"from host b\n").unwrap();
    common::wait_until_not_racy(&src);
    b.backup(repo, &src);
    proxy.take();
    assert_eq!(a.snapshots(repo).len(), 11);
    let seen = Seen(proxy.take());
    assert_eq!(seen.gets("snapshots"), 1, "{seen:?}");
    let added = a.backup(repo, &src)["summary"]["bytes_added"]
        .as_u64()
        .unwrap();
    assert!(
        added < 64 << 10,
        "host A did not see host B's data: {added} bytes added"
    );
    let seen = Seen(proxy.take());
    assert_eq!(seen.gets("index"), 1, "{seen:?}");
    assert_eq!(seen.gets("snapshots"), 0, "{seen:?}");

    // Host B forgets: host A shows the repository's snapshots, not its copies, and drops
    // the copies of the forgotten ones.
    b.ok(repo, &["forget", "--keep-last", "3"]);
    let kept = ids(&b.snapshots(repo));
    assert_eq!(kept.len(), 3);
    proxy.take();
    assert_eq!(ids(&a.snapshots(repo)), kept);
    assert_eq!(Seen(proxy.take()).gets("snapshots"), 0);
    assert_eq!(cached(&a, "snapshots"), stored(server.port, "snapshots"));

    // Host B prunes: packs go and index files are replaced. Host A's records of the old
    // index files are never used (they would point at deleted packs) and are dropped.
    let old_index = stored(server.port, "index");
    assert_eq!(cached(&a, "index"), old_index);
    b.ok(repo, &["prune"]);
    let new_index = stored(server.port, "index");
    assert_ne!(new_index, old_index, "prune rewrote no index file");
    restore_and_compare(&a, repo, &src);
    assert_eq!(cached(&a, "index"), new_index);
    a.ok(repo, &["check", "--read-data"]);

    // Trees come from the cache the second time: `ls` then reads no data.
    a.ok(repo, &["ls", "latest"]);
    proxy.take();
    let listing = a.ok(repo, &["ls", "latest"]);
    assert!(listing.contains("c.txt"), "{listing}");
    let seen = Seen(proxy.take());
    assert_eq!(
        (
            seen.gets("data"),
            seen.gets("index"),
            seen.gets("snapshots")
        ),
        (0, 0, 0),
        "{seen:?}"
    );

    // --no-cache reads everything from the repository again.
    assert_eq!(ids(&a.snapshots(repo)), kept);
    proxy.take();
    a.ok(repo, &["--no-cache", "ls", "latest"]);
    let seen = Seen(proxy.take());
    assert!(seen.gets("data") > 0, "{seen:?}");
    assert_eq!(seen.gets("snapshots"), 3, "{seen:?}");
    assert_eq!(seen.gets("index"), new_index.len(), "{seen:?}");

    // `cache clean` removes it all; the next command reads and keeps again.
    let report: serde_json::Value =
        serde_json::from_str(&a.ok(repo, &["cache", "clean", "--json"])).unwrap();
    assert_eq!(
        report["repositories"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(report["files"].as_u64().unwrap() > 3, "{report}");
    assert!(cached(&a, "snapshots").is_empty() && cached(&a, "index").is_empty());
    a.ok(repo, &["--no-cache", "snapshots"]);
    assert!(!a
        .home
        .path()
        .join("cache")
        .read_dir()
        .unwrap()
        .any(|_| true));
    proxy.take();
    assert_eq!(ids(&a.snapshots(repo)), kept);
    assert_eq!(Seen(proxy.take()).gets("snapshots"), 3);
    assert_eq!(cached(&a, "snapshots"), stored(server.port, "snapshots"));
}
