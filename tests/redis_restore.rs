//! `restore --to-redis`: a Redis snapshot restored key by key into a running server, on
//! real `redis-server`s started by the tests (tests/common/redis.rs).

mod common;

use coffer::sources::redis::conn::Reply;
use coffer::sources::redis::rdb::{self, Item, RdbReader};
use common::redis::{fill_all_types, pipeline, RedisServer};
use common::Env;
use serde_json::Value;

fn b(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

/// A repository with one backup of `src`; returns the snapshot id.
fn backed_up(env: &Env, src: &RedisServer) -> String {
    env.init();
    env.backup(&["--redis", &src.url()])
}

/// `coffer restore ID --to-redis URL ARGS --json`: the exit code and the report.
fn restore(env: &Env, id: &str, url: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["restore", id, "--to-redis", url, "--json"];
    all.extend_from_slice(args);
    let out = env.cmd().args(&all).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn restore_ok(env: &Env, id: &str, url: &str, args: &[&str]) -> Value {
    let (code, json, stderr) = restore(env, id, url, args);
    assert_eq!(code, 0, "restore {args:?} failed: {stderr}");
    json
}

fn pexpiretime(s: &RedisServer, db: u32, key: &str) -> i64 {
    match s.cmd_db(db, &["PEXPIRETIME", key]) {
        Reply::Int(n) => n,
        o => panic!("{o:?}"),
    }
}

fn digest_value(s: &RedisServer, db: u32, key: &str) -> String {
    match s.cmd_db(db, &["DEBUG", "DIGEST-VALUE", key]) {
        Reply::Array(Some(v)) => v[0].text().unwrap(),
        o => panic!("{o:?}"),
    }
}

fn exists(s: &RedisServer, db: u32, key: &str) -> bool {
    matches!(s.cmd_db(db, &["EXISTS", key]), Reply::Int(1))
}

#[test]
fn every_type_and_encoding_restores_online_with_its_ttl() {
    let src = RedisServer::start();
    let counts = fill_all_types(&src);
    src.cmd(&[
        "FUNCTION",
        "LOAD",
        "#!lua name=coffertest\nredis.register_function('seven', function() return 7 end)",
    ]);
    let env = Env::new();
    let id = backed_up(&env, &src);

    let dst = RedisServer::start();
    let r = restore_ok(&env, &id, &dst.url(), &[]);
    assert_eq!(dst.digest(), src.digest(), "DEBUG DIGEST differs");
    for (db, n) in &counts {
        assert_eq!(dst.dbsize(*db), *n, "db {db}");
    }
    let total: i64 = counts.iter().map(|c| c.1).sum();
    assert_eq!(r["keys_restored"], total);
    assert_eq!(r["keys_expired"], 0);
    assert_eq!(r["functions_restored"], 1);
    assert_eq!(r["dry_run"], false);
    for d in r["databases"].as_array().unwrap() {
        assert_eq!(d["actual"], d["expected"], "{d}");
        assert_eq!(d["snapshot_keys"], d["rdb_keys"], "{d}");
    }
    // Absolute expiry times are kept to the millisecond.
    for (db, key) in [
        (0, "str:ttl"),
        (0, "hash:small"),
        (1, "db1:0"),
        (1, "db1:297"),
    ] {
        let t = pexpiretime(&src, db, key);
        assert!(t > 0, "{key} has no expiry in the source");
        assert_eq!(pexpiretime(&dst, db, key), t, "{key}");
    }
    assert_eq!(pexpiretime(&dst, 0, "str:small"), -1);
    // The function library came along.
    assert!(matches!(dst.cmd(&["FCALL", "seven", "0"]), Reply::Int(7)));
    // Streams keep their groups, consumers and pending entries.
    let pending =
        |s: &RedisServer| format!("{:?}", s.cmd(&["XPENDING", "stream:events", "workers"]));
    assert_eq!(pending(&dst), pending(&src));
    let groups = |s: &RedisServer| format!("{:?}", s.cmd(&["XINFO", "GROUPS", "stream:events"]));
    assert_eq!(groups(&dst), groups(&src));
    // Small and large encodings stay what they were.
    for key in [
        "list:small",
        "list:big",
        "set:intset",
        "set:small",
        "set:big",
        "zset:small",
        "zset:big",
        "hash:small",
        "hash:big",
        "str:big-noise",
    ] {
        let enc = |s: &RedisServer| s.cmd(&["OBJECT", "ENCODING", key]).text();
        assert_eq!(enc(&dst), enc(&src), "{key}");
    }
}

#[test]
fn payloads_are_what_dump_returns() {
    // The parser cuts every value exactly: its RESTORE payload is byte for byte the DUMP of
    // the same key on the server that wrote the RDB.
    let src = RedisServer::start();
    fill_all_types(&src);
    for lib in ["one", "two"] {
        src.cmd(&[
            "FUNCTION",
            "LOAD",
            &format!(
                "#!lua name={lib}\nredis.register_function('f_{lib}', function() return 1 end)"
            ),
        ]);
    }
    src.cmd(&["SAVE"]);
    let file = std::fs::File::open(src.dir().join("dump.rdb")).unwrap();
    let mut r = RdbReader::new(file).unwrap();
    let version = r.header().version;
    let mut n = 0;
    let mut functions = Vec::new();
    while let Some(item) = r.next_item().unwrap() {
        let e = match item {
            Item::Key(e) => e,
            Item::Function(f) => {
                functions.extend_from_slice(&f.raw);
                continue;
            }
        };
        let mut conn = src.conn(e.db);
        let dump = match conn.command(&[b"DUMP", &e.key]).unwrap() {
            Reply::Bulk(Some(d)) => d,
            o => panic!("DUMP {}: {o:?}", e.key_display()),
        };
        assert_eq!(e.restore_payload(version), dump, "key {}", e.key_display());
        n += 1;
    }
    assert!(n > 2000);
    assert!(r.trailer().unwrap().checksum.is_some());
    // The function libraries, as FUNCTION DUMP gives them (in the same order).
    let dump = match src.cmd(&["FUNCTION", "DUMP"]) {
        Reply::Bulk(Some(d)) => d,
        o => panic!("{o:?}"),
    };
    assert_eq!(rdb::finish_payload(functions, version), dump);
}

#[test]
fn one_database_or_matching_keys() {
    let src = RedisServer::start();
    let counts = fill_all_types(&src);
    let env = Env::new();
    let id = backed_up(&env, &src);

    // --db 1: only database 1, into database 1.
    let dst = RedisServer::start();
    let r = restore_ok(&env, &id, &dst.url(), &["--db", "1"]);
    assert_eq!(dst.dbsize(0), 0);
    assert_eq!(dst.dbsize(5), 0);
    assert_eq!(dst.dbsize(1), counts.iter().find(|c| c.0 == 1).unwrap().1);
    assert_eq!(r["databases"].as_array().unwrap().len(), 1);
    assert_eq!(
        digest_value(&dst, 1, "db1:hash"),
        digest_value(&src, 1, "db1:hash")
    );

    // --db 5 into the URL's database 3.
    let dst = RedisServer::start();
    restore_ok(&env, &id, &format!("{}/3", dst.url()), &["--db", "5"]);
    assert_eq!(dst.dbsize(3), 2);
    assert_eq!(dst.dbsize(5), 0);
    assert!(exists(&dst, 3, "only-in-5"));

    // A URL with a database but no --db, for a snapshot of several: refused, nothing written.
    let (code, _, stderr) = restore(&env, &id, &format!("{}/3", dst.url()), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--db"), "{stderr}");
    assert_eq!(dst.dbsize(0), 0);

    // --key globs, matched on the key's bytes, in every database.
    let dst = RedisServer::start();
    let r = restore_ok(
        &env,
        &id,
        &dst.url(),
        &[
            "--key",
            "str:*",
            "--key",
            "list:sma?l",
            "--key",
            "only-in-[5]",
        ],
    );
    for key in [
        "str:small",
        "str:int",
        "str:big-noise",
        "str:ttl",
        "list:small",
    ] {
        assert_eq!(
            digest_value(&dst, 0, key),
            digest_value(&src, 0, key),
            "{key}"
        );
    }
    let matching = match src.cmd(&["KEYS", "str:*"]) {
        Reply::Array(Some(v)) => v.len() as i64,
        o => panic!("{o:?}"),
    };
    assert_eq!(dst.dbsize(0), matching + 1);
    assert!(!exists(&dst, 0, "list:big"));
    assert!(!exists(&dst, 0, "hash:small"));
    assert!(exists(&dst, 5, "only-in-5"));
    assert_eq!(dst.dbsize(1), 0);
    assert_eq!(r["keys_restored"], r["keys_selected"]);
    assert_eq!(
        pexpiretime(&dst, 0, "str:ttl"),
        pexpiretime(&src, 0, "str:ttl")
    );

    // A bad glob is a usage error.
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &["--key", "[oops"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn existing_keys_need_replace() {
    let src = RedisServer::start();
    let mut conn = src.conn(0);
    pipeline(
        &mut conn,
        &[
            b(&["SET", "a", "from-snapshot"]),
            b(&["RPUSH", "b", "1", "2"]),
            b(&["SET", "c", "c"]),
        ],
    );
    let env = Env::new();
    let id = backed_up(&env, &src);

    let dst = RedisServer::start();
    let mut conn = dst.conn(0);
    pipeline(
        &mut conn,
        &[
            b(&["SET", "a", "already-here"]),
            b(&["SET", "mine", "kept"]),
        ],
    );
    let before = dst.digest();
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--replace"), "{stderr}");
    assert!(stderr.contains("\"a\""), "{stderr}");
    assert_eq!(dst.digest(), before, "a refused restore changed the target");

    let r = restore_ok(&env, &id, &dst.url(), &["--replace"]);
    assert_eq!(
        dst.cmd(&["GET", "a"]).text().as_deref(),
        Some("from-snapshot")
    );
    assert_eq!(dst.cmd(&["GET", "mine"]).text().as_deref(), Some("kept"));
    assert_eq!(dst.dbsize(0), 4);
    assert_eq!(r["keys_replaced"], 1);
    assert_eq!(r["databases"][0]["expected"], 4);
    assert_eq!(r["databases"][0]["actual"], 4);
}

#[test]
fn flush_asks_takes_a_safety_backup_and_empties_only_the_databases_restored_into() {
    let src = RedisServer::start();
    fill_all_types(&src);
    let env = Env::new();
    let id = backed_up(&env, &src);

    let dst = RedisServer::start();
    let mut c0 = dst.conn(0);
    pipeline(
        &mut c0,
        &[
            b(&["SET", "str:small", "old"]),
            b(&["SET", "old-only", "x"]),
        ],
    );
    let mut c9 = dst.conn(9);
    pipeline(&mut c9, &[b(&["SET", "untouched", "9"])]);
    let old = dst.digest();

    // Off a terminal, --flush needs --yes: refused, nothing changed, no safety backup.
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &["--flush"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(dst.digest(), old);
    assert_eq!(env.snapshots().len(), 1);

    let r = restore_ok(&env, &id, &dst.url(), &["--flush", "--yes"]);
    assert!(!exists(&dst, 0, "old-only"), "db 0 was not flushed");
    assert!(
        exists(&dst, 9, "untouched"),
        "db 9 was flushed but not restored into"
    );
    assert_eq!(r["flushed"], serde_json::json!([0]));
    for d in r["databases"].as_array().unwrap() {
        assert_eq!(d["actual"], d["expected"], "{d}");
    }
    // The safety backup holds the old data, and `latest` is not it.
    let safety = r["safety_snapshot"].as_str().unwrap().to_string();
    let snaps = env.snapshots();
    let s = snaps
        .iter()
        .find(|s| s["id"].as_str() == Some(safety.as_str()))
        .expect("the safety snapshot is listed");
    assert!(s["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "safety-backup"));
    let back = RedisServer::start();
    let r2 = restore_ok(&env, &safety[..8], &back.url(), &[]);
    assert_eq!(
        back.digest(),
        old,
        "the safety backup does not hold the old data"
    );
    assert_eq!(r2["keys_restored"], 3);
    let check = RedisServer::start();
    let r3 = restore_ok(&env, "latest", &check.url(), &["--dry-run"]);
    assert_eq!(r3["snapshot"].as_str().unwrap(), &id[..8]);
    assert_eq!(check.dbsize(0), 0);

    // --no-safety-backup flushes without one.
    let n = env.snapshots().len();
    restore_ok(
        &env,
        &id,
        &dst.url(),
        &["--flush", "--yes", "--no-safety-backup"],
    );
    assert_eq!(env.snapshots().len(), n);
    assert_eq!(dst.dbsize(0), src.dbsize(0));
    assert!(exists(&dst, 9, "untouched"));
}

#[test]
fn dry_run_reads_everything_and_changes_nothing() {
    let src = RedisServer::start();
    fill_all_types(&src);
    let env = Env::new();
    let id = backed_up(&env, &src);
    let dst = RedisServer::start();
    let mut c = dst.conn(0);
    pipeline(&mut c, &[b(&["SET", "str:small", "theirs"])]);
    let before = dst.digest();
    let r = restore_ok(&env, &id, &dst.url(), &["--dry-run", "--flush", "--yes"]);
    assert_eq!(r["dry_run"], true);
    assert!(!r["plan"].as_array().unwrap().is_empty());
    assert_eq!(dst.digest(), before);
    assert_eq!(dst.dbsize(0), 1);
    assert_eq!(env.snapshots().len(), 1, "a dry run took a safety backup");
    // Without --flush or --replace the dry run reports the clash as the restore would.
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &["--dry-run"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(dst.digest(), before);
}

#[test]
fn expired_keys_are_skipped_and_counted() {
    let src = RedisServer::start();
    // Keep expired keys in memory (no active expiry) so that the RDB holds them.
    src.cmd(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    let mut c = src.conn(0);
    pipeline(
        &mut c,
        &[
            b(&["SET", "gone", "x", "PX", "50"]),
            b(&["SET", "stays", "y", "PX", "86400000"]),
            b(&["SET", "forever", "z"]),
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let env = Env::new();
    let id = backed_up(&env, &src);
    let dst = RedisServer::start();
    let r = restore_ok(&env, &id, &dst.url(), &[]);
    // Redis writes keys whose expiry passed into the RDB (loading skips them): so does
    // coffer's restore, and counts them.
    assert_eq!(r["databases"][0]["rdb_keys"], 3);
    assert_eq!(r["keys_expired"], 1);
    assert_eq!(r["keys_restored"], 2);
    assert_eq!(r["databases"][0]["expected"], 2);
    assert_eq!(r["databases"][0]["actual"], 2);
    assert!(!exists(&dst, 0, "gone"));
    assert!(exists(&dst, 0, "stays"));
    assert_eq!(pexpiretime(&dst, 0, "stays"), pexpiretime(&src, 0, "stays"));
    assert_eq!(dst.dbsize(0), 2);
}

#[test]
fn an_rdb_newer_than_the_target_is_refused_before_anything_is_written() {
    // A payload with a version the server does not know is what a newer RDB would carry:
    // the probe refuses it. The restore itself is checked through the library below; here
    // the server's own answer to such a payload.
    let s = RedisServer::start();
    let e = rdb::Entry {
        db: 0,
        key: b"k".to_vec(),
        expire_ms: None,
        type_byte: 0,
        value: vec![1, b'v'],
        module: None,
    };
    let mut conn = s.conn(0);
    let p = e.restore_payload(99);
    match conn
        .command(&[b"RESTORE", b"probe", b"1", &p, b"ABSTTL"])
        .unwrap()
    {
        Reply::Error(msg) => assert!(msg.contains("payload version"), "{msg}"),
        o => panic!("{o:?}"),
    }
    // The same value with the server's version is accepted and, expired, not stored.
    let p = e.restore_payload(10);
    assert!(matches!(
        conn.command(&[b"RESTORE", b"probe", b"1", &p, b"ABSTTL"])
            .unwrap(),
        Reply::Status(_)
    ));
    assert_eq!(s.dbsize(0), 0);
}

#[test]
fn online_flags_need_an_online_restore() {
    let env = Env::new();
    env.init();
    let dir = env.path("out");
    let d = dir.to_str().unwrap();
    for flag in ["--yes", "--dry-run", "--no-safety-backup"] {
        env.cmd()
            .args(["restore", "latest", "--target", d, flag])
            .assert()
            .code(2);
    }
    // (clap waives a `requires` of an argument that conflicts with one given, which once let
    // these through with --target.)
    for flags in [
        &["--replace"][..],
        &["--flush"],
        &["--key", "a*"],
        &["--db", "1"],
        &["--database", "app"],
        &["--table", "orders"],
    ] {
        let mut a = vec!["restore", "latest", "--target", d];
        a.extend_from_slice(flags);
        env.cmd().args(&a).assert().code(2);
    }
    env.cmd()
        .args([
            "restore",
            "latest",
            "--to-redis",
            "redis://127.0.0.1:1",
            "--to-postgres",
        ])
        .assert()
        .code(2);
    // --yes and --dry-run parse with --to-redis (the snapshot is missing: not found, 6).
    env.cmd()
        .args([
            "restore",
            "latest",
            "--to-redis",
            "redis://127.0.0.1:1",
            "--yes",
            "--dry-run",
        ])
        .assert()
        .code(6);
}

/// A `redis` snapshot of `data` (any bytes) made through the library, as `backup --redis`
/// makes them; returns its id.
fn rdb_snapshot(env: &Env, data: Vec<u8>, like: &coffer::sources::redis::RedisInfo) -> String {
    use coffer::repo::features::{self, Features};
    use coffer::repo::snapshot::Kind;
    use coffer::repo::tree::{Node, Tree};
    use coffer::sources::{Metadata, Saved, Session};

    struct Rdb(Vec<u8>, coffer::sources::redis::RedisInfo);
    impl coffer::sources::Source for Rdb {
        fn kind(&self) -> Kind {
            Kind::Redis
        }
        fn save(
            self: Box<Self>,
            session: &mut Session,
            progress: &coffer::progress::Progress,
        ) -> anyhow::Result<Saved> {
            let (content, size) =
                coffer::sources::stream::save_stream(session, &self.0[..], progress)?;
            let sub = session.save_tree(Tree {
                nodes: vec![Node::stream("dump.rdb", size, content, 0)],
            })?;
            Ok(Saved {
                nodes: vec![Node::dir("redis", sub, 0)],
                paths: vec!["/redis/dump.rdb".into()],
                size,
                parent: None,
                excludes: vec![],
                sources: vec![self.1.entry("test", "/redis/dump.rdb")?],
                requires: Features::default().with(features::REDIS_RDB),
            })
        }
    }
    let repo = common::library_access(env.dir.path()).open().unwrap();
    let _lock = coffer::repo::lock::Lock::shared(&repo, "test").unwrap();
    let snap = coffer::sources::run(
        repo.clone(),
        Rdb(data, like.clone()),
        &coffer::sources::CommonOptions::default(),
        &coffer::progress::Progress::hidden(),
    )
    .unwrap();
    snap.id.to_hex()
}

#[test]
fn a_damaged_rdb_is_refused_before_the_target_is_touched() {
    let src = RedisServer::start();
    fill_all_types(&src);
    let env = Env::new();
    let good_id = backed_up(&env, &src);
    // The snapshot's metadata, for the damaged copies.
    let snaps = env.snapshots();
    let meta: coffer::sources::redis::RedisInfo =
        serde_json::from_value(snaps[0]["sources"][0]["metadata"].clone()).unwrap();
    src.cmd(&["SAVE"]);
    let good = std::fs::read(src.dir().join("dump.rdb")).unwrap();
    let n = good.len();
    // A bit flipped inside a big value's bytes: only the checksum can tell.
    let mut flipped = good.clone();
    let noise = good
        .windows(13)
        .position(|w| w == b"str:big-noise")
        .unwrap();
    flipped[noise + 100_000] ^= 0x40;
    let mut no_crc = good.clone();
    // A value type no Redis knows, in a file without a checksum.
    let first_key = good.windows(9).position(|w| w == b"str:small").unwrap();
    no_crc[first_key - 2] = 200;
    no_crc[n - 8..].fill(0);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let cases = [
        ("truncated", good[..n / 2].to_vec(), "ends early"),
        (
            "truncated at the checksum",
            good[..n - 3].to_vec(),
            "ends early",
        ),
        ("a flipped bit", flipped, "checksum does not match"),
        ("an unknown type", no_crc, "type 200"),
        ("bytes after the end", trailing, "after the checksum"),
        ("not an RDB", b"hello, world".to_vec(), "not an RDB"),
    ];

    let dst = RedisServer::start();
    let mut c = dst.conn(0);
    pipeline(
        &mut c,
        &[b(&["SET", "str:small", "theirs"]), b(&["SET", "mine", "1"])],
    );
    let before = dst.digest();
    for (what, data, says) in cases {
        let id = rdb_snapshot(&env, data, &meta);
        let count = env.snapshots().len();
        for args in [
            &[][..],
            &["--flush", "--yes"],
            &["--replace"],
            &["--dry-run"],
        ] {
            let (code, _, stderr) = restore(&env, &id, &dst.url(), args);
            assert_eq!(code, 3, "{what} {args:?}: {stderr}");
            assert!(stderr.contains(says), "{what}: {stderr}");
            assert_eq!(dst.digest(), before, "{what} {args:?}: the target changed");
            assert_eq!(
                env.snapshots().len(),
                count,
                "{what}: a safety backup was taken"
            );
        }
    }
    // The good snapshot still restores.
    restore_ok(&env, &good_id, &dst.url(), &["--flush", "--yes"]);
    assert_eq!(dst.digest(), src.digest());
}

/// A whole RDB of `body` (after the header) with its EOF opcode and checksum.
fn rdb_file(version: &str, body: &[u8]) -> Vec<u8> {
    let mut f = version.as_bytes().to_vec();
    f.extend_from_slice(body);
    f.push(0xff);
    let crc = rdb::crc64(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

#[test]
fn a_newer_rdb_or_a_missing_module_is_refused_before_anything_is_written() {
    let src = RedisServer::start();
    let mut c = src.conn(0);
    pipeline(&mut c, &[b(&["SET", "a", "1"]), b(&["RPUSH", "l", "x"])]);
    let env = Env::new();
    backed_up(&env, &src);
    let snaps = env.snapshots();
    let mut meta: coffer::sources::redis::RedisInfo =
        serde_json::from_value(snaps[0]["sources"][0]["metadata"].clone()).unwrap();
    src.cmd(&["SAVE"]);
    let good = std::fs::read(src.dir().join("dump.rdb")).unwrap();
    assert!(
        good.starts_with(b"REDIS0010"),
        "this test expects Redis 7.0"
    );

    // The same file as a (future) RDB version 13.
    let newer = rdb_file("REDIS0013", &good[9..good.len() - 9]);
    let id = rdb_snapshot(&env, newer, &meta);
    let dst = RedisServer::start();
    let mut c = dst.conn(0);
    pipeline(&mut c, &[b(&["SET", "mine", "1"])]);
    let before = dst.digest();
    for args in [&[][..], &["--flush", "--yes"], &["--dry-run"]] {
        let (code, _, stderr) = restore(&env, &id, &dst.url(), args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("RDB is version 13"), "{stderr}");
        assert_eq!(dst.digest(), before);
    }

    // A module value (type 7) of a module the server has not loaded.
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut mid = 0u64;
    for ch in b"ReJSON-RL" {
        mid = (mid << 6) | CHARSET.iter().position(|x| x == ch).unwrap() as u64;
    }
    mid = (mid << 10) | 3;
    let mut body = vec![0xfe, 0, 7, 3, b'd', b'o', b'c', 0x81];
    body.extend_from_slice(&mid.to_be_bytes());
    body.extend_from_slice(&[5, 2, b'{', b'}', 0]); // one string, then the module EOF
    body.extend_from_slice(&[0, 1, b'k', 1, b'v']);
    meta.databases = vec![coffer::sources::redis::DbCount {
        db: 0,
        keys: 2,
        expires: 0,
    }];
    let id = rdb_snapshot(&env, rdb_file("REDIS0010", &body), &meta);
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &["--flush", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("ReJSON-RL"), "{stderr}");
    assert_eq!(dst.digest(), before);
    assert_eq!(env.snapshots().len(), 3, "a safety backup was taken");
}

#[test]
fn a_target_with_a_password() {
    let src = RedisServer::start();
    let mut c = src.conn(0);
    pipeline(&mut c, &[b(&["SET", "a", "1"])]);
    let env = Env::new();
    let id = backed_up(&env, &src);
    let dst = RedisServer::start_with(&[("requirepass", "s3cret pw")]);
    let out = env
        .cmd()
        .env("REDISCLI_AUTH", "wrong")
        .args(["restore", &id, "--to-redis", &dst.url()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dst.dbsize(0), 0);
    let out = env
        .cmd()
        .env("REDISCLI_AUTH", "s3cret pw")
        .args(["restore", &id, "--to-redis", &dst.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dst.cmd(&["GET", "a"]).text().as_deref(), Some("1"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
}

#[test]
fn over_tls_with_client_certificates() {
    let src = RedisServer::start();
    let mut c = src.conn(0);
    pipeline(
        &mut c,
        &[b(&["SET", "a", "1"]), b(&["HSET", "h", "f", "v"])],
    );
    let env = Env::new();
    let id = backed_up(&env, &src);
    let pki = common::tls::Pki::new(&["127.0.0.1"]);
    let dst = RedisServer::start_tls(&pki, true, &[]);
    assert!(dst.url().starts_with("rediss://"));
    let (cert, key) = pki.client_cert("restore");
    let ca = pki.ca();
    let tls = [
        "--redis-tls-ca",
        ca.to_str().unwrap(),
        "--redis-tls-cert",
        cert.to_str().unwrap(),
        "--redis-tls-key",
        key.to_str().unwrap(),
    ];
    // Without the client certificate the server refuses: exit 8, nothing written.
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &tls[..2]);
    assert_eq!(code, 8, "{stderr}");
    assert_eq!(dst.dbsize(0), 0);
    let r = restore_ok(&env, &id, &dst.url(), &tls);
    assert_eq!(r["keys_restored"], 2);
    assert_eq!(dst.digest(), src.digest());
}

#[test]
fn a_damaged_repository_is_refused_before_the_target_is_touched() {
    let src = RedisServer::start();
    fill_all_types(&src);
    let env = Env::new();
    let id = backed_up(&env, &src);
    // Flip a byte in the middle of the biggest pack (the RDB's data).
    let pack = env
        .packs()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    let dst = RedisServer::start();
    let mut c = dst.conn(0);
    pipeline(&mut c, &[b(&["SET", "mine", "1"])]);
    let before = dst.digest();
    for args in [&[][..], &["--flush", "--yes"]] {
        let (code, _, stderr) = restore(&env, &id, &dst.url(), args);
        assert_eq!(code, 3, "{args:?}: {stderr}");
        assert_eq!(dst.digest(), before, "{args:?}: the target changed");
    }
    assert_eq!(env.snapshots().len(), 1, "a safety backup was taken");
}

/// Counts from `INFO keyspace` are taken just before the server forks: on a busy server
/// they may differ from the file, and that is a warning, not damage. Exact counts (from the
/// file) that differ are damage.
#[test]
fn approximate_counts_in_the_metadata_warn_exact_ones_must_match() {
    let src = RedisServer::start();
    fill_all_types(&src);
    let env = Env::new();
    backed_up(&env, &src);
    let snaps = env.snapshots();
    let mut meta: coffer::sources::redis::RedisInfo =
        serde_json::from_value(snaps[0]["sources"][0]["metadata"].clone()).unwrap();
    let rdb = {
        let out = env.cmd().args(["dump", "latest"]).output().unwrap();
        assert!(out.status.success());
        out.stdout
    };
    // As if 5 keys had been written between INFO and the fork.
    meta.databases[0].keys += 5;
    assert_eq!(meta.counts_from, "info");
    let id = rdb_snapshot(&env, rdb.clone(), &meta);
    let dst = RedisServer::start();
    let (code, json, stderr) = restore(&env, &id, &dst.url(), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        json["warnings"].to_string().contains("INFO keyspace"),
        "{json}"
    );
    assert_eq!(dst.digest(), src.digest());
    meta.counts_from = "rdb".into();
    let id = rdb_snapshot(&env, rdb, &meta);
    let dst = RedisServer::start();
    let (code, _, stderr) = restore(&env, &id, &dst.url(), &[]);
    assert_eq!(code, 3, "{stderr}");
}
