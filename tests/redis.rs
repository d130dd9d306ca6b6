//! Redis backups (`backup --redis`) against real, throwaway `redis-server`s: both SYNC
//! transfers, TLS, ACL users and passwords, the BGSAVE fallback, failures that must leave
//! no snapshot, and the RDB restored as a file that a server loads.

mod common;

use common::redis::{fill_all_types, RedisServer};
use common::{ok, refused_without_snapshot, stderr, Env};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

fn run(env: &Env, args: &[&str]) -> Output {
    env.cmd().args(args).output().unwrap()
}

fn backup(env: &Env, url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["backup", "--json", "--redis", url];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&run(env, &args))).unwrap()
}

/// The metadata of the snapshot's Redis source.
fn redis_info(env: &Env, id: &str) -> Value {
    let snaps = env.snapshots();
    let snap = snaps
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no snapshot {id}"));
    assert_eq!(snap["kind"], "redis", "{snap}");
    assert_eq!(snap["paths"][0], "/redis/dump.rdb");
    let src = &snap["sources"][0];
    assert_eq!(src["kind"], "redis");
    src["metadata"].clone()
}

fn ok_bytes(out: &Output) -> Vec<u8> {
    assert!(out.status.success(), "{}", stderr(out));
    out.stdout.clone()
}

fn dump_rdb(env: &Env, spec: &str) -> Vec<u8> {
    ok_bytes(&run(env, &["dump", spec, "/redis/dump.rdb"]))
}

