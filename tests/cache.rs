//! The local metadata cache on a local repository: two hosts (two cache roots) sharing one
//! repository, records that are damaged, planted or left over from a pruned state, modes,
//! `--no-cache` and `coffer cache clean`. The request-counting test against S3 is in s3.rs.

mod common;

use common::Env;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The repository's directory in a cache root (there is one repository per test).
fn repo_cache(root: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn names(dir: &Path) -> BTreeSet<String> {
    common::list_files(dir)
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Host A's cache root (the one `Env::cmd` uses).
fn cache_a(env: &Env) -> PathBuf {
    env.path("cache")
}

/// A command on host B: the same repository, its own cache.
fn on_b(env: &Env) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("COFFER_CACHE", env.path("cache-b"));
    c
}

fn backups(env: &Env, src: &Path, n: usize) {
    for i in 0..n {
        fs::write(src.join("changing.txt"), format!("version {i}\n")).unwrap();
        env.backup(&[src.to_str().unwrap()]);
    }
}

fn restore_latest_and_compare(env: &Env, src: &Path, name: &str) {
    let target = env.path(name);
    common::ok(
        &env.cmd()
            .args(["restore", "latest", "--target", target.to_str().unwrap()])
            .output()
            .unwrap(),
    );
    common::assert_same_tree(src, &common::restored(&target, src));
}

/// Another host forgets and prunes. This host's next commands show the repository as it
/// is: the records of index files that prune replaced are dropped, and planted back they
/// are never used (they name deleted packs, so a restore through them would fail).
#[test]
fn another_hosts_forget_and_prune_never_show_through_the_cache() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    common::make_tree(&src);
    backups(&env, &src, 6);
    assert_eq!(env.snapshots().len(), 6);
    let records = repo_cache(&cache_a(&env)).join("index");
    let old_index = names(&env.repo.join("index"));
    assert_eq!(names(&records), old_index);
    // Only the index is kept for a repository on local disk.
    assert!(!repo_cache(&cache_a(&env)).join("snapshots").exists());
    let saved = env.path("saved-records");
    fs::create_dir(&saved).unwrap();
    for n in &old_index {
        fs::copy(records.join(n), saved.join(n)).unwrap();
    }

    common::ok(
        &on_b(&env)
            .args(["forget", "--keep-last", "2", "--prune"])
            .output()
            .unwrap(),
    );
    let new_index = names(&env.repo.join("index"));
    assert_ne!(new_index, old_index, "prune rewrote no index file");
    assert_eq!(env.snapshots().len(), 2);
    restore_latest_and_compare(&env, &src, "restore-1");
    assert_eq!(names(&records), new_index, "stale records were kept");

    // The old records planted back, under their own names and under the new files' names.
    let old: Vec<&String> = old_index.iter().collect();
    for (i, n) in new_index.iter().enumerate() {
        fs::copy(saved.join(old[i % old.len()]), records.join(n)).unwrap();
    }
    for n in &old_index {
        fs::copy(saved.join(n), records.join(n)).unwrap();
    }
    restore_latest_and_compare(&env, &src, "restore-2");
    assert_eq!(names(&records), new_index);
    for n in &new_index {
        let now = fs::read(records.join(n)).unwrap();
        assert!(
            old_index
                .iter()
                .all(|o| fs::read(saved.join(o)).unwrap() != now),
            "a planted record of another index file is still in place as {n}"
        );
    }
    common::ok(&env.cmd().args(["check", "--read-data"]).output().unwrap());

    // Host B's cache followed its own prune too.
    assert_eq!(
        names(&repo_cache(&env.path("cache-b")).join("index")),
        new_index
    );
}

/// A damaged record is refused, the index file read from the repository, and the record
/// written again; the command's result is the same.
#[test]
fn a_damaged_index_record_is_read_again_from_the_repository() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    common::make_tree(&src);
    backups(&env, &src, 2);
    let records = repo_cache(&cache_a(&env)).join("index");
    let all = names(&records);
    assert_eq!(all.len(), 2, "{all:?}");
    let mut damaged = Vec::new();
    for (i, n) in all.iter().enumerate() {
        let p = records.join(n);
        let mut b = fs::read(&p).unwrap();
        if i == 0 {
            let at = b.len() / 2;
            b[at] ^= 0x40;
        } else {
            b.truncate(b.len() - 3);
        }
        fs::write(&p, &b).unwrap();
        damaged.push((p, b));
    }
    restore_latest_and_compare(&env, &src, "restore");
    for (p, b) in &damaged {
        let now = fs::read(p).unwrap();
        assert!(now != *b, "{} was not written again", p.display());
    }
    // The rewritten records are used from then on: a second backup of the unchanged tree
    // finds all its data in them.
    common::wait_until_not_racy(&src);
    let out = env.json(&["backup", "--json", src.to_str().unwrap()]);
    assert_eq!(out["summary"]["files_new"], 0, "{out}");
}

/// Directories 0700 and files 0600, whatever the umask; `--no-cache` writes nothing.
#[test]
fn the_cache_is_private_and_no_cache_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    common::make_tree(&src);
    for args in [
        vec!["--no-cache", "init", "--pack-size", "4"],
        vec!["--no-cache", "backup", src.to_str().unwrap()],
        vec!["--no-cache", "ls", "latest"],
        vec!["--no-cache", "check"],
    ] {
        common::ok(&env.cmd().args(&args).output().unwrap());
    }
    assert!(!cache_a(&env).exists(), "--no-cache wrote a cache");
    restore_latest_and_compare(&env, &src, "restore");
    let root = cache_a(&env);
    let mut dirs = vec![root.clone()];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 0);
}

/// `cache clean` removes what the caches wrote and nothing else, even when the cache root
/// was pointed at a directory that holds other files.
#[test]
fn cache_clean_removes_only_the_caches_own_files() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    common::make_tree(&src);
    backups(&env, &src, 2);
    let root = cache_a(&env);
    let mine = repo_cache(&root);
    let theirs = [
        root.join("notes.txt"),
        root.join("photos/holiday.jpg"),
        root.join("a".repeat(64)).join("unrelated"),
        mine.join("index").join("README"),
        mine.join("someone-elses.txt"),
    ];
    for p in &theirs {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"keep me\n").unwrap();
    }
    let ours: Vec<PathBuf> = common::list_files(&mine)
        .into_iter()
        .filter(|p| !theirs.contains(p))
        .collect();
    assert!(ours.len() >= 2, "{ours:?}");
    let bytes: u64 = ours.iter().map(|p| fs::metadata(p).unwrap().len()).sum();

    let report = env.json(&["cache", "clean", "--json"]);
    assert_eq!(report["files"], ours.len() as u64, "{report}");
    assert_eq!(report["bytes"], bytes, "{report}");
    assert_eq!(report["root"], root.to_str().unwrap(), "{report}");
    for p in &ours {
        assert!(!p.exists(), "{} was kept", p.display());
    }
    for p in &theirs {
        assert_eq!(fs::read(p).unwrap(), b"keep me\n", "{}", p.display());
    }

    // Cleaning an empty cache is fine; the next command fills it again.
    let again = env.json(&["cache", "clean", "--json"]);
    assert_eq!(again["files"], 0, "{again}");
    restore_latest_and_compare(&env, &src, "restore");
    assert_eq!(names(&mine.join("index")).len(), 3); // two records and the README
}
