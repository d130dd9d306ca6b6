//! The forward-compatibility gate: objects written by a newer coffer (a snapshot or the
//! repository naming a feature this one does not know, a tree entry of an unknown kind)
//! are refused with exit 2 and the version to upgrade to, never misread, deleted from or
//! called damaged. The objects are made through the library, sealed with the repository's
//! key as a newer coffer would.

mod common;

use coffer::backend::{Backend, FileKind, LocalBackend};
use coffer::repo::crypto::compress;
use coffer::repo::index::MasterIndex;
use coffer::repo::pack::BlobType;
use coffer::repo::saver::BlobSaver;
use coffer::repo::Repository;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open(env: &Env) -> Arc<Repository> {
    Arc::new(Repository::open(Arc::new(LocalBackend::new(&env.repo)), b"correct horse").unwrap())
}

fn run(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let out = env.cmd().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stderr)
}

/// `coffer ARGS` exits 2 with `needle` in its message.
fn refused(env: &Env, args: &[&str], needle: &str) {
    let (code, err) = run(env, args);
    assert_eq!(code, Some(2), "coffer {args:?}: {err}");
    assert!(err.contains(needle), "coffer {args:?}: {err}");
}

/// A repository with two snapshots of `src` (the first older); their ids.
fn two_snapshots() -> (Env, PathBuf, String, String) {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), noise(1, 300_000)).unwrap();
    let old = env.backup(&[src.to_str().unwrap(), "--time", "2024-01-01T00:00:00Z"]);
    fs::write(src.join("b"), noise(2, 300_000)).unwrap();
    let new = env.backup(&[src.to_str().unwrap(), "--time", "2024-01-02T00:00:00Z"]);
    (env, src, old, new)
}

/// Replace snapshot `id` by one edited with `f` (a new object: snapshots are named by
/// their contents); returns the new id.
fn rewrite_snapshot(repo: &Repository, id: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = repo.load_json(FileKind::Snapshot, id).unwrap();
    f(&mut v);
    let new = repo.save_json(FileKind::Snapshot, &v).unwrap().to_hex();
    repo.backend.remove(FileKind::Snapshot, id).unwrap();
    new
}

/// The commands that read snapshot `id` or plan from every snapshot (`forget` too, when
/// it can see the reason: it reads no trees) refuse; nothing is written or deleted.
fn every_reader_refuses(env: &Env, src: &Path, id: &str, needle: &str, forget: bool) {
    let packs = env.packs();
    let snaps = list_files(&env.repo.join("snapshots"));
    let target = env.path("target");
    let file = format!("{}/a", src.display());
    for args in [
        vec!["restore", &id[..8], "--target", target.to_str().unwrap()],
        vec!["dump", &id[..8], &file],
        vec!["ls", &id[..8]],
        vec!["forget", "--keep-last", "1"],
        vec!["forget", "--keep-last", "1", "--dry-run"],
        vec!["prune"],
        vec!["prune", "--dry-run"],
        vec!["check"],
    ] {
        if forget || args[0] != "forget" {
            refused(env, &args, needle);
        }
    }
    assert!(!target.exists(), "restore wrote something");
    assert_eq!(env.packs(), packs);
    assert_eq!(list_files(&env.repo.join("snapshots")), snaps);
}

#[test]
fn a_snapshot_needing_an_unknown_feature_is_refused_by_readers_forget_and_prune() {
    let (env, src, old, new) = two_snapshots();
    let repo = open(&env);
    let old = rewrite_snapshot(&repo, &old, |v| {
        v["requires"] = json!({"future-format": "9.1.0"});
    });
    let needle = format!(
        "snapshot {} needs coffer >= 9.1.0 (feature future-format)",
        &old[..8]
    );
    every_reader_refuses(&env, &src, &old, &needle, true);
    // It is still listed, with what it needs; the other snapshot still restores.
    let snaps = env.snapshots();
    let listed = snaps.iter().find(|s| s["id"] == old.as_str()).unwrap();
    assert_eq!(listed["requires"], json!({"future-format": "9.1.0"}));
    let target = env.path("r");
    env.cmd()
        .args(["restore", &new[..8], "--target", target.to_str().unwrap()])
        .assert()
        .success();
    assert_same_tree(&src, &restored(&target, &src));
    // A feature this coffer knows is no obstacle.
    let old = rewrite_snapshot(&repo, &old, |v| {
        v["requires"] = json!({"postgres-split-dump": "0.1.0"});
    });
    env.cmd().args(["ls", &old[..8]]).assert().success();
}

