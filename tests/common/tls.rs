//! A throwaway certificate authority for TLS tests, made with the `openssl` command: a CA,
//! a server certificate for given names (signed by it), client certificates, and a
//! revocation list. The server's files are readable by the server's OS user (the key is
//! its own, mode 0600), as PostgreSQL demands.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The OS user the test clusters run as when the tests run as root.
const SERVER_OS_USER: &str = "postgres";

pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key in `name` and a certificate request for `cn`.
fn key_and_request(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

impl Pki {
    /// A CA and a server certificate whose subjectAltName holds `names` (host names, or
    /// IP addresses).
    pub fn new(names: &[&str]) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("coffer-pki-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=coffer test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        fs::write(d.join("index.txt"), "").unwrap();
        fs::write(d.join("crlnumber"), "01\n").unwrap();
        fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n\
             certificate = ca.crt\nprivate_key = ca.key\n",
        )
        .unwrap();
        let pki = Pki { dir };
        let san: Vec<String> = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect();
        pki.sign("server", names[0], &san.join(","), "serverAuth");
        let d = pki.dir.path();
        fs::set_permissions(d.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
        if super::as_root() {
            let st = Command::new("chown")
                .arg(format!("{SERVER_OS_USER}:"))
                .arg(d.join("server.key"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        pki
    }

    /// Make `name.key` and `name.crt` for `cn`, signed by the CA.
    fn sign(&self, name: &str, cn: &str, san: &str, usage: &str) {
        let d = self.dir.path();
        key_and_request(d, name, cn);
        let mut ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\n"
        );
        if !san.is_empty() {
            ext.push_str(&format!("subjectAltName={san}\n"));
        }
        fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `postgresql.conf` settings for a server with this certificate, trusting this CA for
    /// client certificates.
    pub fn server_conf(&self) -> Vec<(&'static str, String)> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            ("ssl", "on".to_string()),
            ("ssl_cert_file", p("server.crt")),
            ("ssl_key_file", p("server.key")),
            ("ssl_ca_file", p("ca.crt")),
        ]
    }

    /// A client certificate for `user` (its CN), and its key (mode 0600): (cert, key).
    pub fn client_cert(&self, user: &str) -> (PathBuf, PathBuf) {
        let name = format!("client-{user}");
        self.sign(&name, user, "", "clientAuth");
        let d = self.dir.path();
        let key = d.join(format!("{name}.key"));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        (d.join(format!("{name}.crt")), key)
    }

    /// Revoke the server certificate; the CA's revocation list (PEM) after that.
    pub fn revoke_server(&self) -> PathBuf {
        let d = self.dir.path();
        openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "server.crt"]);
        openssl(
            d,
            &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
        );
        d.join("crl.pem")
    }

    /// The revocation list with nothing revoked.
    pub fn empty_crl(&self) -> PathBuf {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-gencrl",
                "-out",
                "empty-crl.pem",
            ],
        );
        d.join("empty-crl.pem")
    }
}
