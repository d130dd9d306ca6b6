//! `coffer drill` and `coffer drills` against real components: a logical PostgreSQL drill in a
//! scratch cluster that coffer starts and removes (row counts, min_tables, SQL checks,
//! amcheck), the same in scratch databases on a `drill_url` server, failing checks (exit 3,
//! recorded), a files drill, a damaged pack, and drills stopped by SIGTERM or killed with
//! SIGKILL whose scratch cluster or database the next drill removes. The live database is
//! checked unchanged.

mod common;

use common::pg::PgCluster;
use common::{stderr, Env};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A temp dir for the drills' scratch resources, that the server's OS user can reach.
fn scratch_tmp(env: &Env) -> PathBuf {
    let t = env.path("tmp");
    fs::create_dir_all(&t).unwrap();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&t, fs::Permissions::from_mode(0o1777)).unwrap();
    t
}

fn leftovers(tmp: &Path) -> Vec<PathBuf> {
    fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("coffer-drill-")
        })
        .collect()
}

fn shop(pg: &PgCluster) {
    pg.create_db("shop");
    pg.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
         CREATE INDEX items_name ON items (name);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
         CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items (id), qty int);
         INSERT INTO orders (item, qty) SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;",
    );
}

fn config(env: &Env, pg: &PgCluster, drill: &str) -> PathBuf {
    let c = env.path("coffer.toml");
    fs::write(
        &c,
        format!(
            "[sources.db]\ntype = \"postgres\"\nurl = {}\ndrill = {drill}\n",
            toml::Value::String(pg.url("shop"))
        ),
    )
    .unwrap();
    c
}

