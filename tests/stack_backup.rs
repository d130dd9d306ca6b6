//! `coffer backup` of the declared stack (`[sources.NAME]` in the config file) against real
//! servers: every source in order into its own snapshot with a shared run id, hooks with
//! their variables, keep rules per source, failing sources that leave no snapshot while the
//! others land, `status` with RPOs and the last failure, `--all` from the environment, and
//! clear errors for an unknown key or an unset `${VAR}`.

mod common;

use common::pg::PgCluster;
use common::redis::RedisServer;
use common::{ok, stderr, Env};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Output;

fn run(env: &Env, config: &Path, args: &[&str]) -> Output {
    env.cmd()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

fn by_source<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {report}"))
}

fn snapshots_of(env: &Env, config: &Path, source: &str) -> Vec<Value> {
    let out = run(env, config, &["snapshots", "--json", "--source", source]);
    json(&out).as_array().unwrap().clone()
}

#[test]
fn the_stack_backs_up_in_order_with_hooks_keep_rules_failures_and_status() {
    let env = Env::new();
    env.init();
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.create_db("other");
    pg.psql(
        "app",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 500);",
    );
    pg.psql(
        "other",
        "CREATE TABLE u (id int); INSERT INTO u VALUES (1), (2);",
    );
    let redis = RedisServer::start();
    redis.cmd(&["SET", "session:1", "alice"]);
    let uploads = env.path("uploads");
    fs::create_dir_all(uploads.join("2024")).unwrap();
    fs::write(uploads.join("2024/a.jpg"), b"jpeg bytes").unwrap();
    fs::write(uploads.join("skip.tmp"), b"temporary").unwrap();
    fs::write(env.path("app.env"), "SECRET_KEY=abc\n").unwrap();
    let log = env.path("hooks.log");
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[sources.db]
type = "postgres"
url = "${{STACK_TEST_DB}}"
databases = ["app", "other"]
keep = {{ last = 1 }}
rpo = "1h"
before = ["echo before db >> {log}"]
after = ["echo after $COFFER_SOURCE $COFFER_STATUS $COFFER_SNAPSHOT pw=${{COFFER_PASSWORD:-none}} >> {log}"]

[sources.cache]
type = "redis"
url = "{redis}"
tags = ["cache"]

[sources.uploads]
type = "files"
paths = ["uploads"]
exclude = ["*.tmp"]

[sources.secrets]
type = "files"
paths = ["app.env"]

[sources.broken]
type = "files"
paths = ["does-not-exist"]
rpo = "1d"
after = ["echo after $COFFER_SOURCE $COFFER_STATUS error=$COFFER_ERROR >> {log}"]