#[test]
fn a_snapshot_of_an_unknown_kind_is_listed_and_refused_where_its_kind_matters() {
    let (env, src, old, _) = two_snapshots();
    let repo = open(&env);
    // A kind a later coffer may add, holding one source of a kind this coffer knows.
    let old = rewrite_snapshot(&repo, &old, |v| {
        v["kind"] = json!("stack");
        v["sources"] = json!([v["sources"][0].clone()]);
    });
    // Listed as it is, in JSON and in the table.
    let snaps = env.snapshots();
    let listed = snaps.iter().find(|s| s["id"] == old.as_str()).unwrap();
    assert_eq!(listed["kind"], "stack");
    let out = env.cmd().arg("snapshots").assert().success();
    let table = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(table.contains(" stack "), "{table}");
    // Choosing what to dump, or reading it as a base backup, needs its kind.
    let needle = format!(r#"snapshot {} is of kind "stack""#, &old[..8]);
    refused(&env, &["dump", &old[..8]], &needle);
    let pgdata = env.path("pgdata");
    refused(
        &env,
        &["restore", &old[..8], "--pgdata", pgdata.to_str().unwrap()],
        &needle,
    );
    assert!(!pgdata.exists());
    // What does not depend on its kind still works: its files restore.
    let target = env.path("r");
    env.cmd()
        .args(["restore", &old[..8], "--target", target.to_str().unwrap()])
        .assert()
        .success();
    assert!(restored(&target, &src).join("a").exists());
}

#[test]
fn source_metadata_that_does_not_decode_is_named_not_skipped() {
    let (env, src, old, _) = two_snapshots();
    let repo = open(&env);
    let file = format!("{}/a", src.display());
    // A PostgreSQL dump source whose record is not a dump's.
    let old = rewrite_snapshot(&repo, &old, |v| {
        v["sources"] = json!([{"kind": "postgres", "name": "app", "path": file,
                               "metadata": {"tables": 5}}]);
    });
    let (code, err) = run(&env, &["dump", &old[..8], &file]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!(
            r#"snapshot {}: the metadata of its postgres source "app" is unreadable"#,
            &old[..8]
        )),
        "{err}"
    );
}

#[test]
fn a_tree_entry_of_an_unknown_kind_is_refused_not_called_damage() {
    let (env, src, old, _) = two_snapshots();
    let repo = open(&env);
    // A directory whose entry is of a kind a later coffer may add.
    let tree = json!({"nodes": [
        {"name": "a", "type": "redis-keyspace", "mode": 384, "uid": 0, "gid": 0,
         "mtime_ns": 0, "size": 0}
    ]});
    let mut saver = BlobSaver::new(repo.clone(), Arc::new(MasterIndex::default()), true).unwrap();
    let (sub, _) = saver
        .save(BlobType::Tree, serde_json::to_vec(&tree).unwrap())
        .unwrap();
    // The snapshot's path, down to the directory holding that entry.
    let mut id = sub;
    let comps: Vec<String> = src
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for name in comps.iter().rev() {
        let t = json!({"nodes": [{"name": name, "type": "dir", "mode": 448, "uid": 0,
            "gid": 0, "mtime_ns": 0, "subtree": id.to_hex()}]});
        id = saver
            .save(BlobType::Tree, serde_json::to_vec(&t).unwrap())
            .unwrap()
            .0;
    }
    saver.finish().unwrap();
    let old = rewrite_snapshot(&repo, &old, |v| v["tree"] = json!(id.to_hex()));
    every_reader_refuses(
        &env,
        &src,
        &old,
        r#"holds an entry of kind "redis-keyspace", which this coffer"#,
        false,
    );
}

#[test]
fn a_repository_needing_an_unknown_feature_is_refused_by_every_command() {
    let (env, src, old, _) = two_snapshots();
    let repo = open(&env);
    let b = LocalBackend::new(&env.repo);
    let plain = repo
        .keys
        .meta()
        .open(&b.read(FileKind::Config, "").unwrap())
        .unwrap();
    let mut config: Value = serde_json::from_slice(&compress::decode(&plain).unwrap()).unwrap();
    assert!(
        config.get("features").is_none(),
        "no features are stored when there are none: {config}"
    );
    config["features"] = json!({"write-only-keys": "0.5.0"});
    let enc = compress::Compressor::new(3).encode(&serde_json::to_vec(&config).unwrap());
    b.write(FileKind::Config, "", &repo.keys.meta().seal_encoded(enc))
        .unwrap();
    let needle = "this repository needs coffer >= 0.5.0 (feature write-only-keys)";
    every_reader_refuses(&env, &src, &old, needle, true);
    for args in [
        vec!["snapshots"],
        vec!["backup", src.to_str().unwrap()],
        vec!["unlock"],
    ] {
        refused(&env, &args, needle);
    }
}
