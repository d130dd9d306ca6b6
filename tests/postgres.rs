//! PostgreSQL logical backups and restores against real, throwaway PostgreSQL clusters.

mod common;

use common::pg::{PgCluster, RICH_SCHEMA_ITEMS, RICH_SCHEMA_ORDERS};
use common::{ok, refused_without_snapshot, stderr, Env};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `coffer` with no PostgreSQL settings inherited from the environment.
fn coffer(env: &Env) -> assert_cmd::Command {
    let mut c = env.cmd();
    common::clean_pg_env(&mut c);
    c
}

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    coffer(env).args(args).output().unwrap()
}

fn backup(env: &Env, url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["backup", "--json", "--postgres", url];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&run(env, &args))).unwrap()
}

/// `coffer backup --postgres URL [extra…]` with the PostgreSQL programs of `bindir`.
fn backup_with_bindir(env: &Env, bindir: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    coffer(env)
        .env("COFFER_PG_BINDIR", bindir)
        .args(["backup", "--postgres", url])
        .args(extra)
        .output()
        .unwrap()
}

/// `coffer restore latest --to-postgres URL --table TABLE [extra…]`.
fn restore_table(env: &Env, url: &str, table: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", "latest", "--to-postgres", url, "--table", table];
    args.extend_from_slice(extra);
    run(env, &args)
}

/// A backup that failed as a source error (exit 8), said `needle` and that no snapshot
/// was written, and left none.
fn assert_refused_without_snapshot(env: &Env, out: &std::process::Output, needle: &str) {
    refused_without_snapshot(env, out, Some(8), &[needle, "no snapshot"], 0);
}

fn snapshot_count(env: &Env) -> usize {
    env.snapshots().len()
}

fn assert_same_db(pg: &PgCluster, a: &str, b: &str) {
    assert_eq!(
        pg.schema_dump(a),
        pg.schema_dump(b),
        "schemas of {a} and {b} differ"
    );
    assert_eq!(
        pg.data_checksums(a),
        pg.data_checksums(b),
        "data of {a} and {b} differs"
    );
}

#[test]
fn rich_schema_round_trips_through_the_repository() {
    let pg = PgCluster::start();
    pg.create_db("src");
    pg.load_rich_schema("src");
    // Enough data (about 25 MB of dump) that dedup is measurable with 1 MiB chunks.
    pg.psql(
        "src",
        "CREATE TABLE public.bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 600000) g",
    );
    let env = Env::new();
    env.init();

    let first = backup(&env, &pg.url("src"), &["--tag", "nightly"]);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1);
    let s = &snaps[0];
    assert_eq!(s["kind"], "postgres");
    assert_eq!(s["paths"][0], "/postgres/src.dump");
    let meta = &s["sources"][0]["metadata"];
    assert_eq!(meta["database"], "src");
    assert_eq!(meta["format"], "custom");
    assert!(meta["server_version"].as_str().unwrap().starts_with("15."));
    assert!(meta["pg_dump_version"].as_str().unwrap().starts_with("15."));
    assert!(meta["database_size"].as_i64().unwrap() > 0);
    assert_eq!(meta["dump_size"], s["size"]);
    assert!(meta["started_at"].is_string() && meta["snapshot_time"].is_string());
    let rows = |schema: &str, name: &str| {
        meta["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == schema && t["name"] == name)
            .unwrap_or_else(|| panic!("{schema}.{name} not recorded: {meta}"))["rows"]
            .clone()
    };
    assert_eq!(rows("sales", "orders"), RICH_SCHEMA_ORDERS);
    assert_eq!(rows("inventory", "items"), RICH_SCHEMA_ITEMS);
    assert_eq!(rows("public", "Mixed Case"), 50);
    assert_eq!(rows("inventory", "item_stats"), 4);
    assert!(rows("sales", "events").is_null(), "partitioned parent");
    assert_eq!(
        rows("sales", "events_2023").as_i64().unwrap()
            + rows("sales", "events_2024").as_i64().unwrap()
            + rows("sales", "events_2025").as_i64().unwrap(),
        3000
    );

    // An unchanged database costs little the second time: only the chunk holding the
    // archive header and table of contents (which carry the dump's time) is new.
    let second = backup(&env, &pg.url("src"), &[]);
    let added = second["summary"]["bytes_added"].as_u64().unwrap();
    let size = second["size"].as_u64().unwrap();
    assert!(
        added * 10 < size,
        "second backup added {added} of {size} bytes (first: {first})"
    );

    // Restore into a database that does not exist yet, sequentially and in parallel.
    let out = run(
        &env,
        &["restore", "latest", "--to-postgres", &pg.url("copy1")],
    );
    let said = stderr(&out);
    ok(&out);
    assert!(said.contains("row counts match"), "{said}");
    assert!(said.contains("sales.orders"), "{said}");
    assert_same_db(&pg, "src", "copy1");

    let out = run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("copy2"),
            "--jobs",
            "2",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(report["created"], true);
    assert!(report["checks"].as_array().unwrap().len() > 10);
    assert_same_db(&pg, "src", "copy2");

    // The raw dump for pg_restore by hand.
    let out = coffer(&env).args(["dump", "latest"]).output().unwrap();
    let raw = out.stdout;
    assert!(raw.starts_with(b"PGDMP"));
    let dump = env.path("by-hand.dump");
    std::fs::write(&dump, &raw).unwrap();
    let list = pg
        .client("pg_restore")
        .arg("--list")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA sales orders"));

    ok(&run(&env, &["check", "--read-data"]));
}