/// A backed-up RDB put where a stopped server looks for it (`dir/dump.rdb`) loads into
/// the same dataset: every key, value and expiry (`DEBUG DIGEST`).
fn assert_loads_as(rdb: &[u8], digest: &str, counts: &[(u32, i64)]) {
    let dir = tempfile::Builder::new()
        .prefix("coffer-redis-load-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("dump.rdb"), rdb).unwrap();
    let loaded = RedisServer::start_in(dir, &[]);
    assert_eq!(loaded.digest(), digest, "the loaded dataset differs");
    for &(db, n) in counts {
        assert_eq!(loaded.dbsize(db), n, "keys in db {db}");
    }
}

#[test]
fn sync_backups_hold_the_whole_dataset_disk_based_and_diskless() {
    for diskless in ["yes", "no"] {
        let env = Env::new();
        env.init();
        let server = RedisServer::start_with(&[("repl-diskless-sync", diskless)]);
        let counts = fill_all_types(&server);
        let digest = server.digest();
        let report = backup(&env, &server.url(), &["--tag", "nightly"]);
        let id = report["id"].as_str().unwrap();
        let info = redis_info(&env, id);
        assert_eq!(info["server"], "redis");
        assert_eq!(
            info["transfer"],
            if diskless == "yes" {
                "diskless"
            } else {
                "disk"
            }
        );
        assert!(info["rdb_version"].as_u64().unwrap() >= 9, "{info}");
        assert_eq!(info["checksum"], true);
        assert_eq!(info["role"], "master");
        assert_eq!(info["appendonly"], false);
        assert_eq!(info["counts_from"], "info");
        assert!(info["used_memory"].as_u64().unwrap() > 1 << 20);
        assert!(!info["address"].as_str().unwrap().contains('@'), "{info}");
        for &(db, n) in &counts {
            let d = info["databases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["db"] == db)
                .unwrap_or_else(|| panic!("db {db} missing: {info}"));
            assert_eq!(d["keys"], n, "{info}");
        }
        assert_eq!(
            info["databases"].as_array().unwrap()[1]["expires"],
            100,
            "db1 has 100 keys with an expiry: {info}"
        );
        // The stored RDB is exactly what the server sent: `dump` and `restore --target`
        // give the same bytes, and a server started on them holds the same dataset.
        let rdb = dump_rdb(&env, id);
        assert_eq!(rdb.len() as u64, info["rdb_size"].as_u64().unwrap());
        assert!(rdb.starts_with(b"REDIS0"));
        // `coffer dump SNAPSHOT > dump.rdb`: the one stream of the snapshot.
        assert_eq!(ok_bytes(&run(&env, &["dump", id])), rdb);
        let target = env.path("restored");
        ok(&run(
            &env,
            &["restore", id, "--target", target.to_str().unwrap()],
        ));
        assert_eq!(std::fs::read(target.join("redis/dump.rdb")).unwrap(), rdb);
        assert_loads_as(&rdb, &digest, &counts);
        let snaps = env.snapshots();
        assert_eq!(snaps[0]["tags"][0], "nightly");
    }
}

#[test]
fn an_unchanged_dataset_adds_little_the_second_time() {
    let env = Env::new();
    env.init();
    let server = RedisServer::start();
    fill_all_types(&server);
    let mut conn = server.conn(0);
    for i in 0..8u64 {
        let key = format!("noise-{i}");
        conn.command(&[b"SET", key.as_bytes(), &common::noise(i, 2 << 20)])
            .unwrap();
    }
    let first = backup(&env, &server.url(), &[]);
    let second = backup(&env, &server.url(), &[]);
    let size = first["size"].as_u64().unwrap();
    assert!(size > 18 << 20, "{first}");
    // Two dumps of the same data differ in the header's aux fields (ctime, used-mem) and
    // the checksum at the end: the chunks holding those, and the two trees, are all that
    // is new.
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    let blobs = second["summary"]["blobs_added"].as_u64().unwrap();
    assert!(
        blobs <= 4 && added * 4 < size,
        "the second backup of the same data added {blobs} blobs, {added} of {size} bytes"
    );
}

#[test]
fn unix_sockets_redis_url_and_the_default_server() {
    let env = Env::new();
    env.init();
    let server = RedisServer::start();
    server.cmd(&["SET", "k", "v"]);
    // A socket path, and REDIS_URL when --redis has no URL.
    backup(&env, server.socket().to_str().unwrap(), &[]);
    let out = env
        .cmd()
        .env("REDIS_URL", server.url())
        .args(["backup", "--json", "--redis"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    let info = redis_info(&env, report["id"].as_str().unwrap());
    assert_eq!(info["databases"][0]["keys"], 1);
    assert_eq!(
        info["address"],
        format!("redis://127.0.0.1:{}", server.port())
    );
    // A URL that names no server that answers: a source error, no snapshot.
    let out = run(&env, &["backup", "--redis", "redis://127.0.0.1:1"]);
    refused_without_snapshot(&env, &out, Some(8), &["cannot connect"], 2);
    let out = run(&env, &["backup", "--redis", "http://127.0.0.1:1"]);
    refused_without_snapshot(&env, &out, Some(2), &["not a Redis URL"], 2);
}

#[test]
fn passwords_acl_users_and_wrong_passwords() {
    let env = Env::new();
    env.init();
    let server = RedisServer::start_with(&[("requirepass", "root-secret")]);
    server.cmd(&["SET", "k", "v"]);
    // An ACL user that may do only what a backup needs.
    server.cmd(&[
        "ACL",
        "SETUSER",
        "backup",
        "on",
        ">backup-pw",
        "-@all",
        "+sync",
        "+psync",
        "+replconf",
        "+info",
        "+ping",
        "+config|get",
    ]);
    let port = server.port();
    backup(
        &env,
        &format!("redis://backup:backup-pw@127.0.0.1:{port}"),
        &[],
    );
    // REDISCLI_AUTH, as redis-cli reads it, and the config file's password_file.
    let url = server.url();
    let out = env
        .cmd()
        .env("REDISCLI_AUTH", "root-secret")
        .args(["backup", "--redis", &url])
        .output()
        .unwrap();
    ok(&out);
    let pw = env.path("redis-pw");
    std::fs::write(&pw, "root-secret\n").unwrap();
    let config = env.path("coffer.toml");
    std::fs::write(&config, "[redis]\npassword_file = \"redis-pw\"\n").unwrap();
    let out = run(
        &env,
        &[
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--redis",
            &url,
        ],
    );
    ok(&out);
    // A misspelt key in [redis] is refused.
    std::fs::write(&config, "[redis]\npasword_file = \"redis-pw\"\n").unwrap();
    let out = run(
        &env,
        &[
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--redis",
            &url,
        ],
    );
    refused_without_snapshot(&env, &out, Some(2), &["unknown field"], 3);

    // Wrong password, wrong user, no password: exit 8, no snapshot, no secret shown.
    for (url, needle) in [
        (
            format!("redis://backup:wrong-pw@127.0.0.1:{port}"),
            "refused the password",
        ),
        (
            format!("redis://nobody:backup-pw@127.0.0.1:{port}"),
            "refused the password",
        ),
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
    ] {
        let out = run(&env, &["backup", "--redis", &url]);
        refused_without_snapshot(&env, &out, Some(8), &[needle, "Redis at"], 3);
        let said = stderr(&out);
        assert!(
            !said.contains("wrong-pw") && !said.contains("backup-pw"),
            "{said}"
        );
    }
    // A user without SYNC is told about the fallback.
    server.cmd(&[
        "ACL", "SETUSER", "nosync", "on", ">pw2", "+@all", "-sync", "-psync",
    ]);
    let out = run(
        &env,
        &[
            "backup",
            "--redis",
            &format!("redis://nosync:pw2@127.0.0.1:{port}"),
        ],
    );
    refused_without_snapshot(&env, &out, Some(8), &["--redis-method bgsave"], 3);
}

#[test]
fn tls_with_a_private_ca_and_client_certificates() {
    let pki = common::tls::Pki::new(&["127.0.0.1"]);
    let env = Env::new();
    env.init();
    let server = RedisServer::start_tls(&pki, true, &[]);
    server.cmd(&["SET", "over", "tls"]);
    let url = server.url();
    assert!(url.starts_with("rediss://"));
    let ca = pki.ca();
    let (cert, key) = pki.client_cert("backup");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["backup", "--json", "--redis", &url, "--redis-tls-ca"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(ca.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let out = env
        .cmd()
        .args(args(&[
            "--redis-tls-cert",
            cert.to_str().unwrap(),
            "--redis-tls-key",
            key.to_str().unwrap(),
        ]))
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    let info = redis_info(&env, report["id"].as_str().unwrap());
    assert!(info["address"].as_str().unwrap().starts_with("rediss://"));
    // The same from the config file's [redis] table.
    let config = env.path("coffer.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    ok(&run(
        &env,
        &[
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--redis",
            &url,
        ],
    ));
    // Without the client certificate the server refuses; without our CA the server's
    // certificate is not trusted (verified by default).
    let out = env.cmd().args(args(&[])).output().unwrap();
    refused_without_snapshot(&env, &out, Some(8), &["Redis at"], 2);
    let out = run(&env, &["backup", "--redis", &url]);
    refused_without_snapshot(&env, &out, Some(8), &["certificate"], 2);
}

/// A TCP proxy to the server on `port` that passes `limit` bytes from the server, then
/// cuts the connection both ways: a link that fails in the middle of a transfer.
fn cutting_proxy(port: u16, limit: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let mut client = client.unwrap();
            let mut server = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut from_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
            let mut passed = 0;
            let mut buf = vec![0u8; 1 << 16];
            while passed < limit {
                let n = match server.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n.min(limit - passed),
                };
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
                passed += n;
            }
            client.shutdown(Shutdown::Both).ok();
            server.shutdown(Shutdown::Both).ok();
        }
    });
    proxy
}

#[test]
fn a_transfer_cut_or_a_server_killed_mid_transfer_leaves_no_snapshot() {
    // Disk-based: the link is cut after 200 kB of a 3 MB transfer.
    let env = Env::new();
    env.init();
    let server = RedisServer::start_with(&[("repl-diskless-sync", "no")]);
    fill_all_types(&server);
    let proxy = cutting_proxy(server.port(), 200_000);
    let out = run(
        &env,
        &["backup", "--redis", &format!("redis://127.0.0.1:{proxy}")],
    );
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &["no snapshot", "cut after", " of "],
        0,
    );

    // Diskless: the server is killed while it streams the RDB.
    let mut server = RedisServer::start_with(&[("repl-diskless-sync", "yes")]);
    server.cmd(&["DEBUG", "POPULATE", "20000", "slow", "100"]);
    // Each key takes 1 ms to save: the transfer lasts about 20 s.
    server.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "1000"]);
    let child = env
        .std_cmd(assert_cmd::cargo::cargo_bin("coffer"))
        .args(["backup", "--redis", &server.url()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the server has sent a good part of the RDB (its replication output).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = server.cmd(&["INFO", "stats"]).text().unwrap();
        let sent: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix("total_net_repl_output_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if sent > 200_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the transfer never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let out = child.wait_with_output().unwrap();
    refused_without_snapshot(&env, &out, Some(8), &["no snapshot", "cut after"], 0);
    // Nothing half-written stands in the way of the next backup.
    let server = RedisServer::start();
    server.cmd(&["SET", "k", "v"]);
    backup(&env, &server.url(), &[]);
    ok(&run(&env, &["check", "--read-data"]));
}

#[test]
fn the_bgsave_fallback_when_sync_is_renamed_away() {
    let env = Env::new();
    env.init();
    // rename-command is a config-file directive only.
    let dir = tempfile::Builder::new()
        .prefix("coffer-redis-renamed-")
        .tempdir()
        .unwrap();
    let conf = dir.path().join("redis.conf");
    std::fs::write(
        &conf,
        "rename-command SYNC \"\"\nrename-command PSYNC \"\"\n",
    )
    .unwrap();
    let server = RedisServer::start_in(dir, &[("include", conf.to_str().unwrap())]);
    let counts = fill_all_types(&server);
    let digest = server.digest();
    let out = run(&env, &["backup", "--redis", &server.url()]);
    refused_without_snapshot(&env, &out, Some(8), &["--redis-method bgsave"], 0);
    let report = backup(&env, &server.url(), &["--redis-method", "bgsave"]);
    let id = report["id"].as_str().unwrap();
    let info = redis_info(&env, id);
    assert_eq!(info["transfer"], "bgsave");
    assert_loads_as(&dump_rdb(&env, id), &digest, &counts);
    // An unknown method is a usage error.
    let out = run(
        &env,
        &["backup", "--redis", &server.url(), "--redis-method", "nope"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
