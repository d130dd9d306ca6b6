//! Write-only keys (`key add --write-only`): a backup host holding one backs up files,
//! streams, command output, Redis and PostgreSQL (logical, physical, WAL) with full
//! deduplication, lists and forgets snapshots, and cannot read anything back: restore,
//! dump, ls, check, prune, drill and wal-fetch are refused, and nothing its key decrypts
//! holds the backed-up data. With the full key, everything it wrote restores.

mod common;

use common::pg::{chown_to_server_user, ArchiveRepo, PgCluster};
use common::redis::RedisServer;
use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::sync::Arc;

const MARKER: &str = "zebra-4471-marker";
const WRITER: &str = "writer secret";

/// `coffer key add --write-only` with the full key, giving the writer its passphrase.
fn add_writer(cmd: assert_cmd::Command) -> String {
    let mut cmd = cmd;
    let out = cmd
        .args(["key", "add", "--write-only"])
        .env("COFFER_NEW_PASSWORD", WRITER)
        .output()
        .unwrap();
    ok(&out);
    stderr(&out)
}

/// The object paths whose plaintext, as the key `pw` decrypts it, holds the marker.
fn marker_seen_with(repo: &Path, pw: &str) -> Vec<String> {
    let backend = Arc::new(coffer::backend::LocalBackend::new(repo.to_path_buf()));
    let handle = coffer::repo::Repository::open(backend, pw.as_bytes()).unwrap();
    let all = coffer::repo::write_only::decryptable(&handle).unwrap();
    assert!(all.len() > 3, "the search found almost nothing to search");
    all.into_iter()
        .filter(|(_, plain)| plain.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()))
        .map(|(path, _)| path)
        .collect()
}

fn writer(env: &Env) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.env("COFFER_PASSWORD", WRITER);
    c
}

fn writer_json(env: &Env, args: &[&str]) -> Value {
    let out = writer(env).args(args).output().unwrap();
    serde_json::from_slice(ok(&out).as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_write_only_key_backs_up_and_deduplicates_but_reads_nothing_back() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    fs::write(
        src.join(format!("{MARKER}.txt")),
        format!("{MARKER} in a file\n").repeat(1000),
    )
    .unwrap();
    // A snapshot from before the upgrade: its metadata is sealed again by it.
    let before = env.backup(&[src.to_str().unwrap(), "--exclude", &format!("*.{MARKER}")]);

    let said = step("the first write-only key upgrades the repository", || {
        add_writer(env.cmd())
    });
    assert!(said.contains("now takes write-only keys"), "{said}");
    let keys = env.json(&["key", "list", "--json"]);
    let kinds: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["passphrase", "writer"]);

    let (first, second) = step("a writer's backups deduplicate", || {
        let first = writer_json(&env, &["backup", "--json", src.to_str().unwrap()]);
        let second = writer_json(&env, &["backup", "--json", src.to_str().unwrap()]);
        for b in [&first, &second] {
            let size = b["size"].as_u64().unwrap();
            let stored = b["summary"]["bytes_stored"].as_u64().unwrap();
            assert!(
                stored * 50 < size,
                "a backup of unchanged data stored {stored} of {size} bytes"
            );
        }
        (first, second)
    });
    let stream = format!("{MARKER} on standard input\n").repeat(5000);
    let streamed = {
        let out = writer(&env)
            .args(["backup", "--json", "--stdin", "--stdin-name", "notes"])
            .write_stdin(stream.clone())
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(ok(&out).as_bytes()).unwrap()
    };
    let commanded = writer_json(
        &env,
        &[
            "backup",
            "--json",
            "--command",
            "--",
            "sh",
            "-c",
            &format!("for i in $(seq 1 2000); do echo {MARKER} $i; done"),
        ],
    );
    let redis = RedisServer::start();
    redis.cmd(&["SET", MARKER, &format!("{MARKER} value")]);
    redis.cmd(&["HSET", "h", "field", MARKER]);
    let rdb = writer_json(&env, &["backup", "--json", "--redis", &redis.url()]);

    step("a writer lists snapshots and reads no content", || {
        let listed = writer_json(&env, &["snapshots", "--json"]);
        assert_eq!(listed.as_array().unwrap().len(), 6);
        let id = second["id"].as_str().unwrap();
        let dest = env.path("by-writer");
        for args in [
            vec!["restore", id, "--target", dest.to_str().unwrap()],
            vec!["dump", streamed["id"].as_str().unwrap()],
            vec!["ls", id],
            vec!["check"],
            vec!["check", "--read-data"],
            vec!["prune"],
            vec!["key", "add", "--write-only"],
            vec![
                "restore",
                rdb["id"].as_str().unwrap(),
                "--to-redis",
                &redis.url(),
            ],
        ] {
            let out = writer(&env).args(&args).output().unwrap();
            refused(&out, 9, "needs the full key, but this is a write-only key");
        }
        assert!(!dest.exists(), "a refused restore created its target");
        let out = writer(&env).args(["key", "remove", "0"]).output().unwrap();
        refused(&out, 9, "key remove needs the full key");
        let seg = env.path("seg");
        let out = writer(&env)
            .args(["wal-fetch", "000000010000000000000001"])
            .arg(&seg)
            .output()
            .unwrap();
        refused(&out, 126, "wal-fetch needs the full key");
        // A drill restores: refused too.
        let config = env.path("coffer.toml");
        fs::write(
            &config,
            format!(
                "repository = {}\n[sources.src]\ntype = \"files\"\npaths = [{}]\n",
                toml::Value::String(env.repo.display().to_string()),
                toml::Value::String(src.display().to_string()),
            ),
        )
        .unwrap();
        let out = writer(&env)
            .arg("--config")
            .arg(&config)
            .arg("drill")
            .output()
            .unwrap();
        refused(&out, 9, "drill needs the full key");
    });

    step("nothing a writer's key decrypts holds the data", || {
        let writer_sees = marker_seen_with(&env.repo, WRITER);
        assert!(writer_sees.is_empty(), "the writer reads: {writer_sees:?}");
        // The same search with the full key finds it: the search can fail.
        let full_sees = marker_seen_with(&env.repo, "correct horse");
        assert!(
            full_sees.iter().any(|p| p.starts_with("data/")),
            "{full_sees:?}"
        );
        assert!(
            full_sees.iter().any(|p| p.contains("(sealed part)")),
            "{full_sees:?}"
        );
    });

    step("the full key restores everything the writer wrote", || {
        let dest = env.path("restored");
        ok(&env
            .cmd()
            .args(["restore", first["id"].as_str().unwrap(), "--target"])
            .arg(&dest)
            .output()
            .unwrap());
        assert_same_tree(&src, &restored(&dest, &src));
        let out = env
            .cmd()
            .args(["dump", streamed["id"].as_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.stdout == stream.as_bytes(), "the stream differs");
        let out = env
            .cmd()
            .args(["dump", commanded["id"].as_str().unwrap()])
            .output()
            .unwrap();
        let text = ok(&out);
        assert_eq!(text.lines().count(), 2000);
        assert_eq!(text.lines().last(), Some(format!("{MARKER} 2000").as_str()));
        let target = RedisServer::start();
        ok(&env
            .cmd()
            .args([
                "restore",
                rdb["id"].as_str().unwrap(),
                "--to-redis",
                &target.url(),
            ])
            .output()
            .unwrap());
        assert_eq!(target.digest(), redis.digest());
        // The snapshot from before the upgrade kept its id.
        assert!(env.snapshots().iter().any(|s| s["id"] == before.as_str()));
        ok(&env.cmd().args(["check", "--read-data"]).output().unwrap());
    });

    step("a writer forgets by policy", || {
        let out = writer(&env)
            .args(["forget", "--keep-last", "1", "--json"])
            .output()
            .unwrap();
        ok(&out);
        // One per kind and path group is kept: the files backups of `src` collapse to one.
        let left = writer_json(&env, &["snapshots", "--json"]);
        let files = left
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "files")
            .count();
        assert_eq!(files, 1, "{left}");
        ok(&env.cmd().args(["prune"]).output().unwrap());
        ok(&env.cmd().args(["check", "--read-data"]).output().unwrap());
    });
}

