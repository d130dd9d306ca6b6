//! The PostgreSQL harness and the rich schema fixture, checked with the plain tools: a
//! pg_dump/pg_restore round trip must compare equal, and a change must not.

mod common;

use common::pg::{PgCluster, APP_WRITER_PASSWORD, RICH_SCHEMA_ITEMS, RICH_SCHEMA_ORDERS};
use std::time::Instant;

#[test]
fn pg_dump_round_trip_of_the_rich_schema_compares_equal() {
    let started = Instant::now();
    let mut pg = PgCluster::start();
    pg.ensure_roles();
    pg.create_db("src");
    pg.load_rich_schema("src");

    let dump = pg.dir().join("src.dump");
    let out = pg
        .client("pg_dump")
        .args(["-Fc", "-Z0", "-d", "src", "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.create_db("dst");
    let out = pg
        .client("pg_restore")
        .args(["--exit-on-error", "-d", "dst"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let schema = pg.schema_dump("src");
    assert!(schema.contains("CREATE TABLE public.\"Mixed Case\""));
    assert!(schema.contains("CREATE UNLOGGED TABLE public.session_cache"));
    assert!(schema.contains("GRANT SELECT ON TABLE sales.orders TO app_reader;"));
    assert!(!schema.contains("\\restrict"));
    assert_eq!(schema, pg.schema_dump("dst"), "schemas differ");

    let sums = pg.data_checksums("src");
    assert_eq!(sums, pg.data_checksums("dst"), "data differs");
    for key in [
        "large_objects",
        "sales.events_2023",
        "sales.events_2024",
        "sales.events_2025",
        "inventory.item_stats",
        "public.Mixed Case",
        "public.session_cache",
        "public.invoice_no",
        "inventory.items_id_seq",
    ] {
        assert!(sums.contains_key(key), "no checksum for {key}: {sums:#?}");
    }
    // The partitioned parent is covered by its partitions.
    assert!(!sums.contains_key("sales.events"));
    // md5 of nothing: there must be large objects.
    assert_ne!(sums["large_objects"], "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(sums["inventory.batch_seq"], "42:true");

    let counts = pg.row_counts("dst");
    assert_eq!(counts, pg.row_counts("src"));
    assert_eq!(counts["sales.orders"], RICH_SCHEMA_ORDERS);
    assert_eq!(counts["sales.order_audit"], RICH_SCHEMA_ORDERS);
    assert_eq!(counts["inventory.items"], RICH_SCHEMA_ITEMS);
    assert_eq!(counts["inventory.item_stats"], 4);
    for year in ["2023", "2024", "2025"] {
        assert!(counts[&format!("sales.events_{year}")] > 900);
    }
    assert_eq!(
        pg.psql("dst", "SELECT count(*) FROM pg_largeobject_metadata"),
        "3"
    );

    // The comparisons see a changed row, a changed large object and a changed comment.
    pg.psql(
        "dst",
        "UPDATE sales.orders SET note = 'changed' WHERE id = 4321",
    );
    let changed = pg.data_checksums("dst");
    assert_ne!(changed["sales.orders"], sums["sales.orders"]);
    // The audit trigger fired; nothing else moved.
    assert_ne!(changed["sales.order_audit"], sums["sales.order_audit"]);
    assert_eq!(changed["inventory.items"], sums["inventory.items"]);
    pg.psql("dst", "SELECT lo_put(910002, 0, '\\x00')");
    assert_ne!(
        pg.data_checksums("dst")["large_objects"],
        sums["large_objects"]
    );
    pg.psql("dst", "COMMENT ON TABLE sales.orders IS 'other'");
    assert_ne!(pg.schema_dump("dst"), schema);

    // The URLs work with their passwords; a wrong password is refused.
    let connect = |url: &str| {
        pg.client("psql")
            .env_remove("PGPASSWORD")
            .args(["-X", "-At", "-c", "SELECT current_user", url])
            .output()
            .unwrap()
    };
    let out = connect(&pg.url("src"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres");
    let out = connect(&pg.url_as("app_writer", APP_WRITER_PASSWORD, "src"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app_writer");
    assert!(!connect(&pg.url_as("app_writer", "wrong", "src"))
        .status
        .success());

    // A clean stop and a restart keep the data.
    pg.restart();
    assert_eq!(pg.data_checksums("src"), sums);
    eprintln!("pg harness test took {:?}", started.elapsed());
}