fn coffer(env: &Env, config: &Path, tmp: &Path, args: &[&str]) -> std::process::Output {
    env.cmd()
        .env("TMPDIR", tmp)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// The JSON of a command that must have succeeded.
fn passed(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    json(out)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// A repository, a scratch temp dir, a cluster with the `shop` database, and the config of
/// source `db` with `drill`, backed up once.
fn shop_backed_up(drill: &str) -> (Env, PathBuf, PgCluster, PathBuf) {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let pg = PgCluster::start();
    shop(&pg);
    let c = config(&env, &pg, drill);
    let out = coffer(&env, &c, &tmp, &["backup", "--source", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    (env, tmp, pg, c)
}

#[test]
fn a_logical_drill_passes_its_checks_and_leaves_the_live_database_alone() {
    let (env, tmp, pg, c) = shop_backed_up(
        "{ checks = [\"select count(*) = 500 from items\", \"select sum(qty) > 0 from orders\"], min_tables = 2, amcheck = true }",
    );
    let live = pg.data_checksums("shop");
    let connections = || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop'",
        )
    };

    let out = coffer(&env, &c, &tmp, &["drill", "--json"]);
    let r = passed(&out);
    assert_eq!(r["passed"], 1, "{r:#}");
    let s = &r["sources"][0];
    assert_eq!(s["status"], "passed", "{s:#}");
    assert!(s["rto_secs"].as_f64().unwrap() > 0.0);
    let checks: Vec<(&str, bool, &str)> = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap(),
                c["ok"].as_bool().unwrap(),
                c["detail"].as_str().unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = checks.iter().map(|c| c.0).collect();
    assert_eq!(
        names,
        [
            "row counts of database shop",
            "select count(*) = 500 from items",
            "select sum(qty) > 0 from orders",
            "amcheck of the B-tree indexes of database shop",
            "at least 2 tables",
        ],
        "{checks:?}"
    );
    assert!(checks.iter().all(|c| c.1), "{checks:?}");
    assert!(checks[0].2.starts_with("2 tables"), "{checks:?}");
    assert!(checks[3].2.starts_with("3 indexes"), "{checks:?}");
    let steps: Vec<&str> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps[0], "start a scratch PostgreSQL 15", "{steps:?}");
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    assert_eq!(
        pg.data_checksums("shop"),
        live,
        "the live database is untouched"
    );
    assert_eq!(connections(), "0");

    // The history.
    let out = coffer(&env, &c, &tmp, &["drills", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let h = json(&out);
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["job"], "drill");
    assert_eq!(h[0]["status"], "ok");
    assert_eq!(h[0]["snapshot"], s["snapshot"]);
    assert_eq!(h[0]["drill"]["checks"].as_array().unwrap().len(), 5);
}

#[test]
fn failing_checks_exit_3_and_are_recorded() {
    // The cluster lives as long as `_pg`.
    let (env, tmp, _pg, c) = shop_backed_up(
        "{ checks = [\"select count(*) > 1000 from items\", \"select nope from items\"], min_tables = 50 }",
    );
    let out = coffer(&env, &c, &tmp, &["drill"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // The report goes where the other reports go (standard error for the text form).
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        text.contains("[FAIL] at least 50 tables: 2 tables restored"),
        "{text}"
    );
    assert!(
        text.contains("[FAIL] select count(*) > 1000 from items: false"),
        "{text}"
    );
    assert!(
        text.contains("[FAIL] select nope from items: column \"nope\" does not exist"),
        "{text}"
    );
    assert!(text.contains("[ok] row counts of database shop"), "{text}");
    let h = json(&coffer(
        &env,
        &c,
        &tmp,
        &["drills", "--json", "--source", "db"],
    ));
    assert_eq!(h[0]["status"], "failed");
    assert!(
        h[0]["error"]
            .as_str()
            .unwrap()
            .contains("at least 50 tables"),
        "{h:#}"
    );
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    let table = coffer(&env, &c, &tmp, &["drills"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("FAILED"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
}

#[test]
fn a_files_drill_verifies_counts_and_paths_and_names_a_damaged_pack() {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let data = env.path("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("index.html"), b"<h1>hi</h1>").unwrap();
    fs::write(data.join("sub/blob"), common::noise(7, 300_000)).unwrap();
    let c = env.path("coffer.toml");
    let index = data.join("index.html");
    fs::write(
        &c,
        format!(
            "[sources.up]\ntype = \"files\"\npaths = [{d}]\ndrill = {{ checks = [{i}] }}\ndrill_max_age = \"8d\"\n",
            d = toml::Value::String(data.display().to_string()),
            i = toml::Value::String(index.display().to_string()),
        ),
    )
    .unwrap();
    let out = coffer(&env, &c, &tmp, &["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Never drilled, with a drill_max_age: status flags it (exit 1).
    let out = coffer(&env, &c, &tmp, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("never drilled — DRILL OVERDUE"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = coffer(&env, &c, &tmp, &["drill", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = json(&out);
    let s = &r["sources"][0];
    assert_eq!(s["status"], "passed", "{s:#}");
    let st = json(&coffer(&env, &c, &tmp, &["status", "--json"]));
    assert_eq!(st["drills_overdue"], 0, "{st:#}");
    assert_eq!(st["sources"][0]["last_drill"]["passed"], true, "{st:#}");
    assert_eq!(st["sources"][0]["last_drill"]["snapshot"], s["snapshot"]);
    assert_eq!(
        s["checks"][0]["detail"],
        "2 files of 300011 bytes restored; the snapshot holds 2 files of 300011 bytes"
    );
    assert_eq!(s["checks"][1]["ok"], true);
    assert_eq!(s["bytes"], 300011);

    // Damage every pack: the drill fails as an integrity failure, and says where.
    for p in env.packs() {
        let mut b = fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x55;
        fs::write(&p, b).unwrap();
    }
    let out = coffer(&env, &c, &tmp, &["drill", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let r = json(&out);
    let s = &r["sources"][0];
    assert_eq!(s["status"], "failed");
    let e = s["error"].as_str().unwrap();
    assert!(e.contains("pack") || e.contains("blob"), "{e}");
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
}

/// A repository, a scratch temp dir and the `shop` cluster, with a drill of it caught
/// running (see [`drill_caught_running`]): `(env, tmp, pg, coffer, postmaster)`.
fn shop_drill_caught() -> (Env, PathBuf, PgCluster, std::process::Child, i32) {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let pg = PgCluster::start();
    shop(&pg);
    let (child, postmaster) = drill_caught_running(&env, &pg, &tmp);
    (env, tmp, pg, child, postmaster)
}

/// A drill of `db` whose check sleeps for a minute, caught with its scratch cluster running:
/// the running coffer and the scratch postmaster's pid.
fn drill_caught_running(env: &Env, pg: &PgCluster, tmp: &Path) -> (std::process::Child, i32) {
    let c = config(
        env,
        pg,
        "{ checks = [\"select pg_sleep(60) is not null\"] }",
    );
    let out = coffer(env, &c, tmp, &["backup", "--source", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let child = spawn_drill(env, &c, tmp);
    let t0 = Instant::now();
    let pid_file = loop {
        let found = leftovers(tmp)
            .into_iter()
            .map(|d| d.join("data/postmaster.pid"))
            .find(|p| p.exists());
        if let Some(p) = found {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no scratch cluster started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the restore finish and the check start.
    std::thread::sleep(Duration::from_secs(3));
    let postmaster: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, postmaster)
}

/// `coffer drill` started in the background, its standard error piped.
fn spawn_drill(env: &Env, config: &Path, tmp: &Path) -> std::process::Child {
    env.std_cmd(assert_cmd::cargo::cargo_bin("coffer"))
        .env("TMPDIR", tmp)
        .arg("--config")
        .arg(config)
        .arg("drill")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // SAFETY: probing a pid.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn gone_within(pid: i32, limit: Duration) {
    let t0 = Instant::now();
    while alive(pid) {
        assert!(t0.elapsed() < limit, "process {pid} still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_mid_drill_removes_the_scratch_cluster_and_records_the_drill() {
    // The cluster lives as long as `_pg`.
    let (env, tmp, _pg, child, postmaster) = shop_drill_caught();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    gone_within(postmaster, Duration::from_secs(10));
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    let locks = fs::read_dir(env.repo.join("locks")).map_or(0, |d| d.count());
    assert_eq!(locks, 0, "no lock is left");
    let c = env.path("coffer.toml");
    let h = json(&coffer(&env, &c, &tmp, &["drills", "--json"]));
    assert_eq!(h[0]["status"], "failed");
    assert!(
        h[0]["error"].as_str().unwrap().contains("interrupted"),
        "{h:#}"
    );
}

#[test]
fn a_killed_drill_leaves_its_scratch_cluster_to_the_next_one_which_removes_it() {
    let (env, tmp, pg, mut child, postmaster) = shop_drill_caught();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(alive(postmaster), "the scratch server outlived coffer");
    assert_eq!(leftovers(&tmp).len(), 1);

    let quick = config(&env, &pg, "{ checks = [\"select true\"] }");
    let out = coffer(&env, &quick, &tmp, &["drill"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed the scratch directory of an earlier drill"),
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    gone_within(postmaster, Duration::from_secs(30));
}

/// The databases of a cluster, sorted.
fn databases(pg: &PgCluster) -> Vec<String> {
    pg.psql(
        "postgres",
        "SELECT datname FROM pg_database ORDER BY datname",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn a_drill_url_drill_restores_into_scratch_databases_there_and_always_drops_them() {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let pg = PgCluster::start();
    shop(&pg);
    let server = PgCluster::start();
    server.create_db("keepme");
    // A scratch database of a coffer on another machine: not this drill's to judge.
    let foreign = "coffer_drill_zzzzzz_1_00000000_0";
    server.create_db(foreign);
    let before = databases(&server);
    let config = |file: &str, checks: &str| {
        let c = env.path(file);
        fs::write(
            &c,
            format!(
                "[sources.db]\ntype = \"postgres\"\nurl = {}\ndrill_url = {}\n\
                 drill = {{ checks = [{checks}], min_tables = 2, amcheck = true }}\n",
                toml::Value::String(pg.url("shop")),
                toml::Value::String(server.url("postgres")),
            ),
        )
        .unwrap();
        c
    };
    let c = config("coffer.toml", "\"select count(*) = 500 from items\"");
    let out = coffer(&env, &c, &tmp, &["backup", "--source", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live = pg.data_checksums("shop");

    let r = passed(&coffer(&env, &c, &tmp, &["drill", "--json"]));
    let s = &r["sources"][0];
    assert_eq!(s["status"], "passed", "{s:#}");
    assert_eq!(s["steps"][0]["step"], "connect to drill_url", "{s:#}");
    let checks = s["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4, "{s:#}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{s:#}");
    assert_eq!(
        databases(&server),
        before,
        "the scratch database is dropped"
    );
    assert_eq!(
        pg.data_checksums("shop"),
        live,
        "the live database is untouched"
    );
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));

    // A drill caught in its checks, its scratch database restored on the server.
    let slow = config("slow.toml", "\"select pg_sleep(60) is not null\"");
    let caught = || {
        let child = spawn_drill(&env, &slow, &tmp);
        let t0 = Instant::now();
        while server.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'select pg_sleep%'",
        ) != "1"
        {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the drill never reached its check"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let scratch: Vec<String> = databases(&server)
            .into_iter()
            .filter(|d| !before.contains(d))
            .collect();
        assert_eq!(scratch.len(), 1, "{scratch:?}");
        assert!(scratch[0].starts_with("coffer_drill_"), "{scratch:?}");
        (child, scratch[0].clone())
    };

    // SIGTERM: the scratch database goes at once (its session ended), the drill is recorded.
    let (child, _) = caught();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{:?} {}",
        out.status,
        stderr(&out)
    );
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_eq!(databases(&server), before);

    // SIGKILL leaves it; the next drill from this machine drops it, and only it.
    let (mut child, left) = caught();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(databases(&server).contains(&left));
    let out = coffer(&env, &c, &tmp, &["drill"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "dropped the scratch database of an earlier drill that did not finish: {left}"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(databases(&server), before);
    assert_eq!(pg.data_checksums("shop"), live);
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
}

#[test]
fn a_physical_drill_recovers_to_the_newest_point_and_passes() {
    use common::pg::ArchiveRepo;
    let a = ArchiveRepo::new("drill secret\n", &[]);
    let pg = a.start_archiving(&[]);
    shop(&pg);
    let tmp = a.holder.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let cfg = a.holder.path().join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[sources.phys]\ntype = \"postgres\"\nmode = \"physical\"\nurl = {}\npgdata = {}\n\
             drill = {{ checks = [\"select count(*) = 600 from items\"], min_tables = 2, amcheck = true }}\n",
            toml::Value::String(pg.url("shop")),
            toml::Value::String(pg.data_dir().display().to_string()),
        ),
    )
    .unwrap();
    a.cmd()
        .arg("--config")
        .arg(&cfg)
        .args(["backup", "--source", "phys"])
        .assert()
        .success();
    // Rows written after the base backup are only in the WAL: the drill must replay them.
    pg.psql(
        "shop",
        "INSERT INTO items SELECT g, 'late ' || g FROM generate_series(501, 600) g",
    );
    pg.archive_all();
    let live = pg.data_checksums("shop");
    let histories = || {
        common::list_files(&a.repo.join("wal"))
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".history"))
            .count()
    };
    let before = histories();
    let out = a
        .cmd()
        .env("TMPDIR", &tmp)
        .arg("--config")
        .arg(&cfg)
        .args(["drill", "--json"])
        .output()
        .unwrap();
    let r = passed(&out);
    let s = &r["sources"][0];
    assert_eq!(s["status"], "passed", "{s:#}");
    let checks: Vec<&str> = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "recovered and promoted",
            "select count(*) = 600 from items",
            "at least 2 tables",
            "amcheck of the B-tree indexes of database shop",
        ]
    );
    let steps: Vec<&str> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps[..3],
        [
            "fetch, verify and restore the base backup",
            "start a scratch PostgreSQL 15 on it, consistent",
            "recover to the end of the WAL and promote"
        ]
    );
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    assert_eq!(
        pg.data_checksums("shop"),
        live,
        "the live database is untouched"
    );
    assert_eq!(
        histories(),
        before,
        "the promoted scratch server archived nothing"
    );
    let holds = a
        .cmd()
        .args(["wal-hold", "list", "--json"])
        .output()
        .unwrap();
    assert!(holds.status.success(), "{}", stderr(&holds));
    assert_eq!(
        json(&holds).as_array().map(|h| h.len()),
        Some(0),
        "the drill's WAL hold is released"
    );
    pg.psql("shop", "INSERT INTO items VALUES (601, 'still live')");
}

#[test]
fn a_redis_drill_loads_the_rdb_into_a_scratch_server_and_checks_keys_and_replies() {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let r = common::redis::RedisServer::start();
    let counts = common::redis::fill_all_types(&r);
    r.cmd(&["SET", "greeting", "hello"]);
    let live_digest = r.digest();
    let c = env.path("coffer.toml");
    fs::write(
        &c,
        format!(
            "[sources.cache]\ntype = \"redis\"\nurl = {}\n\
             drill = {{ checks = [\"GET greeting => hello\", \"EXISTS nothing-here => 1\"] }}\n",
            toml::Value::String(r.url())
        ),
    )
    .unwrap();
    let out = coffer(&env, &c, &tmp, &["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = coffer(&env, &c, &tmp, &["drill", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "one check fails: {}",
        stderr(&out)
    );
    let v = json(&out);
    let s = &v["sources"][0];
    assert_eq!(s["status"], "failed", "{s:#}");
    let checks = s["checks"].as_array().unwrap();
    assert_eq!(checks[0]["check"], "keys per database as at backup");
    assert_eq!(checks[0]["ok"], true, "{checks:?}");
    let total: i64 = counts.iter().map(|c| c.1).sum::<i64>() + 1;
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{total} keys in {} database(s)", counts.len())),
        "{checks:?} {counts:?}"
    );
    assert_eq!(checks[1]["ok"], true, "{checks:?}");
    assert_eq!(checks[2]["ok"], false, "{checks:?}");
    assert_eq!(checks[2]["detail"], "replied \"0\"");
    assert!(leftovers(&tmp).is_empty(), "{:?}", leftovers(&tmp));
    assert_eq!(r.digest(), live_digest, "the live server is untouched");
}

#[test]
fn a_command_drill_runs_its_drill_command_on_the_restored_output() {
    let env = Env::new();
    env.init();
    let tmp = scratch_tmp(&env);
    let c = env.path("coffer.toml");
    fs::write(
        &c,
        "[sources.lines]\ntype = \"command\"\nshell = \"printf 'a\\\\nb\\\\nc\\\\n'\"\n\
         drill_shell = \"test $(wc -l) -eq 3\"\n\
         [sources.wrong]\ntype = \"command\"\nshell = \"echo x\"\n\
         drill_command = [\"sh\", \"-c\", \"cat >/dev/null; echo broken >&2; exit 4\"]\n\
         [sources.none]\ntype = \"command\"\nshell = \"echo y\"\n",
    )
    .unwrap();
    let out = coffer(&env, &c, &tmp, &["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = coffer(&env, &c, &tmp, &["drill", "--json", "--source", "lines"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = json(&out)["sources"][0].clone();
    assert_eq!(s["status"], "passed", "{s:#}");
    assert_eq!(s["checks"][0]["check"], "test $(wc -l) -eq 3 succeeds");
    assert_eq!(s["bytes"], 6);
    let out = coffer(&env, &c, &tmp, &["drill", "--json", "--source", "wrong"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = json(&out)["sources"][0].clone();
    assert_eq!(s["checks"][0]["ok"], false, "{s:#}");
    assert!(
        s["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{s:#}"
    );
    let out = coffer(&env, &c, &tmp, &["drill", "--json", "--source", "none"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = json(&out)["sources"][0].clone();
    assert_eq!(s["status"], "error");
    assert!(
        s["error"].as_str().unwrap().contains("drill_command"),
        "{s:#}"
    );
}
