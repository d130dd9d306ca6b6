//! The TOML configuration file (`--config FILE` or `COFFER_CONFIG`).
//!
//! ```toml
//! repository = "s3://backups/prod"       # or a local path
//! password_file = "/etc/coffer/passphrase"
//!
//! [s3]                                    # each overridden by its AWS_* variable
//! endpoint = "https://s3.eu-central-1.example.net"
//! region = "eu-central-1"
//! access_key_id = "…"
//! secret_access_key = "…"
//! ```
//! Environment variables (`COFFER_REPO`, `COFFER_PASSWORD`, `COFFER_PASSWORD_FILE`)
//! override the file; command-line options override both. Later sections (sources,
//! schedules) are added to the same file.

use crate::error::Error;
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Default, Deserialize)]
pub struct Config {
    pub repository: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Discouraged (prefer password_file), but accepted for parity with other tools.
    pub password: Option<String>,
    /// zstd level used by `coffer init` (default 3).
    pub compression: Option<i32>,
    /// How to reach an `s3://` repository.
    #[serde(default)]
    pub s3: crate::backend::S3Settings,
    /// How to reach Redis servers (`backup --redis`, `restore --to-redis`).
    #[serde(default)]
    pub redis: RedisSettings,
}

/// The `[redis]` table: what a Redis URL cannot carry.
///
/// ```toml
/// [redis]
/// password_file = "/etc/coffer/redis-password"  # when the URL and REDISCLI_AUTH have none
/// tls_ca = "/etc/coffer/redis-ca.pem"           # for rediss:// with a private CA
/// tls_cert = "/etc/coffer/redis-client.pem"     # a client certificate, with tls_key
/// tls_key = "/etc/coffer/redis-client.key"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub password_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("repository", &self.repository)
            .field("password_file", &self.password_file)
            .field("password", &crate::redact::Redacted(&self.password))
            .field("compression", &self.compression)
            .field("s3", &self.s3)
            .field("redis", &self.redis)
            .finish()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let mut c: Config = toml::from_str(&text)
            .map_err(|e| Error::usage(format!("config file {}: {e}", path.display())))?;
        // Relative paths in the file are relative to the file.
        if let Some(dir) = path.parent() {
            let r = &mut c.redis;
            for p in [
                &mut c.password_file,
                &mut r.password_file,
                &mut r.tls_ca,
                &mut r.tls_cert,
                &mut r.tls_key,
            ] {
                if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                    *p = Some(dir.join(rel));
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_and_resolves_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("coffer.toml");
        std::fs::write(
            &p,
            "repository = \"/r\"\npassword_file = \"pw\"\n[later]\nx = 1\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.repository.as_deref(), Some("/r"));
        assert_eq!(c.password_file.unwrap(), d.path().join("pw"));
        std::fs::write(&p, "repository = [").unwrap();
        assert!(Config::load(&p).is_err());
    }

    #[test]
    fn s3_table() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("coffer.toml");
        std::fs::write(
            &p,
            "repository = \"s3://b/p\"\n[s3]\nendpoint = \"http://h:9000\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.s3.endpoint.as_deref(), Some("http://h:9000"));
        assert_eq!(c.s3.secret_access_key.as_deref(), Some("s"));
        assert!(
            !format!("{:?}", c.s3).contains("\"s\""),
            "Debug shows the secret"
        );
        // A misspelt key is an error, not silently ignored.
        std::fs::write(&p, "[s3]\nsecret_key = \"s\"\n").unwrap();
        assert!(Config::load(&p).is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Config {
            repository: Some("/r".into()),
            password: Some("hunter2-secret".into()),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("repository: Some(\"/r\")"), "{shown}");
    }
}

/// A duration as people write it: `90s`, `30m`, `1h30m`, `2h 15m`, `1d` (humantime's
/// units: s, m, h, d, w, and ms and friends). Used by command timeouts.
pub fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        crate::error::Error::usage(format!(
            "{s:?} is not a duration ({e}): write e.g. 90s, 30m or 1h30m"
        ))
        .into()
    })
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 2h 15m ").unwrap(),
            Duration::from_secs(8100)
        );
        let e = parse_duration("soon").unwrap_err();
        assert_eq!(crate::error::kind_of(&e), crate::error::ErrorKind::Usage);
        assert!(e.to_string().contains("write e.g. 90s"), "{e}");
        assert!(parse_duration("30").is_err());
    }
}