[sources.blocked]
type = "files"
paths = ["uploads"]
before = ["echo before blocked >> {log}; exit 4"]
"#,
            log = log.display(),
            redis = redis.url(),
        ),
    )
    .unwrap();
    let mut backup = env.cmd();
    backup
        .env("STACK_TEST_DB", pg.url("postgres"))
        .arg("--config")
        .arg(&config)
        .args(["backup", "--json"]);
    let out = backup.output().unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("2 of 6 sources failed (broken, blocked)"),
        "{said}"
    );
    let r1 = json(&out);
    let names: Vec<&str> = r1["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["db", "cache", "uploads", "secrets", "broken", "blocked"]
    );
    for n in ["db", "cache", "uploads", "secrets"] {
        let s = by_source(&r1, n);
        assert_eq!(s["status"], "ok", "{s}");
        assert!(
            s["snapshot"].is_string() && s["bytes_read"].as_u64().unwrap() > 0,
            "{s}"
        );
    }
    for (n, why) in [("broken", "does-not-exist"), ("blocked", "exit status 4")] {
        let s = by_source(&r1, n);
        assert_eq!(s["status"], "failed", "{s}");
        assert!(s["snapshot"].is_null(), "{s}");
        assert!(s["error"].as_str().unwrap().contains(why), "{s}");
    }
    // One snapshot per successful source, each naming its source and the run.
    let all = env.snapshots();
    assert_eq!(all.len(), 4, "{all:?}");
    for s in &all {
        assert_eq!(s["run"], r1["run"], "{s}");
    }
    let db = &snapshots_of(&env, &config, "db")[0];
    assert_eq!(db["kind"], "postgres");
    let dbs: Vec<&str> = db["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "postgres")
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["app", "other"], "databases = [...] dumps those");
    assert_eq!(snapshots_of(&env, &config, "cache")[0]["tags"][0], "cache");
    let up = &snapshots_of(&env, &config, "uploads")[0];
    assert_eq!(up["summary"]["files_new"], 1, "the exclude applies: {up}");
    assert!(snapshots_of(&env, &config, "broken").is_empty());
    // Hooks in order, with their variables, and never the passphrase.
    let hooks = fs::read_to_string(&log).unwrap();
    let db_snap = by_source(&r1, "db")["snapshot"].as_str().unwrap();
    assert_eq!(
        hooks,
        format!(
            "before db\nafter db ok {db_snap} pw=none\nafter broken failed error=cannot read {}: \
             No such file or directory (os error 2); no snapshot was written\nbefore blocked\n",
            env.path("does-not-exist").display()
        )
    );

    // status: the failures are shown, the never-backed-up sources breach; exit 1.
    let out = env
        .cmd()
        .env("STACK_TEST_DB", pg.url("postgres"))
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let st = json(&out);
    assert_eq!(st["breached"], 2, "{st}");
    assert_eq!(by_source(&st, "db")["state"], "ok");
    assert_eq!(by_source(&st, "db")["last_success"]["snapshot"], db_snap);
    let broken = by_source(&st, "broken");
    assert_eq!(broken["state"], "breached");
    assert!(broken["last_failure"]["error"]
        .as_str()
        .unwrap()
        .contains("does-not-exist"));
    assert!(by_source(&st, "db")["last_failure"].is_null());

    // A second run of two sources: the db's keep rule (last = 1) leaves one snapshot of
    // it; the uploads (no keep) keep both. The failure of `broken` is now older than its
    // fix: status no longer shows it, and everything is within its RPO once it runs.
    fs::create_dir_all(env.path("does-not-exist")).unwrap();
    fs::write(env.path("does-not-exist/x"), b"x").unwrap();
    let out = env
        .cmd()
        .env("STACK_TEST_DB", pg.url("postgres"))
        .arg("--config")
        .arg(&config)
        .args([
            "backup", "--json", "--source", "db", "--source", "uploads", "--source", "broken",
        ])
        .output()
        .unwrap();
    let r2 = json(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(r2["run"], r1["run"]);
    assert_eq!(by_source(&r2, "db")["forgotten"][0], db_snap);
    assert_eq!(snapshots_of(&env, &config, "db").len(), 1);
    assert_eq!(snapshots_of(&env, &config, "uploads").len(), 2);
    let up2 = by_source(&r2, "uploads");
    assert!(
        up2["bytes_added"].as_u64().unwrap() < 4096,
        "an unchanged tree adds almost nothing: {up2}"
    );
    // blocked still never succeeded.
    let out = run(&env, &config, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        table.contains("blocked") && table.contains("BREACHED"),
        "{table}"
    );
    assert!(
        !table.contains("does-not-exist"),
        "a failure older than the last success is not shown:\n{table}"
    );
    // forget --source applies only to that source's snapshots.
    ok(&run(
        &env,
        &config,
        &["forget", "--source", "uploads", "--keep-last", "1"],
    ));
    assert_eq!(snapshots_of(&env, &config, "uploads").len(), 1);
    assert_eq!(snapshots_of(&env, &config, "secrets").len(), 1);
    // An unknown source name is a usage error that lists the declared ones.
    let out = run(&env, &config, &["backup", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no source \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_database_that_is_not_there_fails_the_source() {
    let env = Env::new();
    env.init();
    let pg = PgCluster::start();
    pg.create_db("app");
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            "[sources.db]\ntype = \"postgres\"\nurl = \"{}\"\ndatabases = [\"app\", \"gone\"]\n",
            pg.url("postgres")
        ),
    )
    .unwrap();
    let out = run(&env, &config, &["backup"]);
    assert_eq!(out.status.code(), Some(8));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("database \"gone\" is not on the server"),
        "{said}"
    );
    assert!(env.snapshots().is_empty());
}

