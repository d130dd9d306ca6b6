//! Durability of what coffer creates outside the object store: the default key file and
//! the folders of a new local repository. A new file or folder survives a power loss only
//! once the folder holding it was synced after it appeared; these tests watch the system
//! calls of a real run (strace) and require that order.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// One system call that strace saw, in order.
#[derive(Debug)]
enum Call {
    Mkdir(PathBuf),
    /// fsync or fdatasync of a file or folder.
    Sync(PathBuf),
    /// link or rename to a new name.
    Name(PathBuf),
    /// syncfs of the file system holding this file or folder.
    SyncFs(PathBuf),
}

/// The quoted path after `prefix` in `line`, or the path inside `<…>` for a fd argument.
fn quoted(s: &str) -> Vec<PathBuf> {
    s.split('"').skip(1).step_by(2).map(PathBuf::from).collect()
}

/// Run coffer under strace with `envs` (nothing else of ours inherited); the calls it
/// made that succeeded, in order.
fn traced(log: &Path, envs: &[(&str, &Path)], args: &[&str]) -> Vec<Call> {
    let mut cmd = std::process::Command::new(common::strace::binary());
    cmd.args(["-f", "-y", "-qq", "-s", "4096", "-o"])
        .arg(log)
        .args([
            "-e",
            "trace=mkdir,mkdirat,fsync,fdatasync,syncfs,link,linkat,rename,renameat,renameat2",
        ])
        .arg(assert_cmd::cargo::cargo_bin("coffer"))
        .args(args);
    common::clean_env(&mut cmd);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "coffer {args:?} under strace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut calls = Vec::new();
    for line in common::strace::completed_calls(&fs::read_to_string(log).unwrap()) {
        // "PID call(args) = 0"
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((call, args)) = rest.split_once('(') else {
            continue;
        };
        let line = line.as_str();
        let fd_path = || {
            let fd = args.split_once('<').and_then(|(_, p)| p.split_once('>'));
            PathBuf::from(fd.expect(line).0)
        };
        match call {
            "mkdir" | "mkdirat" => calls.push(Call::Mkdir(quoted(args).remove(0))),
            "fsync" | "fdatasync" => calls.push(Call::Sync(fd_path())),
            "syncfs" => calls.push(Call::SyncFs(fd_path())),
            "link" | "linkat" | "rename" | "renameat" | "renameat2" => {
                // A name relative to a directory descriptor (…at calls) is joined to the
                // directory's path, which -y prints as `FD<PATH>` before it.
                let name = quoted(args).pop().expect(line);
                let before = &args[..args.rfind('"').and_then(|e| args[..e].rfind('"')).unwrap()];
                let dir = before
                    .rsplit_once('<')
                    .and_then(|(_, p)| p.split_once('>'))
                    .map(|(p, _)| PathBuf::from(p));
                calls.push(Call::Name(match dir {
                    Some(d) if name.is_relative() => d.join(name),
                    _ => name,
                }))
            }
            _ => {}
        }
    }
    calls
}

/// Every folder made, and every file named, under `root` has its parent synced after it.
fn assert_parents_synced(calls: &[Call], root: &Path) -> BTreeSet<PathBuf> {
    let mut made = BTreeSet::new();
    for (i, c) in calls.iter().enumerate() {
        let (Call::Mkdir(p) | Call::Name(p)) = c else {
            continue;
        };
        if !p.starts_with(root) {
            continue;
        }
        let parent = p.parent().unwrap();
        assert!(
            calls[i + 1..]
                .iter()
                .any(|c| matches!(c, Call::Sync(s) if s == parent)),
            "{} was created but {} was not synced after it:\n{calls:#?}",
            p.display(),
            parent.display()
        );
        made.insert(p.clone());
    }
    made
}

#[test]
fn the_default_key_file_and_its_folders_are_durable_before_the_repository_exists() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().canonicalize().unwrap();
    let src = root.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    // No repository named: the first backup creates the key file and the default
    // repository, two folder levels below one that exists.
    let home = root.join("home/coffer");
    let calls = traced(
        &root.join("strace.log"),
        &[("COFFER_HOME", &home)],
        &["backup", src.to_str().unwrap()],
    );
    let key = home.join("key");
    assert!(key.is_file());
    let made = assert_parents_synced(&calls, &root);
    for p in [
        home.parent().unwrap(),
        &home,
        &key,
        &home.join("repo"),
        &home.join("repo/data"),
        &home.join("repo/data/00"),
        &home.join("repo/config"),
    ] {
        assert!(
            made.contains(p),
            "{} was not seen created: {made:#?}",
            p.display()
        );
    }
    // The key's bytes were synced before it got its name.
    let named = calls
        .iter()
        .position(|c| matches!(c, Call::Name(p) if *p == key))
        .unwrap();
    assert!(
        calls[..named].iter().any(|c| matches!(c, Call::Sync(p)
            if p.parent() == Some(home.as_path())
                && p.file_name().unwrap().to_string_lossy().starts_with(".key."))),
        "the key file was named before its contents were synced: {calls:#?}"
    );
}

#[test]
fn a_new_local_repository_is_durable_down_to_its_parent() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().canonicalize().unwrap();
    let repo = root.join("new/repo");
    let pw = root.join("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    let calls = traced(
        &root.join("strace.log"),
        &[("COFFER_REPO", &repo), ("COFFER_PASSWORD_FILE", &pw)],
        &["init", "--pack-size", "4"],
    );
    let made = assert_parents_synced(&calls, &root);
    for p in [
        root.join("new"),
        repo.clone(),
        repo.join("keys"),
        repo.join("config"),
    ] {
        assert!(
            made.contains(&p),
            "{} was not seen created: {made:#?}",
            p.display()
        );
    }
}

/// `restore --sync` exits only after a syncfs of the target's file system that follows the
/// last file it named there; a plain restore leaves write-back to the kernel.
#[test]
fn restore_with_sync_flushes_what_it_wrote_before_it_exits() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().canonicalize().unwrap();
    let src = root.join("src");
    common::make_tree(&src);
    let repo = root.join("repo");
    let pw = root.join("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    let envs = [
        ("COFFER_REPO", repo.as_path()),
        ("COFFER_PASSWORD_FILE", &pw),
    ];
    traced(&root.join("init.log"), &envs, &["init", "--pack-size", "4"]);
    traced(
        &root.join("backup.log"),
        &envs,
        &["backup", src.to_str().unwrap()],
    );

    let target = root.join("synced");
    let calls = traced(
        &root.join("restore.log"),
        &envs,
        &[
            "restore",
            "latest",
            "--sync",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    common::assert_same_tree(&src, &common::restored(&target, &src));
    let last_named = calls
        .iter()
        .rposition(|c| matches!(c, Call::Name(p) if p.starts_with(&target)))
        .unwrap_or_else(|| panic!("no file was named in {}: {calls:#?}", target.display()));
    assert!(
        calls[last_named..]
            .iter()
            .any(|c| matches!(c, Call::SyncFs(p) if p.starts_with(&target))),
        "no syncfs of {} after the last file was named: {calls:#?}",
        target.display()
    );

    let plain = root.join("plain");
    let calls = traced(
        &root.join("plain.log"),
        &envs,
        &["restore", "latest", "--target", plain.to_str().unwrap()],
    );
    common::assert_same_tree(&src, &common::restored(&plain, &src));
    assert!(
        !calls.iter().any(|c| matches!(c, Call::SyncFs(_))),
        "a plain restore synced: {calls:#?}"
    );
}