#[test]
fn replacing_a_database_asks_first_and_keeps_a_safety_backup() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.load_rich_schema("app");
    pg.create_db("pristine");
    pg.load_rich_schema("pristine");
    let env = Env::new();
    env.init();
    backup(&env, &pg.url("app"), &[]);
    let snap = env.snapshots()[0]["id"].as_str().unwrap().to_string();

    // Damage the live database.
    pg.psql(
        "app",
        "DELETE FROM sales.order_audit; UPDATE inventory.items SET name = 'oops' WHERE id < 10;
         CREATE TABLE public.added_later (x int); INSERT INTO public.added_later VALUES (7);",
    );
    let damaged = pg.data_checksums("app");

    // Dry run: reads everything, changes nothing, writes no snapshot.
    let out = run(
        &env,
        &[
            "restore",
            &snap,
            "--to-postgres",
            &pg.url("app"),
            "--dry-run",
        ],
    );
    let said = stderr(&out);
    ok(&out);
    assert!(said.contains("dry run"), "{said}");
    assert!(said.contains("drop and recreate"), "{said}");
    assert_eq!(pg.data_checksums("app"), damaged);
    assert_eq!(snapshot_count(&env), 1);
    let out = run(
        &env,
        &[
            "restore",
            &snap,
            "--to-postgres",
            &pg.url("newdb"),
            "--dry-run",
        ],
    );
    ok(&out);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'newdb'"
        ),
        "0"
    );

    // Without --yes and without a terminal: refused, nothing touched.
    let out = run(&env, &["restore", &snap, "--to-postgres", &pg.url("app")]);
    refused_without_snapshot(&env, &out, Some(2), &["--yes"], 1);
    assert_eq!(pg.data_checksums("app"), damaged);

    // On a terminal coffer asks for the database name; a wrong answer stops it.
    let cmdline = format!(
        "'{}' restore {snap} --to-postgres '{}'",
        assert_cmd::cargo::cargo_bin("coffer").display(),
        pg.url("app")
    );
    let mut tty = std::process::Command::new("script");
    tty.args(["-qec", &cmdline, "/dev/null"])
        .env("COFFER_REPO", &env.repo)
        .env("COFFER_PASSWORD", "correct horse")
        .env("COFFER_HOME", env.path("home"));
    let out = tty
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"not-the-name\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("Type the database name"), "{screen}");
    assert_eq!(out.status.code(), Some(2), "{screen}");
    assert_eq!(pg.data_checksums("app"), damaged);
    assert_eq!(snapshot_count(&env), 1);

    // With --yes: a safety backup first, then the database is exactly the dump again.
    let out = run(
        &env,
        &["restore", &snap, "--to-postgres", &pg.url("app"), "--yes"],
    );
    let said = stderr(&out);
    ok(&out);
    assert!(said.contains("safety backup"), "{said}");
    assert_same_db(&pg, "pristine", "app");
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 2);
    let safety = &snaps[1];
    assert!(safety["tags"]
        .as_array()
        .unwrap()
        .contains(&Value::from("safety-backup")));
    let safety_id = safety["id"].as_str().unwrap();
    assert!(said.contains(&safety_id[..8]), "{said}");

    // `latest` skips the safety backup: restoring it again gives the pristine state.
    ok(&run(
        &env,
        &["restore", "latest", "--to-postgres", &pg.url("again")],
    ));
    assert_same_db(&pg, "pristine", "again");

    // The safety backup holds the damaged state.
    let out = run(
        &env,
        &["restore", safety_id, "--to-postgres", &pg.url("before")],
    );
    ok(&out);
    assert_eq!(pg.data_checksums("before"), damaged);
}

