//! A physical PostgreSQL source with `copy_to = ["offsite"]` and the offsite repository
//! `wal = "async"`: `wal-push` archives into the primary and keeps each file in the local
//! WAL spool for offsite, so archiving goes on while offsite cannot be reached; `status`
//! shows what waits; `wal-copy` pushes the spool there once it can (the same file again
//! succeeds without writing, a different one is refused); then the offsite repository
//! alone recovers the cluster to its newest row.

mod common;

use common::pg::{chown_to_server_user, Offsite, PgCluster};
use common::stderr;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

fn count(pg: &PgCluster) -> String {
    pg.psql("postgres", "SELECT count(*) FROM t")
}

fn failed_count(pg: &PgCluster) -> i64 {
    pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap()
}

/// The WAL file names in a folder (the spool) or below it (a repository's `wal/`).
fn names_in(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = common::list_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    n.sort();
    n
}

/// The `wal_copies` entry of `offsite` in `status --json` (which may exit 1: a copy
/// whose repository cannot be read is `unknown`).
fn wal_copy_status(out: &std::process::Output) -> Value {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stderr(out)));
    let all = v["wal_copies"].as_array().unwrap().clone();
    assert_eq!(all.len(), 1, "{v:#}");
    assert_eq!(all[0]["repository"], "offsite");
    all[0].clone()
}

#[test]
fn async_wal_copies_wait_in_the_spool_and_wal_copy_catches_up() {
    let o = Offsite::start(|holder| {
        let spool = toml::Value::String(holder.join("spool").display().to_string());
        (format!("wal_spool = {spool}\n"), "wal = \"async\"\n".into())
    });
    let (a, pg, offsite) = (&o.a, &o.pg, &o.offsite);
    let holder = a.holder.path();
    let away = holder.join("offsite-away");
    let spool = holder.join("spool");
    let spooled = spool.join("offsite");
    let coffer = |args: &[&str]| o.coffer(args);
    let out = coffer(&["backup", "--source", "db", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("offsite"));
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(101, 200)");
    pg.archive_all();
    assert_eq!(failed_count(pg), 0, "{}", pg.log());

    // The offsite repository is gone (a network share unmounted, say): archiving goes on,
    // each file waiting in the spool; wal-push never opens offsite.
    fs::rename(offsite, &away).unwrap();
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(201, 300)");
    let newest = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.archive_all();
    assert_eq!(failed_count(pg), 0, "{}", pg.log());
    let waiting = names_in(&spooled);
    assert!(waiting.contains(&newest), "{newest} not in {waiting:?}");
    // Nothing went to offsite yet; every file the primary has (pushed ahead or not) is
    // spooled, and the other way round.
    let wal_files = |dir: &Path| -> Vec<String> {
        names_in(dir)
            .into_iter()
            .filter(|n| n.len() >= 16 && n[..8].bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    };
    assert!(wal_files(&away.join("wal")).is_empty());
    assert_eq!(wal_files(&a.repo.join("wal")), waiting);
    let w = wal_copy_status(&coffer(&["status", "--json"]));
    assert_eq!(w["pending"], waiting.len() as u64, "{w}");
    assert!(w["oldest_secs"].is_u64(), "{w}");
    assert_eq!(w["state"], "ok", "within 15 minutes (no rpo): {w}");

    // wal-copy cannot reach it: every file stays, and the exit says why (6: no
    // repository there).
    let out = coffer(&["wal-copy", "--json"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pending"], waiting.len() as u64, "{r:#}");
    assert!(r["repositories"][0]["error"].is_string(), "{r:#}");
    assert_eq!(names_in(&spooled), waiting);

    // It is back: wal-copy pushes everything, oldest first, and empties the spool.
    fs::rename(&away, offsite).unwrap();
    let kept = holder.join("kept-segment");
    fs::copy(spooled.join(&newest), &kept).unwrap();
    let out = coffer(&["wal-copy", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pending"], 0, "{r:#}");
    assert_eq!(r["repositories"][0]["repository"], "offsite");
    assert_eq!(
        r["repositories"][0]["copied"],
        waiting.len() as u64,
        "{r:#}"
    );
    assert!(names_in(&spooled).is_empty());
    let offsite_has = names_in(&offsite.join("wal"));
    for n in &waiting {
        assert!(offsite_has.contains(n), "{n} is not in offsite");
    }
    let w = wal_copy_status(&coffer(&["status", "--json"]));
    assert_eq!(
        (&w["pending"], &w["oldest_secs"]),
        (&0.into(), &Value::Null)
    );

    // A file pushed whose spool copy was not removed yet (a crash in between): the next
    // drain pushes it again, which succeeds without writing.
    let back = |to: &PathBuf| {
        fs::copy(&kept, to).unwrap();
        chown_to_server_user(to);
    };
    back(&spooled.join(&newest));
    let out = coffer(&["--repo", "offsite", "wal-copy", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["repositories"][0]["already_archived"], 1, "{r:#}");
    assert!(names_in(&spooled).is_empty());
    // Different content under an archived name is refused (3) and stays in the spool.
    let mut other = fs::read(&kept).unwrap();
    let at = other.len() - 100;
    other[at] ^= 0xff;
    fs::write(spooled.join(&newest), &other).unwrap();
    let out = coffer(&["wal-copy"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert_eq!(names_in(&spooled), vec![newest.clone()]);
    fs::remove_file(spooled.join(&newest)).unwrap();
    // Not an async repository.
    let out = coffer(&["--repo", "primary", "wal-copy"]);
    assert!(
        out.status.success(),
        "the primary: every async one: {}",
        stderr(&out)
    );
    assert_eq!(failed_count(pg), 0, "{}", pg.log());

    // The primary repository is lost: the offsite one alone restores and recovers.
    fs::remove_dir_all(&a.repo).unwrap();
    let dir = holder.join("recovered");
    let out = coffer(&[
        "--repo",
        "offsite",
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    chown_to_server_user(&dir);
    let recovered = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(count(&recovered), "300");
}

#[test]
fn wal_push_spools_for_an_async_repository_without_opening_it() {
    // A fake segment of the smallest size, with its long page header.
    let env = common::Env::new();
    env.init();
    let spool = env.path("spool");
    let config = env.path("coffer.toml");
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    fs::write(
        &config,
        format!(
            "wal_spool = {}\n[repositories.offsite]\nlocation = {}\npassword = \"unused\"\n\
             wal = \"async\"\n[sources.db]\ntype = \"postgres\"\nmode = \"physical\"\n\
             copy_to = [\"offsite\"]\n",
            quote(&spool),
            quote(&env.path("nowhere")),
        ),
    )
    .unwrap();
    let wal = env.path("pg_wal");
    fs::create_dir_all(&wal).unwrap();
    let name = "000000010000000000000001";
    let mut seg = common::pg::fake_segment(42);
    fs::write(wal.join(name), &seg).unwrap();
    let push = || {
        env.cmd()
            .arg("--config")
            .arg(&config)
            .args(["wal-push", "-j", "1"])
            .arg(wal.join(name))
            .output()
            .unwrap()
    };
    let out = push();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(spool.join("offsite").join(name)).unwrap(), seg);
    assert!(!env.path("nowhere").exists(), "offsite was not opened");
    // Again: the same file is fine.
    let out = push();
    assert!(out.status.success(), "{}", stderr(&out));
    // Another cluster's file under the same name is refused by the primary first.
    seg[24] ^= 1;
    fs::write(wal.join(name), &seg).unwrap();
    let out = push();
    assert!(!out.status.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool.join("offsite")), 0o700);
    assert_eq!(mode(&spool.join("offsite").join(name)), 0o600);
}