/// The `trees-*` files of the writer's local tree cache.
fn cached_trees(env: &Env) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for repo in fs::read_dir(env.path("cache")).unwrap() {
        for f in fs::read_dir(repo.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("trees-")
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_writer_skips_unchanged_files_through_its_local_tree_cache() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    for i in 0..40 {
        fs::write(src.join(format!("f{i}")), format!("file {i}\n").repeat(100)).unwrap();
    }
    add_writer(env.cmd());
    let backup = || writer_json(&env, &["backup", "--json", src.to_str().unwrap()]);
    let files = |b: &Value, what: &str| b["summary"][what].as_u64().unwrap();
    // Files modified less than a second before they are read are read again next time.
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let first = backup();
    assert_eq!(files(&first, "files_unchanged"), 0, "{first}");
    let all = files(&first, "files_new");
    assert!(all > 40, "{first}");
    step(
        "the next backup reads the parent's trees from the cache",
        || {
            let second = backup();
            assert_eq!(files(&second, "files_unchanged"), all, "{second}");
            assert_eq!(second["parent"], first["id"], "{second}");
            assert_eq!(cached_trees(&env).len(), 1, "the replaced cache is removed");
        },
    );
    step("a changed file is read again, the others are not", || {
        fs::write(src.join("f3"), "changed\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let third = backup();
        assert_eq!(files(&third, "files_changed"), 1, "{third}");
        assert_eq!(files(&third, "files_unchanged"), all - 1, "{third}");
    });
    step(
        "a damaged cache costs a full read, never a wrong snapshot",
        || {
            let [cache] = &cached_trees(&env)[..] else {
                panic!("one cache file expected")
            };
            let mut bytes = fs::read(cache).unwrap();
            let n = bytes.len();
            for b in &mut bytes[40..n] {
                *b ^= 0x55;
            }
            fs::write(cache, &bytes).unwrap();
            let fourth = backup();
            assert_eq!(files(&fourth, "files_unchanged"), 0, "{fourth}");
            assert!(fourth["parent"].is_null(), "{fourth}");
            let fifth = backup();
            assert_eq!(files(&fifth, "files_unchanged"), all, "{fifth}");
            let dest = env.path("restored");
            ok(&env
                .cmd()
                .args(["restore", fifth["id"].as_str().unwrap(), "--target"])
                .arg(&dest)
                .output()
                .unwrap());
            assert_same_tree(&src, &restored(&dest, &src));
        },
    );
    step("without a cache a writer reads every file", || {
        fs::remove_dir_all(env.path("cache")).unwrap();
        let b = backup();
        assert_eq!(files(&b, "files_unchanged"), 0, "{b}");
        assert_eq!(cached_trees(&env).len(), 1);
    });
    let modes = cached_trees(&env)
        .iter()
        .map(|p| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).unwrap().permissions().mode() & 0o777
        })
        .collect::<Vec<_>>();
    assert_eq!(modes, [0o600], "the cache is private");
}