#[test]
fn single_tables_come_back_beside_the_live_ones() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.load_rich_schema("app");
    let env = Env::new();
    env.init();
    backup(&env, &pg.url("app"), &[]);
    let orders_before = pg.psql(
        "app",
        "SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM sales.orders t",
    );
    // The accident: most orders deleted, and a live table changed elsewhere.
    pg.psql(
        "app",
        "ALTER TABLE sales.orders DISABLE TRIGGER USER; DELETE FROM sales.orders WHERE id > 10;",
    );
    let live = pg.data_checksums("app");

    let out = run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("app"),
            "--table",
            "orders",
            "--table",
            "public.Mixed Case",
        ],
    );
    let said = stderr(&out);
    ok(&out);
    assert!(said.contains("sales.orders_restore"), "{said}");
    let restored = pg.psql(
        "app",
        "SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM sales.orders_restore t",
    );
    assert_eq!(restored, orders_before);
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM public.\"Mixed Case_restore\""),
        "50"
    );
    // The live tables are untouched.
    let mut now = pg.data_checksums("app");
    now.remove("sales.orders_restore");
    now.remove("public.Mixed Case_restore");
    assert_eq!(now, live);
    // Definition yes, foreign keys and triggers no.
    let fks = pg.psql(
        "app",
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'sales.orders_restore'::regclass AND contype = 'f'",
    );
    assert_eq!(fks, "0");
    let triggers = pg.psql(
        "app",
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sales.orders_restore'::regclass",
    );
    assert_eq!(triggers, "0");

    // --as, a name that exists, a table that does not, an ambiguous --as.
    ok(&run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("app"),
            "--table",
            "inventory.items",
            "--as",
            "items_may",
        ],
    ));
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM inventory.items_may"),
        RICH_SCHEMA_ITEMS.to_string()
    );
    let out = restore_table(&env, &pg.url("app"), "orders", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = restore_table(&env, &pg.url("app"), "nope", &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let out = restore_table(&env, &pg.url("app"), "events", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("partitioned"), "{}", stderr(&out));
    // Dry run of a table restore changes nothing.
    ok(&run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("app"),
            "--table",
            "customers",
            "--dry-run",
        ],
    ));
    assert_eq!(
        pg.psql(
            "app",
            "SELECT to_regclass('sales.customers_restore') IS NULL"
        ),
        "t"
    );
}

