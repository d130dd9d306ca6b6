//! `coffer copy` between repositories declared in the config file: a destination made
//! `init --like` the primary gets only the blobs it lacks, restores identically, keeps the
//! snapshots' metadata and its own retention, refuses to be fed by an unlike repository, and
//! resumes an interrupted copy from the index files it had written.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A primary repository (the Env's) and `[repositories.offsite]` (and `other`) in a config
/// file, with their own passphrase files; `offsite` created like the primary.
struct Two {
    env: Env,
    config: PathBuf,
}

impl Two {
    fn new(offsite_pack_mib: &str) -> Two {
        let env = Env::new();
        env.init();
        fs::write(env.path("offsite-pw"), "offsite secret\n").unwrap();
        fs::write(env.path("other-pw"), "other secret\n").unwrap();
        let config = env.path("coffer.toml");
        fs::write(
            &config,
            format!(
                "repository = {}\n\
                 [repositories.offsite]\nlocation = {}\npassword_file = \"offsite-pw\"\n\
                 [repositories.other]\nlocation = {}\npassword_file = \"other-pw\"\n\
                 [sources.numbers]\ntype = \"command\"\ncommand = [\"seq\", \"1\", \"300000\"]\n",
                toml::Value::String(env.repo.display().to_string()),
                toml::Value::String(env.path("offsite").display().to_string()),
                toml::Value::String(env.path("other").display().to_string()),
            ),
        )
        .unwrap();
        let t = Two { env, config };
        ok(&t.run(&[
            "--repo",
            "offsite",
            "init",
            "--like",
            "primary",
            "--pack-size",
            offsite_pack_mib,
        ]));
        t
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.env.std_cmd(assert_cmd::cargo::cargo_bin("coffer"));
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        serde_json::from_slice(ok(&out).as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    fn snapshots(&self, repo: &str) -> Vec<Value> {
        self.json(&["--repo", repo, "snapshots", "--json"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn copy(&self, extra: &[&str]) -> Value {
        let mut args = vec!["copy", "--to", "offsite", "--json"];
        args.extend_from_slice(extra);
        self.json(&args)
    }
}

fn restore(t: &Two, repo: &str, id: &str, target: &Path) {
    ok(&t.run(&[
        "--repo",
        repo,
        "restore",
        id,
        "--target",
        target.to_str().unwrap(),
    ]));
}

#[test]
fn a_copy_moves_only_missing_blobs_restores_identically_and_keeps_metadata() {
    let t = Two::new("4");
    let src = t.env.path("src");
    make_tree(&src);
    fs::write(src.join("big.bin"), noise(11, 12 << 20)).unwrap();
    wait_until_not_racy(&src);
    let files = t.env.backup(&[src.to_str().unwrap(), "--tag", "first"]);
    ok(&t.run(&["backup", "--source", "numbers"]));

    let r = t.copy(&[]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r:#}");
    assert_eq!(r["skipped"], 0);
    let first_bytes = r["bytes_copied"].as_u64().unwrap();
    assert!(first_bytes > 12 << 20, "{r:#}");

    // The copies say what the originals say, and name them.
    let primary = t.snapshots("primary");
    let offsite = t.snapshots("offsite");
    assert_eq!(offsite.len(), 2);
    for o in &offsite {
        let orig = primary
            .iter()
            .find(|p| p["id"] == o["original"])
            .unwrap_or_else(|| panic!("no original for {o:#}"));
        for key in [
            "time", "kind", "paths", "tags", "hostname", "source", "sources", "size",
        ] {
            assert_eq!(o[key], orig[key], "{key}: {o:#} against {orig:#}");
        }
        assert_ne!(o["id"], orig["id"]);
    }
    let copied_files = offsite
        .iter()
        .find(|o| o["original"] == files.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = t.env.path("restored");
    restore(&t, "offsite", &copied_files, &target);
    assert_same_tree(&src, &restored(&target, &src));
    let out = t.run(&["--repo", "offsite", "dump", "latest"]);
    let numbers: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert!(
        out.status.success() && out.stdout == numbers.as_bytes(),
        "{}",
        stderr(&out)
    );
    ok(&t.run(&["--repo", "offsite", "check", "--read-data"]));

    // Copied already: skipped. A new, unchanged backup: almost nothing moves.
    let again = t.copy(&[]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0, "{again:#}");
    assert_eq!(again["skipped"], 2);
    t.env.backup(&[src.to_str().unwrap()]);
    let third = t.copy(&["latest"]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1, "{third:#}");
    let moved = third["bytes_copied"].as_u64().unwrap();
    assert!(
        moved * 50 < first_bytes,
        "an unchanged snapshot moved {moved} bytes of {first_bytes}"
    );

    // Each repository has its own retention (the last of each group: the files, the numbers).
    assert_eq!(t.snapshots("offsite").len(), 3);
    ok(&t.run(&["--repo", "offsite", "forget", "--keep-last", "1", "--prune"]));
    assert_eq!(t.snapshots("offsite").len(), 2);
    assert_eq!(t.snapshots("primary").len(), 3);
    ok(&t.run(&["--repo", "offsite", "check", "--read-data"]));
    ok(&t.run(&["check"]));
}

#[test]
fn a_destination_not_made_like_the_origin_is_refused() {
    let t = Two::new("4");
    ok(&t.run(&["--repo", "other", "init"]));
    ok(&t.run(&["backup", "--source", "numbers"]));
    let out = t.run(&["copy", "--to", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("init --like"), "{}", stderr(&out));
    assert!(t.snapshots("other").is_empty());
    let out = t.run(&["copy", "--to", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no repository named \"nowhere\""),
        "{}",
        stderr(&out)
    );
    // The wrong passphrase for the destination is its own error, not the primary's.
    fs::write(t.env.path("offsite-pw"), "not it\n").unwrap();
    let out = t.run(&["copy", "--to", "offsite"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn an_interrupted_copy_resumes_from_its_index_files() {
    // 1 MiB packs in the destination: an index file every 16 of them.
    let t = Two::new("1");
    let src = t.env.path("src");
    fs::create_dir(&src).unwrap();
    for i in 0..6u64 {
        fs::write(src.join(format!("f{i}")), noise(100 + i, 24 << 20)).unwrap();
    }
    let id = t.env.backup(&[src.to_str().unwrap()]);
    let total: u64 = 6 * (24 << 20);

    let mut child = t.cmd(&["copy", "--to", "offsite"]).spawn().unwrap();
    let index = t.env.path("offsite").join("index");
    let t0 = Instant::now();
    while list_files(&index).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the copy ended ({status}) before an index file was written");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no index file");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        t.snapshots("offsite").is_empty(),
        "a killed copy wrote a snapshot"
    );
    ok(&t.run(&["--repo", "offsite", "unlock"]));

    let r = t.copy(&[]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r:#}");
    let moved = r["bytes_copied"].as_u64().unwrap();
    assert!(
        moved <= total - (15 << 20),
        "the resumed copy moved {moved} of {total} bytes"
    );
    ok(&t.run(&["--repo", "offsite", "check", "--read-data"]));
    let copy = &t.snapshots("offsite")[0];
    assert_eq!(copy["original"], id.as_str());
    let target = t.env.path("restored");
    restore(&t, "offsite", copy["id"].as_str().unwrap(), &target);
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn copy_to_copies_each_new_snapshot_after_its_backup() {
    let t = Two::new("4");
    let text = fs::read_to_string(&t.config).unwrap();
    fs::write(
        &t.config,
        format!("{text}copy_to = [\"offsite\"]\n[sources.notes]\ntype = \"command\"\nshell = \"echo hello\"\ncopy_to = [\"other\"]\n"),
    )
    .unwrap();
    let r = t.json(&["backup", "--source", "numbers", "--json"]);
    let s = &r["sources"][0];
    assert_eq!(s["status"], "ok", "{r:#}");
    assert_eq!(s["copied_to"], serde_json::json!(["offsite"]));
    let offsite = t.snapshots("offsite");
    assert_eq!(offsite.len(), 1);
    assert_eq!(offsite[0]["original"], s["snapshot"]);
    assert_eq!(offsite[0]["source"], "numbers");

    // The destination's own keep applies to the copies after each copy; the primary keeps all.
    let with_keep = fs::read_to_string(&t.config).unwrap().replace(
        "password_file = \"offsite-pw\"\n",
        "password_file = \"offsite-pw\"\nkeep = { last = 1 }\n",
    );
    fs::write(&t.config, &with_keep).unwrap();
    let r = t.json(&["backup", "--source", "numbers", "--json"]);
    let newest = r["sources"][0]["snapshot"].clone();
    let offsite = t.snapshots("offsite");
    assert_eq!(offsite.len(), 1, "{offsite:#?}");
    assert_eq!(offsite[0]["original"], newest);
    assert_eq!(t.snapshots("primary").len(), 2);
    // And `--repo offsite forget` without rules applies it too.
    let again = t.copy(&["--source", "numbers"]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 1, "{again:#}");
    assert_eq!(t.snapshots("offsite").len(), 2);
    ok(&t.run(&["--repo", "offsite", "forget"]));
    let offsite = t.snapshots("offsite");
    assert_eq!(offsite.len(), 1, "{offsite:#?}");
    assert_eq!(offsite[0]["original"], newest);

    // A copy that cannot be made fails the source; the snapshot stays in the primary.
    ok(&t.run(&["--repo", "other", "init"]));
    let out = t.run(&["backup", "--source", "notes", "--json"]);
    assert!(!out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &r["sources"][0];
    assert_eq!(s["status"], "failed", "{r:#}");
    assert!(
        s["error"].as_str().unwrap().contains("copy to other"),
        "{r:#}"
    );
    assert!(s["snapshot"].is_string(), "{r:#}");
    assert_eq!(s["copied_to"], serde_json::json!([]));

    // A copy_to that names no repository is a config error.
    fs::write(&t.config, format!("{text}copy_to = [\"nowhere\"]\n")).unwrap();
    let out = t.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("copy_to names \"nowhere\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_copy_missed_while_the_destination_was_away_is_made_by_the_next_backup() {
    let t = Two::new("4");
    let text = fs::read_to_string(&t.config).unwrap();
    fs::write(&t.config, format!("{text}copy_to = [\"offsite\"]\n")).unwrap();
    let backup = || t.run(&["backup", "--source", "numbers", "--json"]);
    ok(&backup());
    assert_eq!(t.snapshots("offsite").len(), 1);

    // The destination is away: the backup stands, its copy fails.
    let away = t.env.path("offsite-away");
    fs::rename(t.env.path("offsite"), &away).unwrap();
    let out = backup();
    assert!(!out.status.success());
    let missed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let missed = missed["sources"][0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    fs::rename(&away, t.env.path("offsite")).unwrap();

    // Back: the next backup copies the one it missed and its own.
    let r: Value = serde_json::from_slice(ok(&backup()).as_bytes()).unwrap();
    let newest = r["sources"][0]["snapshot"].as_str().unwrap().to_string();
    let mut originals: Vec<String> = t
        .snapshots("offsite")
        .iter()
        .map(|s| s["original"].as_str().unwrap().to_string())
        .collect();
    originals.sort();
    let mut want: Vec<String> = t
        .snapshots("primary")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    assert_eq!(originals, want, "missed {missed}, newest {newest}");

    // Older snapshots that the destination forgot are not copied back.
    ok(&t.run(&["--repo", "offsite", "forget", "--keep-last", "1"]));
    ok(&backup());
    assert_eq!(t.snapshots("offsite").len(), 2);
}
