//! The WAL archive contract (`wal-push` / `wal-fetch`) with segments from real clusters,
//! and PostgreSQL itself using `coffer wal-push %p` as its archive_command.

mod common;

use common::pg::{ArchiveRepo, PgCluster};
use common::{stderr, step, Env};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let seg = step("push twice, stored sealed", || push_twice(&env, &pg));
    step("different content refused", || {
        refuses_different_content(&env, &seg)
    });
    step("another cluster's segment refused", || {
        refuses_another_clusters_segment(&env, &other)
    });
    step("a torn copy refused", || refuses_a_torn_copy(&env, &seg));
    let dest = step("fetch gives the exact bytes", || {
        fetches_exact_bytes(&env, &seg)
    });
    let missing = step("a missing file exits 1", || missing_file_exits_1(&env));
    step("history files go through", || {
        history_files_go_through(&env, &missing)
    });
    step("bad name, wrong passphrase", || {
        refuses_bad_names_and_wrong_passphrase(&env, &seg, &dest)
    });
}

/// A segment of the first cluster, pushed into the archive.
struct Pushed {
    name: String,
    bytes: Vec<u8>,
}

/// Push, then push the same again: both succeed; nothing of the segment is readable in the
/// stored object.
fn push_twice(env: &Env, pg: &PgCluster) -> Pushed {
    let seg_name = finished_segment(pg);
    let seg = copy_segment(pg, &seg_name, &env.path("wal-a"));
    let bytes = std::fs::read(&seg).unwrap();

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
    Pushed {
        name: seg_name,
        bytes,
    }
}

/// Different content under the same name is refused.
fn refuses_different_content(env: &Env, seg: &Pushed) {
    let (seg_name, bytes) = (&seg.name, &seg.bytes);
    let mut changed = bytes.clone();
    changed[bytes.len() / 2] ^= 0xff;
    let bad_dir = env.path("wal-changed");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join(seg_name), &changed).unwrap();
    let out = env
        .cmd()
        .arg("wal-push")
        .arg(bad_dir.join(seg_name))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
}

/// A segment of another cluster is refused.
fn refuses_another_clusters_segment(env: &Env, other: &PgCluster) {
    let foreign_name = finished_segment(other);
    let foreign = copy_segment(other, &foreign_name, &env.path("wal-b"));
    let out = env.cmd().arg("wal-push").arg(&foreign).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("system identifier"),
        "{}",
        stderr(&out)
    );
}

/// A torn copy (shorter than a segment) is refused.
fn refuses_a_torn_copy(env: &Env, seg: &Pushed) {
    let (seg_name, bytes) = (&seg.name, &seg.bytes);
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
}

/// Fetch gives the exact bytes; returns where it wrote them.
fn fetches_exact_bytes(env: &Env, seg: &Pushed) -> PathBuf {
    let (seg_name, bytes) = (&seg.name, &seg.bytes);
    let restore_dir = env.path("pg_wal");
    std::fs::create_dir_all(&restore_dir).unwrap();
    let dest = restore_dir.join("RECOVERYXLOG");
    let out = env
        .cmd()
        .args(["wal-fetch", seg_name])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == *bytes);
    dest
}

/// A missing file: exit 1, no file left behind, nothing printed; returns the name asked
/// for.
fn missing_file_exits_1(env: &Env) -> PathBuf {
    let restore_dir = env.path("pg_wal");
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
    missing
}

/// History files go through too.
fn history_files_go_through(env: &Env, missing: &Path) {
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
        .arg(missing)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(missing).unwrap(),
        "1\t0/3000000\tbefore 2024\n"
    );
}