/// A directory with a `pg_dump` that runs the real one through `script`.
fn fake_bindir(pg: &PgCluster, dir: &Path, script: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let real = pg.bindir();
    for tool in ["pg_dumpall", "pg_restore", "psql"] {
        std::os::unix::fs::symlink(real.join(tool), dir.join(tool)).unwrap();
    }
    let body = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real}/pg_dump --version; fi\n{script}\n",
        real = real.display()
    );
    let p = dir.join("pg_dump");
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A cluster with the rich schema in `app`, a role `limited` (password `limited-pw`) that
/// may read every table but `revoked`, and a new repository.
fn app_with_limited_role(revoked: &str) -> (PgCluster, Env) {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.load_rich_schema("app");
    pg.psql(
        "app",
        &format!(
            "CREATE ROLE limited LOGIN PASSWORD 'limited-pw';
             GRANT USAGE ON SCHEMA sales, inventory TO limited;
             GRANT SELECT ON ALL TABLES IN SCHEMA sales, inventory, public TO limited;
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA sales, inventory, public TO limited;
             REVOKE SELECT ON {revoked} FROM limited;"
        ),
    );
    let env = Env::new();
    env.init();
    (pg, env)
}

#[test]
fn a_failing_pg_dump_leaves_no_snapshot() {
    let (pg, env) = app_with_limited_role("sales.customers");

    // A role lacking permission on one table.
    let out = run(
        &env,
        &[
            "backup",
            "--postgres",
            &pg.url_as("limited", "limited-pw", "app"),
        ],
    );
    assert_refused_without_snapshot(&env, &out, "permission denied for table customers");

    // pg_dump killed half-way: the stream is cut.
    let bin = env.path("killed-bin");
    fake_bindir(
        &pg,
        &bin,
        &format!(
            "{}/pg_dump \"$@\" | head -c 200000\nkill -9 $$",
            pg.bindir().display()
        ),
    );
    let out = backup_with_bindir(&env, &bin, &pg.url("app"), &[]);
    refused_without_snapshot(&env, &out, Some(8), &["signal 9"], 0);

    // pg_dump exits 0 but writes something that is not an archive.
    let bin = env.path("garbage-bin");
    fake_bindir(&pg, &bin, "echo not a dump");
    let out = backup_with_bindir(&env, &bin, &pg.url("app"), &[]);
    refused_without_snapshot(&env, &out, Some(8), &["custom-format"], 0);

    // The password reaches pg_dump through the environment, never its command line.
    let bin = env.path("spy-bin");
    let log = env.path("spy.log");
    fake_bindir(
        &pg,
        &bin,
        &format!(
            "echo \"ARGS $*\" >> {log}\necho \"ENV $PGPASSWORD\" >> {log}\nexec {}/pg_dump \"$@\"",
            pg.bindir().display(),
            log = log.display()
        ),
    );
    let out = backup_with_bindir(&env, &bin, &pg.url("app"), &[]);
    ok(&out);
    let spied = std::fs::read_to_string(&log).unwrap();
    let args = spied.lines().find(|l| l.starts_with("ARGS")).unwrap();
    assert!(!args.contains(common::pg::PG_PASSWORD), "{args}");
    assert!(args.contains("--format=custom") && args.contains("--compress=0"));
    assert!(args.contains("--snapshot="), "{args}");
    assert!(spied.contains(&format!("ENV {}", common::pg::PG_PASSWORD)));
    assert_eq!(snapshot_count(&env), 1);
}

#[test]
fn unreachable_servers_bad_logins_and_missing_tools_are_plain_errors() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let env = Env::new();
    env.init();
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = run(
        &env,
        &[
            "backup",
            "--postgres",
            &format!("postgresql://postgres:x@127.0.0.1:{dead_port}/app"),
        ],
    );
    assert_eq!(out.status.code(), Some(8));
    let said = stderr(&out);
    assert!(said.contains("cannot connect to PostgreSQL"), "{said}");
    assert!(said.contains("Connection refused"), "{said}");
    assert!(!said.contains("panicked") && !said.contains("backtrace"));

    let out = run(
        &env,
        &[
            "backup",
            "--postgres",
            &pg.url_as("postgres", "wrong", "app"),
        ],
    );
    assert_eq!(out.status.code(), Some(8));
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("wrong"),
        "password echoed: {}",
        stderr(&out)
    );

    let empty = env.path("no-tools");
    std::fs::create_dir_all(&empty).unwrap();
    let out = coffer(&env)
        .env("COFFER_PG_BINDIR", &empty)
        .args(["backup", "--postgres", &pg.url("app")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8));
    assert!(
        stderr(&out).contains("apt-get install postgresql-client-15"),
        "{}",
        stderr(&out)
    );

    // The libpq environment variables are used when no URL is given.
    let out = coffer(&env)
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", common::pg::PG_PASSWORD)
        .env("PGDATABASE", "app")
        .args(["backup", "--postgres"])
        .output()
        .unwrap();
    ok(&out);
    // And DATABASE_URL before them.
    let out = coffer(&env)
        .env("DATABASE_URL", pg.url("app"))
        .env("PGDATABASE", "nonexistent")
        .args(["backup", "--postgres"])
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(snapshot_count(&env), 2);
    assert_eq!(snapshot_count(&env), 2);
}

