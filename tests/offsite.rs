//! A physical PostgreSQL source with `copy_to = ["offsite"]`: its base backups are copied
//! to the offsite repository and `wal-push` archives every WAL file into both, succeeding
//! only once both have it; with the primary repository gone, the offsite one alone recovers
//! the cluster to its newest row.

mod common;

use common::pg::{chown_to_server_user, Offsite, PgCluster};
use common::stderr;
use std::fs;
use std::time::{Duration, Instant};

fn count(pg: &PgCluster) -> String {
    pg.psql("postgres", "SELECT count(*) FROM t")
}

fn archiver(pg: &PgCluster) -> (i64, String) {
    let row = pg.psql(
        "postgres",
        "SELECT failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    );
    let (failed, last) = row.split_once('|').unwrap();
    (failed.parse().unwrap(), last.to_string())
}

#[test]
fn wal_goes_to_every_repository_and_the_offsite_copy_alone_recovers() {
    let o = Offsite::start(|_| (String::new(), String::new()));
    let (a, pg, offsite) = (&o.a, &o.pg, &o.offsite);
    let holder = a.holder.path();
    let coffer = |args: &[&str]| o.coffer(args);
    let out = coffer(&["backup", "--source", "db", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let copied = report.to_string();
    assert!(copied.contains("offsite"), "{report:#}");

    // Rows after the base backup reach a recovery only through the archived WAL.
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(101, 200)");
    pg.archive_all();
    let (failed, last) = archiver(pg);
    assert_eq!(failed, 0, "{}", pg.log());
    let offsite_has = |name: &str| {
        common::list_files(&offsite.join("wal"))
            .iter()
            .any(|p| p.file_name().unwrap().to_string_lossy() == name)
    };
    assert!(offsite_has(&last), "{last} is not in the offsite archive");

    // The offsite repository cannot be written: archiving fails (PostgreSQL keeps the
    // segment and retries) although the primary took it, and succeeds once it can.
    fs::set_permissions(offsite, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    pg.psql("postgres", "INSERT INTO t SELECT generate_series(201, 300)");
    let stuck = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while archiver(pg).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "archiving did not fail: {}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(archiver(pg).1 < stuck, "{stuck} counted as archived");
    fs::set_permissions(offsite, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    pg.archive_all();
    assert!(offsite_has(&stuck));

    // The primary repository is lost: the offsite one alone restores and recovers.
    fs::remove_dir_all(&a.repo).unwrap();
    let dir = holder.join("recovered");
    let out = coffer(&[
        "--repo",
        "offsite",
        "restore",
        "--pgdata",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    chown_to_server_user(&dir);
    let recovered = PgCluster::start_recovered(&dir, &[("archive_mode", "off")]);
    assert_eq!(count(&recovered), "300");
}
