//! TLS to PostgreSQL, against real PostgreSQL 15 clusters with `ssl = on` and certificates
//! made by a throwaway CA: every sslmode, root and client certificates, revocation lists,
//! and the same settings reaching pg_dump, pg_dumpall and pg_restore. A `hostnossl … reject`
//! line at the top of pg_hba.conf proves that a connection which got in used TLS.

mod common;

use common::pg::{chown_to_server_user, ArchiveRepo, PgCluster, PG_PASSWORD};
use common::tls::Pki;
use common::{ok, refused, refused_without_snapshot, stderr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const REJECT_PLAINTEXT: &str = "hostnossl all all all reject";

/// A repository (and its passphrase file) that the server's OS user can also write, for
/// clusters that archive through `coffer wal-push`; `home` is the HOME of coffer and its
/// children (no `~/.postgresql` unless a test makes one).
struct Setup {
    archive: ArchiveRepo,
    home: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let archive = ArchiveRepo::new("tls secret\n", &["--pack-size", "8"]);
        let home = archive.holder.path().join("home");
        std::fs::create_dir(&home).unwrap();
        chown_to_server_user(&home);
        Setup { archive, home }
    }

    fn holder(&self) -> &Path {
        self.archive.holder.path()
    }

    /// `coffer` with this repository, HOME, and no PostgreSQL settings from our
    /// environment.
    fn cmd(&self) -> assert_cmd::Command {
        let mut c = self.archive.cmd();
        common::clean_pg_env(&mut c);
        c.env("HOME", &self.home);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["snapshots", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        v.as_array().unwrap().clone()
    }

    fn snapshot_count(&self) -> usize {
        self.snapshots().len()
    }
}

impl common::Snapshots for Setup {
    fn snapshots(&self) -> Vec<serde_json::Value> {
        Setup::snapshots(self)
    }
}

/// A cluster with the PKI's certificate and `ssl = on`, refusing connections without TLS,
/// with a database `app` holding a table.
fn tls_cluster(pki: &Pki, extra: &[(&str, &str)]) -> PgCluster {
    let conf = pki.server_conf();
    let mut all: Vec<(&str, &str)> = conf.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    let pg = PgCluster::start_with(&all);
    pg.prepend_hba(&[REJECT_PLAINTEXT]);
    fill_app(&pg);
    pg
}

fn fill_app(pg: &PgCluster) {
    pg.create_db("app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
    );
}

/// `postgresql://postgres:PW@HOST:PORT/DB?QUERY`
fn url(pg: &PgCluster, host: &str, db: &str, query: &str) -> String {
    format!(
        "postgresql://postgres:{PG_PASSWORD}@{host}:{}/{db}?{query}",
        pg.port()
    )
}

fn verify_full(pki: &Pki) -> String {
    format!("sslmode=verify-full&sslrootcert={}", pki.ca().display())
}

#[test]
fn verify_full_serves_logical_and_physical_backups_and_restores() {
    let pki = Pki::new(&["localhost"]);
    let s = Setup::new();
    let archive = s.archive.archive_command();
    let pg = tls_cluster(
        &pki,
        &[
            ("archive_mode", "on"),
            ("archive_command", &archive),
            ("archive_timeout", "0"),
        ],
    );
    let q = verify_full(&pki);

    // The reject line is in force: without TLS nothing gets in.
    let out = s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "localhost", "app", "sslmode=disable"),
    ]);
    refused(&out, 8, "no encryption");

    // A logical backup: our connection and pg_dump both over verified TLS.
    ok(&s.run(&["backup", "--postgres", &url(&pg, "localhost", "app", &q)]));
    // A restore: our connection and pg_restore too.
    ok(&s.run(&[
        "restore",
        "latest",
        "--to-postgres",
        &url(&pg, "localhost", "app_copy", &q),
    ]));
    assert_eq!(pg.data_checksums("app"), pg.data_checksums("app_copy"));

    // All databases: pg_dumpall for the globals too, settings in the environment.
    ok(&s
        .cmd()
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", pki.ca())
        .args([
            "backup",
            "--postgres",
            &url(&pg, "localhost", "postgres", ""),
            "--all-databases",
        ])
        .output()
        .unwrap());

    // A physical base backup (pg_backup_start/stop over the same kind of connection).
    ok(&s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "localhost", "postgres", &q),
        "--physical",
    ]));
    let kinds: Vec<String> = s
        .snapshots()
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["postgres", "postgres", "postgres-physical"]);
}