#[test]
fn postgres_through_a_write_only_key_restores_with_the_full_key() {
    let archive = ArchiveRepo::new("full secret\n", &["--pack-size", "8"]);
    let full_pw = archive.holder.path().join("full-pw");
    fs::write(&full_pw, "full secret\n").unwrap();
    let mut full = archive.cmd();
    full.env("COFFER_PASSWORD_FILE", &full_pw);
    add_writer(full);
    // From now on the archive's passphrase file (used by archive_command) is the writer's.
    fs::write(&archive.pwfile, format!("{WRITER}\n")).unwrap();
    chown_to_server_user(archive.holder.path());
    let full = || {
        let mut c = archive.cmd();
        c.env("COFFER_PASSWORD_FILE", &full_pw);
        c
    };
    let pg = archive.start_archiving(&[]);
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE \"{MARKER}\" (id int PRIMARY KEY, note text);
             INSERT INTO \"{MARKER}\" SELECT i, '{MARKER} row ' || i FROM generate_series(1, 5000) i;"
        ),
    );
    let json = |out: std::process::Output| -> Value {
        serde_json::from_slice(ok(&out).as_bytes()).unwrap()
    };
    let logical = json(
        archive
            .cmd()
            .args(["backup", "--json", "--postgres", &pg.url("postgres")])
            .output()
            .unwrap(),
    );
    let physical = json(
        archive
            .cmd()
            .args([
                "backup",
                "--json",
                "--postgres",
                &pg.url("postgres"),
                "--physical",
            ])
            .output()
            .unwrap(),
    );
    assert!(
        physical["summary"]["files_new"].as_u64() > Some(100),
        "{physical}"
    );
    // Rows after the base backup reach a restore only through the WAL the writer pushed.
    pg.psql(
        "postgres",
        &format!("INSERT INTO \"{MARKER}\" VALUES (6000, '{MARKER} after the base backup')"),
    );
    pg.archive_all();

    step("the writer cannot fetch WAL or restore", || {
        let out = archive
            .cmd()
            .args(["wal-fetch", "000000010000000000000001"])
            .arg(archive.holder.path().join("fetched"))
            .output()
            .unwrap();
        refused(&out, 126, "wal-fetch needs the full key");
        let out = archive
            .cmd()
            .args(["restore", "--pgdata"])
            .arg(archive.holder.path().join("by-writer"))
            .output()
            .unwrap();
        refused(&out, 9, "restore needs the full key");
        let out = archive
            .cmd()
            .args(["restore", "latest", "--to-postgres", &pg.url("by_writer")])
            .output()
            .unwrap();
        refused(&out, 9, "restore needs the full key");
        ok(&archive.cmd().arg("wal-verify").output().unwrap());
    });

    step(
        "nothing a writer's key decrypts holds the table or its rows",
        || {
            let seen = marker_seen_with(&archive.repo, WRITER);
            assert!(seen.is_empty(), "the writer reads: {seen:?}");
            let full_sees = marker_seen_with(&archive.repo, "full secret");
            assert!(
                full_sees.iter().any(|p| p.starts_with("wal/")),
                "{full_sees:?}"
            );
        },
    );

    step(
        "the full key restores the dump and recovers through the writer's WAL",
        || {
            let out = full()
                .args([
                    "restore",
                    logical["id"].as_str().unwrap(),
                    "--to-postgres",
                    &pg.url("copy"),
                ])
                .output()
                .unwrap();
            let said = stderr(&out);
            ok(&out);
            assert!(said.contains("row counts match"), "{said}");
            assert_eq!(
                pg.psql("copy", &format!("SELECT count(*) FROM \"{MARKER}\"")),
                "5000"
            );
            let dir = archive.holder.path().join("recovered");
            ok(&full()
                .args(["restore", "--pgdata"])
                .arg(&dir)
                .output()
                .unwrap());
            chown_to_server_user(&dir);
            let recovered = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
            assert_eq!(
                recovered.psql("postgres", &format!("SELECT count(*) FROM \"{MARKER}\"")),
                "5001"
            );
            drop(recovered);
            ok(&full().args(["check", "--read-data"]).output().unwrap());
        },
    );
}