#[test]
fn all_databases_come_with_the_globals() {
    let pg = PgCluster::start();
    pg.ensure_roles();
    pg.create_db("shop");
    pg.load_rich_schema("shop");
    pg.create_db("blog");
    pg.psql(
        "blog",
        "CREATE TABLE posts (id int PRIMARY KEY, body text);
         INSERT INTO posts SELECT g, repeat('post ', g) FROM generate_series(1, 300) g;",
    );
    let env = Env::new();
    env.init();
    backup(&env, &pg.url(""), &["--all-databases"]);
    let snap = &env.snapshots()[0];
    let mut names: Vec<&str> = snap["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blog", "globals", "postgres", "shop"]);
    let globals = coffer(&env)
        .args(["dump", "latest", "/postgres/globals.sql"])
        .output()
        .unwrap();
    let globals = String::from_utf8_lossy(&globals.stdout);
    assert!(globals.contains("CREATE ROLE app_writer"), "{globals}");

    // One database at a time.
    let out = run(&env, &["restore", "latest", "--to-postgres", &pg.url("x")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--database"), "{}", stderr(&out));
    ok(&run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("blog_copy"),
            "--database",
            "blog",
        ],
    ));
    assert_same_db(&pg, "blog", "blog_copy");
    ok(&run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("shop_copy"),
            "--database",
            "shop",
            "-j",
            "2",
        ],
    ));
    assert_same_db(&pg, "shop", "shop_copy");
}

/// The tables (as "schema.name") of each data stream of the newest snapshot's dump.
fn data_streams(env: &Env) -> Vec<(String, Vec<String>)> {
    let snap = &env.snapshots()[0];
    snap["sources"][0]["metadata"]["data_streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let tables = d["tables"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| {
                            format!(
                                "{}.{}",
                                t["schema"].as_str().unwrap(),
                                t["name"].as_str().unwrap()
                            )
                        })
                        .collect();
                    (d["path"].as_str().unwrap().to_string(), tables)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A table whose name needs every kind of quoting in a pg_dump pattern.
const ODD_TABLE: &str = "Big \"Quoted\" *.x";