#[test]
fn wrong_cas_host_names_and_revoked_certificates_are_refused() {
    let pki = Pki::new(&["localhost"]);
    let other = Pki::new(&["localhost"]);
    let s = Setup::new();
    let pg = tls_cluster(&pki, &[]);
    let backup = |url: &str| s.run(&["backup", "--postgres", url]);

    // Another CA: refused under both verify modes, and the message says why.
    let wrong = format!("sslrootcert={}", other.ca().display());
    for mode in ["verify-full", "verify-ca", "require"] {
        let out = backup(&url(
            &pg,
            "localhost",
            "app",
            &format!("sslmode={mode}&{wrong}"),
        ));
        refused(&out, 8, "not signed by a CA in");
        assert!(stderr(&out).contains("ca.crt"), "{}", stderr(&out));
    }
    // Another CA and another name: verify-ca (which forgives the name) still refuses.
    let out = backup(&url(
        &pg,
        "127.0.0.1",
        "app",
        &format!("sslmode=verify-ca&{wrong}"),
    ));
    refused(&out, 8, "not signed by a CA in");

    // The certificate names localhost only: 127.0.0.1 is refused by verify-full…
    let right = format!("sslrootcert={}", pki.ca().display());
    let out = backup(&url(
        &pg,
        "127.0.0.1",
        "app",
        &format!("sslmode=verify-full&{right}"),
    ));
    refused(&out, 8, "not made out to \"127.0.0.1\"");
    // A key=value string naming the host (checked) apart from the address (connected to).
    let kv = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres password={PG_PASSWORD} \
         dbname=app sslmode=verify-full sslrootcert='{}'",
        pg.port(),
        pki.ca().display()
    );
    ok(&backup(&kv));
    // …and accepted by verify-ca, pg_dump included.
    ok(&backup(&url(
        &pg,
        "127.0.0.1",
        "app",
        &format!("sslmode=verify-ca&{right}"),
    )));
    // The other way round: a certificate for 127.0.0.1 only, reached as localhost.
    let by_ip = Pki::new(&["127.0.0.1"]);
    let pg_ip = tls_cluster(&by_ip, &[]);
    let ip_ca = format!("sslrootcert={}", by_ip.ca().display());
    ok(&backup(&url(
        &pg_ip,
        "127.0.0.1",
        "app",
        &format!("sslmode=verify-full&{ip_ca}"),
    )));
    let out = backup(&url(
        &pg_ip,
        "localhost",
        "app",
        &format!("sslmode=verify-full&{ip_ca}"),
    ));
    refused(&out, 8, "not made out to \"localhost\"");

    // Revocation lists: an empty one passes, one that revokes the server's certificate not.
    let empty = pki.empty_crl();
    ok(&backup(&url(
        &pg,
        "localhost",
        "app",
        &format!("{}&sslcrl={}", verify_full(&pki), empty.display()),
    )));
    let crl = pki.revoke_server();
    let out = backup(&url(
        &pg,
        "localhost",
        "app",
        &format!("{}&sslcrl={}", verify_full(&pki), crl.display()),
    ));
    refused(&out, 8, "revoked");

    // Nothing to trust: verify-* are refused before connecting (a usage error).
    let out = backup(&url(&pg, "localhost", "app", "sslmode=verify-full"));
    refused(&out, 2, ".postgresql/root.crt");
    // A root file named but missing is an error, not a quiet downgrade.
    let out = backup(&url(
        &pg,
        "localhost",
        "app",
        "sslmode=require&sslrootcert=/nonexistent/ca.crt",
    ));
    refused(&out, 2, "/nonexistent/ca.crt");
    assert_eq!(s.snapshot_count(), 4);
}