/// Not a WAL file name; a wrong passphrase is not "not found" (recovery must stop).
fn refuses_bad_names_and_wrong_passphrase(env: &Env, seg: &Pushed, dest: &Path) {
    let out = env
        .cmd()
        .args(["wal-push", "/etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = env
        .cmd()
        .env("COFFER_PASSWORD", "wrong")
        .args(["wal-fetch", &seg.name])
        .arg(dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

#[test]
fn postgres_archives_through_coffer() {
    // The server user must own the repository and the password file.
    let archive = ArchiveRepo::new("archive secret", &[]);
    let pg = archive.start_archiving(&[]);

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
    let out_dir = archive.holder.path().join("fetched");
    std::fs::create_dir_all(&out_dir).unwrap();
    for n in &names {
        let dest = out_dir.join(n);
        let out = archive
            .cmd()
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

/// `coffer` run as another user than the repository's owner, so that its permissions
/// apply (as root, `nobody`; otherwise the current user, with the permissions taken away).
fn as_other_user(env: &Env) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut c = env.std_cmd(assert_cmd::cargo::cargo_bin("coffer"));
    if common::as_root() {
        c.uid(65534).gid(65534);
    }
    c
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn wal_fetch_exits_126_on_every_failure_but_not_archived() {
    let pg = PgCluster::start();
    let env = Env::new();
    env.init();
    let seg_name = finished_segment(&pg);
    let seg = copy_segment(&pg, &seg_name, &env.path("wal-a"));
    env.cmd().arg("wal-push").arg(&seg).assert().success();
    let pg_wal = env.path("restored/pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let f = Fetching {
        env: &env,
        seg_name,
        dest: pg_wal.join("RECOVERYXLOG"),
        pg_wal,
    };
    step("usage errors and a bad name", || usage_errors_exit_126(&f));
    step("config and passphrase files", || {
        config_and_passphrase_failures_exit_126(&f)
    });
    step("storage missing or refusing", || {
        storage_failures_exit_126(&f)
    });
    step("a damaged object", || damaged_object_exits_126(&f));
    step("the archive still works", || archive_still_works(&f));
}

/// An archived segment, and where a recovery's `wal-fetch` writes it.
struct Fetching<'a> {
    env: &'a Env,
    seg_name: String,
    pg_wal: PathBuf,
    dest: PathBuf,
}

impl Fetching<'_> {
    fn d(&self) -> &str {
        self.dest.to_str().unwrap()
    }

    /// `wal-fetch` failed with exit 126, without a panic, and wrote nothing.
    fn check(&self, what: &str, out: std::process::Output) {
        assert_eq!(out.status.code(), Some(126), "{what}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("panicked"),
            "{what}: {}",
            stderr(&out)
        );
        assert!(!self.dest.exists(), "{what}: {} was written", self.d());
    }
}

/// Usage errors, which clap reports itself: unknown options, missing arguments, bad
/// values, also after global options; and a name that is not a WAL file name.
fn usage_errors_exit_126(f: &Fetching) {
    for args in [
        vec!["wal-fetch", "--bogus", &f.seg_name, f.d()],
        vec!["wal-fetch"],
        vec!["wal-fetch", &f.seg_name],
        vec!["wal-fetch", &f.seg_name, f.d(), "extra"],
        vec!["wal-fetch", "--prefetch", "999", &f.seg_name, f.d()],
        vec!["wal-fetch", "--hold", "../../config", &f.seg_name, f.d()],
        vec!["-q", "--repo", "/nonexistent", "-v", "wal-fetch", "--bogus"],
    ] {
        f.check(
            &format!("{args:?}"),
            f.env.cmd().args(&args).output().unwrap(),
        );
    }
    // Not a WAL file name.
    f.check(
        "bad name",
        f.env
            .cmd()
            .args(["wal-fetch", "passwd", f.d()])
            .output()
            .unwrap(),
    );
}

/// An unreadable or malformed config file, an unreadable passphrase file, a wrong
/// passphrase.
fn config_and_passphrase_failures_exit_126(f: &Fetching) {
    f.check(
        "missing config file",
        f.env
            .cmd()
            .arg("--config")
            .arg(f.env.path("no-such.toml"))
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
    std::fs::write(f.env.path("bad.toml"), "repository = [").unwrap();
    f.check(
        "malformed config file",
        f.env
            .cmd()
            .arg("--config")
            .arg(f.env.path("bad.toml"))
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
    f.check(
        "missing passphrase file",
        f.env
            .cmd()
            .env_remove("COFFER_PASSWORD")
            .env("COFFER_PASSWORD_FILE", f.env.path("no-such-pw"))
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
    f.check(
        "wrong passphrase",
        f.env
            .cmd()
            .env("COFFER_PASSWORD", "wrong")
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
}

/// Storage missing, or refusing: a repository this user may not read at all, or whose
/// segment folder it may not read (the rest readable).
fn storage_failures_exit_126(f: &Fetching) {
    f.check(
        "missing repository",
        f.env
            .cmd()
            .env("COFFER_REPO", f.env.path("no-such-repo"))
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
    chmod(f.env.dir.path(), 0o755);
    chmod(f.pg_wal.parent().unwrap(), 0o777);
    chmod(&f.pg_wal, 0o777);
    f.check(
        "unreadable repository",
        as_other_user(f.env)
            .args(["wal-fetch", &f.seg_name, f.d()])
            .output()
            .unwrap(),
    );
    let seg_dir = f.env.repo.join("wal").join(&f.seg_name[..16]);
    for p in common::list_files(&f.env.repo) {
        chmod(&p, 0o644);
    }
    for dir in ["", "keys", "wal", "locks"] {
        chmod(&f.env.repo.join(dir), 0o755);
    }
    chmod(&seg_dir, 0o700);
    if !common::as_root() {
        chmod(&seg_dir, 0o000);
    }
    let out = as_other_user(f.env)
        .args(["wal-fetch", &f.seg_name, f.d()])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    f.check("unreadable segment folder", out);
    // The other user can read the rest: a file that is not archived is still "not archived".
    let out = as_other_user(f.env)
        .args(["wal-fetch", "00000005.history", f.d()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    chmod(&seg_dir, 0o700);
}

/// A damaged object: decryption fails.
fn damaged_object_exits_126(f: &Fetching) {
    let seg_dir = f.env.repo.join("wal").join(&f.seg_name[..16]);
    let obj = seg_dir.join(&f.seg_name);
    let mut raw = std::fs::read(&obj).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    std::fs::write(&obj, &raw).unwrap();
    let out = f
        .env
        .cmd()
        .args(["wal-fetch", &f.seg_name, f.d()])
        .output()
        .unwrap();
    assert!(stderr(&out).contains(&f.seg_name), "{}", stderr(&out));
    f.check("damaged object", out);
    raw[mid] ^= 0x40;
    std::fs::write(&obj, &raw).unwrap();
}

/// And the archive works: found is 0, not archived is 1.
fn archive_still_works(f: &Fetching) {
    let out = f
        .env
        .cmd()
        .args(["wal-fetch", &f.seg_name, f.d()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f
        .env
        .cmd()
        .args(["wal-fetch", "0000000100000000000000F0", "--prefetch", "0"])
        .arg(f.pg_wal.join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// A long page header for segment `segno` of timeline 1 that says segments are `size` bytes.
fn fake_header(segno: u64, size: u32) -> Vec<u8> {
    let mut page = vec![0u8; 8192];
    page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    page[2..4].copy_from_slice(&7u16.to_le_bytes());
    page[4..8].copy_from_slice(&1u32.to_le_bytes());
    page[8..16].copy_from_slice(&(segno * (16 << 20)).to_le_bytes());
    page[24..32].copy_from_slice(&7710896918539192691u64.to_le_bytes());
    page[32..36].copy_from_slice(&size.to_le_bytes());
    page[36..40].copy_from_slice(&8192u32.to_le_bytes());
    page
}

#[test]
fn a_wal_segment_size_of_zero_is_refused_not_divided_by() {
    let env = Env::new();
    env.init();
    let dir = env.path("pg_wal");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, size) in [
        ("000000010000000000000003.partial", 0u32),
        ("000000010000000000000004.partial", 3 << 20),
    ] {
        std::fs::write(dir.join(name), fake_header(3, size)).unwrap();
        let out = env
            .cmd()
            .arg("wal-push")
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("segment size of") && !stderr(&out).contains("panicked"),
            "{}",
            stderr(&out)
        );
    }
    // Nothing was recorded: the archive is still empty, and reading it does not panic.
    assert!(common::list_files(&env.repo.join("wal")).is_empty());
    let out = env.cmd().args(["wal-verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn prefetched_segments_are_durable_and_checked_before_use() {
    let pg = PgCluster::start();
    let env = Env::new();
    env.init();
    let names: Vec<String> = (0..3).map(|_| finished_segment(&pg)).collect();
    let wal_dir = env.path("wal-src");
    let mut bytes = Vec::new();
    for n in &names {
        let p = copy_segment(&pg, n, &wal_dir);
        bytes.push(std::fs::read(&p).unwrap());
        env.cmd().arg("wal-push").arg(&p).assert().success();
    }
    let pg_wal = env.path("restored/pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let pg_wal = pg_wal.canonicalize().unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let prefetch = pg_wal.join(".coffer-prefetch");

    // Fetch the first with two ahead, under strace: every file is flushed (fdatasync)
    // before it is renamed into place, and the directory is flushed after.
    let trace = env.path("strace.out");
    let out = env
        .std_cmd(common::strace::binary())
        .args(["-f", "-y", "-qq", "-o"])
        .arg(&trace)
        .args(["-e", "trace=fsync,fdatasync,rename,renameat,renameat2"])
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args(["wal-fetch", "--prefetch", "2", &names[0]])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == bytes[0]);
    let log = std::fs::read_to_string(&trace).unwrap();
    let calls = common::strace::completed_calls(&log);
    for target in [&dest, &prefetch.join(&names[1]), &prefetch.join(&names[2])] {
        let t = format!("\"{}\"", target.display());
        let at = calls
            .iter()
            .position(|l| l.contains("rename") && l.contains(&t))
            .unwrap_or_else(|| panic!("no rename into {t}:\n{log}"));
        // The file renamed is the first path of the call.
        let from = calls[at].split('"').nth(1).unwrap();
        assert!(
            calls[..at]
                .iter()
                .any(|l| l.contains("sync(") && l.contains(&format!("<{from}>"))),
            "{from} was not flushed before it was renamed to {t}:\n{log}"
        );
        let dir = format!("<{}>", target.parent().unwrap().display());
        assert!(
            calls[at..]
                .iter()
                .any(|l| l.contains("fsync(") && l.contains(&dir)),
            "{dir} was not flushed after the rename into {t}:\n{log}"
        );
    }

    // A prefetched file torn after the fact (cut short, or its head zeroed) is not used:
    // the archive's copy is fetched instead.
    let second = prefetch.join(&names[1]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&second)
        .unwrap();
    f.set_len(bytes[1].len() as u64 / 2).unwrap();
    drop(f);
    let out = env
        .cmd()
        .args(["wal-fetch", &names[1]])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == bytes[1],
        "the torn prefetched file was used"
    );
    assert!(
        stderr(&out).contains("not a whole segment"),
        "{}",
        stderr(&out)
    );
    let third = prefetch.join(&names[2]);
    let mut zeroed = std::fs::read(&third).unwrap();
    zeroed[..8192].fill(0);
    std::fs::write(&third, &zeroed).unwrap();
    let out = env
        .cmd()
        .args(["wal-fetch", &names[2]])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == bytes[2],
        "the torn prefetched file was used"
    );

    // A whole prefetched file is used without opening the repository (a wrong passphrase
    // does not matter: it was verified when it was fetched).
    let out = env
        .cmd()
        .args(["wal-fetch", "--prefetch", "1", &names[0]])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env
        .cmd()
        .env("COFFER_PASSWORD", "wrong")
        .args(["wal-fetch", &names[1]])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == bytes[1]);
}