#[test]
fn split_dumps_restore_whole_by_table_and_by_hand() {
    let pg = PgCluster::start();
    pg.create_db("src");
    pg.load_rich_schema("src");
    pg.psql(
        "src",
        "CREATE TABLE public.\"Big \"\"Quoted\"\" *.x\" AS
           SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30000) g;
         CREATE TABLE public.\"Big \"\"Quoted\"\" *.y\" (id int);",
    );
    let env = Env::new();
    env.init();
    // Three pg_dumps; every table of 64 KiB or more may get a stream of its own.
    let made = backup(
        &env,
        &pg.url("src"),
        &["--dump-jobs", "3", "--dump-min-table-bytes", "65536"],
    );
    let streams = data_streams(&env);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_eq!(streams[0].0, "/postgres/src.data/01.dump");
    assert_eq!(streams[1].0, "/postgres/src.data/02.dump");
    let in_streams: Vec<&String> = streams.iter().flat_map(|(_, t)| t).collect();
    let odd = format!("public.{ODD_TABLE}");
    assert!(in_streams.contains(&&odd), "{streams:?}");
    assert!(
        in_streams.contains(&&"sales.orders".to_string()),
        "{streams:?}"
    );
    // The look-alike table is small, so its data stays in the main stream.
    assert!(
        !in_streams.iter().any(|t| t.ends_with("*.y")),
        "{streams:?}"
    );
    let snap = &env.snapshots()[0];
    // A coffer that does not know split dumps refuses the snapshot instead of restoring
    // only the main stream.
    assert_eq!(
        snap["requires"],
        serde_json::json!({"postgres-split-dump": "0.1.0"})
    );
    let meta = &snap["sources"][0]["metadata"];
    assert_eq!(meta["dump_size"], snap["size"]);
    assert_eq!(meta["dump_size"], made["size"]);

    // The whole database, one pg_restore at a time and three at once.
    let out = run(
        &env,
        &["restore", "latest", "--to-postgres", &pg.url("copy1")],
    );
    let said = stderr(&out);
    ok(&out);
    assert!(said.contains("row counts match"), "{said}");
    assert_same_db(&pg, "src", "copy1");
    ok(&run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("copy2"),
            "--jobs",
            "3",
        ],
    ));
    assert_same_db(&pg, "src", "copy2");

    // Single tables whose data is in a data stream, beside the live ones.
    pg.psql("src", "DELETE FROM sales.order_audit");
    pg.psql(
        "src",
        "ALTER TABLE sales.orders DISABLE TRIGGER USER; DELETE FROM sales.orders WHERE id > 10;",
    );
    ok(&restore_table(&env, &pg.url("src"), "sales.orders", &[]));
    ok(&restore_table(
        &env,
        &pg.url("src"),
        &odd,
        &["--as", "odd_back"],
    ));
    let copy = pg.data_checksums("copy1");
    let now = pg.data_checksums("src");
    assert_eq!(now["sales.orders_restore"], copy["sales.orders"]);
    assert_eq!(now["public.odd_back"], copy[&odd]);
    assert_eq!(
        pg.psql("src", "SELECT count(*) FROM public.odd_back"),
        "30000"
    );

    // A dry run reads every stream and changes nothing.
    let out = run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("copy3"),
            "--dry-run",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(
        report["plan"][0].as_str().unwrap().contains("in 3 streams"),
        "{report}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'copy3'"
        ),
        "0"
    );

    // By hand: one output cannot hold three archives; --out DIR writes them all and
    // prints the pg_restore commands, which work in that order.
    let out = run(&env, &["dump", "latest"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--out DIR"), "{}", stderr(&out));
    let raw = coffer(&env)
        .args(["dump", "latest", "/postgres/src.data/01.dump"])
        .output()
        .unwrap();
    assert!(raw.status.success() && raw.stdout.starts_with(b"PGDMP"));
    // Someone made DIR/src.data a symlink to another directory: it is replaced, and nothing
    // is written there.
    let dir = env.path("by-hand");
    let outside = env.path("outside");
    common::make_outside(&outside, &[("other", b"outside")]);
    let before = common::fingerprint(&outside);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("src.data")).unwrap();
    let printed = ok(&run(
        &env,
        &["dump", "latest", "--out", dir.to_str().unwrap()],
    ));
    assert_eq!(common::fingerprint(&outside), before);
    assert!(std::fs::symlink_metadata(dir.join("src.data"))
        .unwrap()
        .is_dir());
    assert!(dir.join("src.dump").is_file());
    assert!(dir.join("src.data/01.dump").is_file());
    assert!(dir.join("src.data/02.dump").is_file());
    let commands: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("pg_restore"))
        .collect();
    assert_eq!(commands.len(), 5, "{printed}");
    assert!(commands[0].contains("--section=pre-data"), "{printed}");
    assert!(commands[4].contains("--section=post-data"), "{printed}");
    pg.create_db("by_hand");
    for c in &commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        assert_eq!(words[words.len() - 3..words.len() - 1], ["-d", "src"]);
        let out = pg
            .client("pg_restore")
            .args(&words[1..words.len() - 3])
            .args(["-d", "by_hand", words[words.len() - 1]])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_db(&pg, "copy1", "by_hand");

    ok(&run(&env, &["check", "--read-data"]));
}