#[test]
fn require_prefer_and_the_default_root_file() {
    let pki = Pki::new(&["localhost"]);
    let s = Setup::new();
    let pg = tls_cluster(&pki, &[]);

    // require without any CA: encrypted, not verified; pg_dump too (the reject line).
    ok(&s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "127.0.0.1", "app", "sslmode=require"),
    ]));
    // prefer (also the default) uses TLS when the server offers it, and says so.
    for query in ["sslmode=prefer", ""] {
        let out = s.run(&[
            "-v",
            "backup",
            "--postgres",
            &url(&pg, "127.0.0.1", "app", query),
        ]);
        ok(&out);
        assert!(
            stderr(&out).contains("connected with TLS (certificate not checked)"),
            "{}",
            stderr(&out)
        );
    }
    // allow: plaintext first, TLS when the server refuses that (as here).
    ok(&s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "127.0.0.1", "app", "sslmode=allow"),
    ]));
    // PGSSLMODE from the environment is honoured: disable is turned away.
    let out = s
        .cmd()
        .env("PGSSLMODE", "disable")
        .args(["backup", "--postgres", &url(&pg, "127.0.0.1", "app", "")])
        .output()
        .unwrap();
    refused(&out, 8, "no encryption");

    // ~/.postgresql/root.crt is the default root file: verify-full needs nothing more.
    let dot = s.home.join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(pki.ca(), dot.join("root.crt")).unwrap();
    let out = s.run(&[
        "-v",
        "backup",
        "--postgres",
        &url(&pg, "localhost", "app", "sslmode=verify-full"),
    ]);
    ok(&out);
    assert!(
        stderr(&out).contains("connected with TLS (certificate checked: CA and host name)"),
        "{}",
        stderr(&out)
    );
    // As in libpq, that file makes require check the CA: another CA there is refused.
    let other = Pki::new(&["localhost"]);
    std::fs::copy(other.ca(), dot.join("root.crt")).unwrap();
    let out = s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "localhost", "app", "sslmode=require"),
    ]);
    refused(&out, 8, "not signed by a CA in");
    // prefer, as libpq, tries again without TLS after a failed handshake, and warns; the
    // reject line then turns that away.
    let out = s.run(&[
        "backup",
        "--postgres",
        &url(&pg, "localhost", "app", "sslmode=prefer"),
    ]);
    refused(&out, 8, "no encryption");
    assert!(
        stderr(&out).contains("TLS connection failed")
            && stderr(&out).contains("trying without TLS"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(dot.join("root.crt")).unwrap();

    // sslrootcert=system is the system's CA bundle (here SSL_CERT_FILE names the test CA)
    // and means verify-full; pg_dump (whose libpq 15 knows no "system") gets the bundle.
    let system = |query: &str| {
        s.cmd()
            .env("SSL_CERT_FILE", pki.ca())
            .args(["backup", "--postgres", &url(&pg, "localhost", "app", query)])
            .output()
            .unwrap()
    };
    ok(&system("sslrootcert=system"));
    refused(
        &system("sslrootcert=system&sslmode=require"),
        2,
        "use sslmode=verify-full",
    );

    // Over the Unix socket TLS never applies (libpq ignores sslmode there).
    let socket = format!(
        "postgresql:///app?host={}&port={}&user=postgres&sslmode=verify-full",
        pg.socket_dir().display(),
        pg.port()
    );
    ok(&s.run(&["backup", "--postgres", &socket]));

    // A server without TLS: prefer connects in plaintext and says so; require refuses.
    let plain = PgCluster::start();
    fill_app(&plain);
    let out = s.run(&[
        "-v",
        "backup",
        "--postgres",
        &url(&plain, "127.0.0.1", "app", "sslmode=prefer"),
    ]);
    ok(&out);
    assert!(
        stderr(&out).contains("connected without TLS: the server does not offer it"),
        "{}",
        stderr(&out)
    );
    let out = s.run(&[
        "backup",
        "--postgres",
        &url(&plain, "127.0.0.1", "app", "sslmode=require"),
    ]);
    refused(
        &out,
        8,
        "the server does not offer TLS (ssl = off?), and sslmode=require",
    );
    assert_eq!(s.snapshot_count(), 8);
}

#[test]
fn client_certificates_log_in() {
    let pki = Pki::new(&["localhost"]);
    let s = Setup::new();
    let pg = tls_cluster(&pki, &[]);
    pg.psql("postgres", "CREATE ROLE certuser LOGIN SUPERUSER");
    pg.prepend_hba(&["hostssl all certuser all cert"]);
    let (cert, key) = pki.client_cert("certuser");
    let target = format!(
        "postgresql://certuser@localhost:{}/app?{}",
        pg.port(),
        verify_full(&pki)
    );
    let with_cert = |key: &Path| {
        s.cmd()
            .env("PGSSLCERT", &cert)
            .env("PGSSLKEY", key)
            .args(["backup", "--postgres", &target])
            .output()
            .unwrap()
    };
    // Our connection and pg_dump both log in with the certificate (no password exists).
    ok(&with_cert(&key));
    // Without it the server refuses.
    let out = s.run(&["backup", "--postgres", &target]);
    refused(&out, 8, "certificate");
    // A key others may read is refused, as libpq does.
    let loose = s.holder().join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused_without_snapshot(
        &s,
        &with_cert(&loose),
        Some(2),
        &["group or world access"],
        1,
    );
}

/// A bindir whose pg_dump, pg_dumpall, pg_restore and psql log their TLS environment and
/// command line to `log`, then run the real program with `PGSSLROOTCERT` replaced by
/// `$SWAP_ROOTCERT` when that is set.
fn logging_bindir(pg: &PgCluster, dir: &Path, log: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for tool in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        let body = format!(
            "#!/bin/sh\n\
             echo \"{tool} mode=$PGSSLMODE root=$PGSSLROOTCERT args=$*\" >> '{log}'\n\
             if [ -n \"$SWAP_ROOTCERT\" ]; then PGSSLROOTCERT=\"$SWAP_ROOTCERT\"; export PGSSLROOTCERT; fi\n\
             exec '{real}' \"$@\"\n",
            log = log.display(),
            real = pg.bindir().join(tool).display()
        );
        let p = dir.join(tool);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn pg_dump_and_pg_restore_get_the_same_settings() {
    let pki = Pki::new(&["localhost"]);
    let other = Pki::new(&["localhost"]);
    let s = Setup::new();
    let pg = tls_cluster(&pki, &[]);
    let bindir = s.holder().join("bin");
    let log = s.holder().join("tools.log");
    logging_bindir(&pg, &bindir, &log);
    let q = verify_full(&pki);
    let tools = || {
        let mut c = s.cmd();
        c.env("COFFER_PG_BINDIR", &bindir);
        c
    };

    ok(&tools()
        .args(["backup", "--postgres", &url(&pg, "localhost", "app", &q)])
        .output()
        .unwrap());
    ok(&tools()
        .args([
            "restore",
            "latest",
            "--to-postgres",
            &url(&pg, "localhost", "app_copy", &q),
        ])
        .output()
        .unwrap());
    let said = std::fs::read_to_string(&log).unwrap();
    let want = format!("mode=verify-full root={}", pki.ca().display());
    for tool in ["pg_dump", "pg_restore"] {
        let line = said
            .lines()
            .find(|l| l.starts_with(&format!("{tool} ")) && l.contains("--dbname"))
            .unwrap_or_else(|| panic!("{tool} never ran:\n{said}"));
        assert!(line.contains(&want), "{line}");
    }
    // Their command lines carry neither the TLS settings nor the password.
    for line in said.lines() {
        let args = line.split("args=").nth(1).unwrap_or("");
        assert!(!args.contains("ssl"), "{line}");
        assert!(!line.contains(PG_PASSWORD), "{line}");
    }

    // pg_dump checks the certificate itself: with another CA it fails, and so does the
    // backup, leaving no snapshot.
    let out = tools()
        .env("SWAP_ROOTCERT", other.ca())
        .args(["backup", "--postgres", &url(&pg, "localhost", "app", &q)])
        .output()
        .unwrap();
    refused_without_snapshot(&s, &out, Some(8), &["certificate verify failed"], 1);
}