#[test]
fn all_takes_the_stack_from_the_environment() {
    let env = Env::new();
    env.init();
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t AS SELECT 1 AS x;");
    let redis = RedisServer::start();
    redis.cmd(&["SET", "k", "v"]);
    let uploads = env.path("uploads");
    fs::create_dir_all(&uploads).unwrap();
    fs::write(uploads.join("f"), b"file").unwrap();
    let out = env
        .cmd()
        .env("DATABASE_URL", pg.url("app"))
        .env("REDIS_URL", redis.url())
        .env("UPLOADS_DIR", &uploads)
        .args(["backup", "--all"])
        .output()
        .unwrap();
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("from the environment: db (postgres, from DATABASE_URL), redis (redis, from REDIS_URL), uploads (files,"),
        "{said}"
    );
    let mut sources: Vec<String> = env
        .snapshots()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["source"].as_str().unwrap(),
                s["kind"].as_str().unwrap()
            )
        })
        .collect();
    sources.sort();
    assert_eq!(sources, ["db postgres", "redis redis", "uploads files"]);
    // Nothing set: a clear error.
    let out = env.cmd().args(["backup", "--all"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("none of DATABASE_URL"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_configs_are_clear_errors_that_change_nothing() {
    let env = Env::new();
    env.init();
    let config = env.path("coffer.toml");
    for (text, needles) in [
        (
            "[sources.db]\ntype = \"postgres\"\nurll = \"x\"\n",
            &["[sources.db]", "unknown field `urll`"][..],
        ),
        (
            "[sources.db]\ntype = \"redis\"\nurl = \"${COFFER_TEST_UNSET_VAR}\"\n",
            &["sources.db.url", "COFFER_TEST_UNSET_VAR is not set"][..],
        ),
        ("[stak]\n", &["unknown field `stak`"][..]),
        (
            "[sources.x]\ntype = \"files\"\npaths = [\"/x\"]\nkeep = { dayly = 7 }\n",
            &["[sources.x]", "dayly"][..],
        ),
    ] {
        fs::write(&config, text).unwrap();
        let out = run(&env, &config, &["backup"]);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        for n in needles {
            assert!(
                stderr(&out).contains(n),
                "{text}: expected {n:?} in {}",
                stderr(&out)
            );
        }
        assert!(!stderr(&out).contains("panicked"));
    }
    assert!(env.snapshots().is_empty());
}

#[test]
fn one_file_system_stores_a_mount_point_empty() {
    if !common::as_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let env = Env::new();
    env.init();
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("mnt")).unwrap();
    fs::write(tree.join("top"), b"top").unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "none"])
        .arg(tree.join("mnt"))
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    fs::write(tree.join("mnt/inner"), b"inner").unwrap();
    let result = std::panic::catch_unwind(|| {
        let config = env.path("coffer.toml");
        fs::write(
            &config,
            format!(
                "[sources.t]\ntype = \"files\"\npaths = [\"{}\"]\none_file_system = true\n",
                tree.display()
            ),
        )
        .unwrap();
        ok(&run(&env, &config, &["backup"]));
        let id = env.snapshots()[0]["id"].as_str().unwrap().to_string();
        let target = env.path("restored");
        ok(&env
            .cmd()
            .args(["restore", &id, "--target"])
            .arg(&target)
            .output()
            .unwrap());
        let r = common::restored(&target, &tree);
        assert!(r.join("top").exists());
        assert!(r.join("mnt").is_dir(), "the mount point is kept");
        assert!(!r.join("mnt/inner").exists(), "its contents are not");
    });
    let _ = std::process::Command::new("umount")
        .arg(tree.join("mnt"))
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