#[test]
fn a_failing_data_stream_leaves_no_snapshot() {
    let (pg, env) = app_with_limited_role("sales.orders");
    let split = ["--dump-jobs", "2", "--dump-min-table-bytes", "65536"];

    // No permission on a table big enough for a data stream of its own.
    let limited = pg.url_as("limited", "limited-pw", "app");
    let mut args = vec!["backup", "--postgres", &limited];
    args.extend_from_slice(&split);
    let out = run(&env, &args);
    assert_refused_without_snapshot(&env, &out, "permission denied for table orders");

    // Only a data stream's pg_dump fails: the main one is stopped, and what the failing
    // one said is shown.
    let bin = env.path("data-fails-bin");
    fake_bindir(
        &pg,
        &bin,
        &format!(
            "case \"$*\" in *--data-only*) echo 'pg_dump: error: the disk is on fire' >&2; exit 3;; esac\nexec {}/pg_dump \"$@\"",
            pg.bindir().display()
        ),
    );
    let out = backup_with_bindir(&env, &bin, &pg.url("app"), &split);
    refused_without_snapshot(
        &env,
        &out,
        Some(8),
        &[
            "the disk is on fire",
            "pg_dump of the data of",
            "exit status 3",
        ],
        0,
    );

    // The same database in one stream (--dump-jobs 1) never runs a data-only pg_dump.
    ok(&backup_with_bindir(
        &env,
        &bin,
        &pg.url("app"),
        &[
            "--json",
            "--dump-jobs",
            "1",
            "--dump-min-table-bytes",
            "65536",
        ],
    ));
    assert!(data_streams(&env).is_empty());
    assert_eq!(env.snapshots()[0]["requires"], serde_json::json!({}));
    ok(&run(
        &env,
        &["restore", "latest", "--to-postgres", &pg.url("copy")],
    ));
    assert_same_db(&pg, "app", "copy");
}

/// A locale from the backup that the restoring server does not have: the database is created
/// with the server's default and the restore says so (text and JSON), instead of silently.
#[test]
fn a_missing_locale_is_reported_when_the_database_is_created() {
    if !common::as_root() || !Path::new("/usr/share/i18n/locales/en_US").exists() {
        eprintln!("skipped: needs root and the locales sources (package locales)");
        return;
    }
    // A locale of our own, in the system's locale directory for as long as the backup runs.
    let name = format!("xx_COFFER{}.UTF-8", std::process::id());
    let dir = Path::new("/usr/lib/locale").join(&name);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let guard = Remove(dir.clone());
    let st = std::process::Command::new("localedef")
        .args(["-i", "en_US", "-f", "UTF-8"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success() || dir.exists(), "localedef failed");

    let pg = PgCluster::start();
    pg.psql(
        "postgres",
        &format!("CREATE DATABASE loc TEMPLATE template0 LC_COLLATE '{name}' LC_CTYPE '{name}'"),
    );
    pg.psql(
        "loc",
        "CREATE TABLE t (s text); INSERT INTO t VALUES ('a'), ('B')",
    );
    let env = Env::new();
    env.init();
    backup(&env, &pg.url("loc"), &[]);
    pg.psql("postgres", "DROP DATABASE loc");
    drop(guard);

    let out = run(
        &env,
        &[
            "restore",
            "latest",
            "--to-postgres",
            &pg.url("loc"),
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert!(warnings[0].as_str().unwrap().contains(&name), "{report}");
    assert_eq!(pg.psql("loc", "SELECT count(*) FROM t"), "2");

    // The text output says it too.
    pg.psql("postgres", "DROP DATABASE loc");
    let out = run(
        &env,
        &["restore", "latest", "--to-postgres", &pg.url("loc")],
    );
    ok(&out);
    assert!(stderr(&out).contains("default locale"), "{}", stderr(&out));
}
