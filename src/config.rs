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
//! override the file; command-line options override both.
//!
//! The application stack is declared in the same file: `[sources.NAME]` tables and a
//! `[stack]` table (see [`sources`]). `${VAR}` in a value is replaced by the environment
//! variable (see [`expand`]). Unknown keys are errors that name the key and the table.

pub mod expand;
pub mod sources;

use crate::error::Error;
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sources::{SourceConfig, SourceKind, StackConfig};

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Repositories besides the primary one (`[repositories.NAME]`), by name: where
    /// `coffer copy --to NAME` copies snapshots, and what `--repo NAME` opens.
    #[serde(default)]
    pub repositories: std::collections::BTreeMap<String, RepositoryConfig>,
    /// The declared sources, in the file's order (`[sources.NAME]`).
    #[serde(skip)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub stack: StackConfig,
    /// `coffer run`: the repository jobs, the HTTP listener, limits.
    #[serde(default)]
    pub service: ServiceConfig,
    /// `coffer run`: where alerts go.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// A local directory where `wal-push` keeps the WAL files of `wal = "async"`
    /// repositories until `wal-copy` has pushed them there (`<wal_spool>/<NAME>/`).
    pub wal_spool: Option<PathBuf>,
}

/// `[repositories.NAME]`: another repository, for copies.
///
/// ```toml
/// [repositories.offsite]
/// location = "s3://backups-offsite/prod"   # or a local path
/// password_file = "/etc/coffer/offsite-passphrase"
/// s3 = { endpoint = "https://s3.example.net", region = "eu-west-1" }
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    pub location: String,
    /// Its passphrase (before `--password-file`, `COFFER_PASSWORD*` and the top-level
    /// ones, which it falls back to).
    pub password_file: Option<PathBuf>,
    pub password: Option<String>,
    /// How to reach it on S3, exactly as given (the `AWS_*` variables are the primary's).
    /// Without it: the top-level `[s3]` and the `AWS_*` variables, as for the primary.
    pub s3: Option<crate::backend::S3Settings>,
    /// zstd level for `coffer init` of it (default: the top-level `compression`).
    pub compression: Option<i32>,
    /// Its own retention: what `--repo NAME forget` applies without `--keep-*` options, and
    /// what a source's `copy_to` applies to the source's copies there after each copy.
    #[serde(default, deserialize_with = "sources::keep_policy")]
    pub keep: Option<crate::repo::forget::Policy>,
    /// How `wal-push` archives into it when it is a physical source's `copy_to`.
    #[serde(default)]
    pub wal: WalMode,
}

/// `wal = "sync" | "async"` of a `[repositories.NAME]` that WAL is archived to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalMode {
    /// `wal-push` succeeds only once it has the file durably.
    #[default]
    Sync,
    /// `wal-push` keeps the file in the local `wal_spool`; `wal-copy` pushes it there later.
    Async,
}

impl std::fmt::Debug for RepositoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfig")
            .field("location", &self.location)
            .field("password_file", &self.password_file)
            .field("password", &crate::redact::Redacted(&self.password))
            .field("s3", &self.s3)
            .field("compression", &self.compression)
            .field("keep", &self.keep)
            .field("wal", &self.wal)
            .finish()
    }
}

/// `[service]`: how `coffer run` runs.
///
/// ```toml
/// [service]
/// listen = "127.0.0.1:9808"       # /metrics, /healthz, /api/status and the status page
/// prune = "0 4 * * 0"             # cron expressions of the repository jobs
/// check = "0 5 * * *"
/// check_read_data_subset = "5%"
/// wal_verify = "*/10 * * * *"
/// wal_copy = "30s"                # drain the WAL spool (an interval or a cron expression)
/// timezone = "Europe/Paris"       # of those expressions (default: local time)
/// max_parallel = 1                # runs at once
/// shutdown_grace = "5m"           # how long SIGTERM waits for running jobs
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub listen: Option<String>,
    /// A file holding `user:password` for HTTP basic authentication of the listener.
    pub basic_auth_file: Option<PathBuf>,
    pub prune: Option<String>,
    pub check: Option<String>,
    pub check_read_data_subset: Option<String>,
    pub wal_verify: Option<String>,
    /// How often `wal-copy` drains the spool of the `wal = "async"` repositories: an
    /// interval (`30s`, the default when there is one) or a cron expression.
    pub wal_copy: Option<String>,
    pub timezone: Option<String>,
    pub max_parallel: Option<usize>,
    #[serde(default, with = "sources::opt_duration")]
    pub shutdown_grace: Option<Duration>,
}

/// `[alerts]`: the channels of `coffer run`'s alerts.
///
/// ```toml
/// [alerts]
/// slack_webhook = "${SLACK_WEBHOOK_URL}"   # a Slack incoming webhook
/// webhook = "https://ops.example.net/hooks/coffer"  # gets a JSON body
/// remind = "24h"                          # repeat while a problem lasts (default 24h)
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    pub slack_webhook: Option<String>,
    pub webhook: Option<String>,
    #[serde(default, with = "sources::opt_duration")]
    pub remind: Option<Duration>,
}

impl std::fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Webhook URLs carry their secret in the path.
        f.debug_struct("AlertsConfig")
            .field(
                "slack_webhook",
                &crate::redact::Redacted(&self.slack_webhook),
            )
            .field("webhook", &crate::redact::Redacted(&self.webhook))
            .field("remind", &self.remind)
            .finish()
    }
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
            .field("repositories", &self.repositories)
            .field("sources", &self.sources)
            .field("stack", &self.stack)
            .field("service", &self.service)
            .field("alerts", &self.alerts)
            .field("wal_spool", &self.wal_spool)
            .finish()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Config::parse(&text, path.parent(), &|v| std::env::var(v).ok())
            .map_err(|e| Error::usage(format!("config file {}: {e}", path.display())).into())
    }

    /// Parse a config file's text; `${VAR}` from `env`, relative paths relative to `dir`.
    pub fn parse(
        text: &str,
        dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::usage(e.to_string()))?;
        // The sources expand their own variables: one that is not set makes only commands
        // that use that source fail (see `SourceConfig::unresolved`).
        let declared = match table.remove("sources") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(Error::usage("sources must be a table of [sources.NAME] tables").into())
            }
            None => toml::Table::new(),
        };
        expand::expand_table(&mut table, "", env)?;
        wal_modes(&table)?;
        let mut c: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::usage(e.message().to_string()))?;
        c.sources = sources::parse_sources(declared, dir, env)?;
        let sv = &c.service;
        for (key, expr) in [
            ("prune", &sv.prune),
            ("check", &sv.check),
            ("wal_verify", &sv.wal_verify),
        ] {
            if let Some(e) = expr {
                sources::cron(e).map_err(|m| Error::usage(format!("[service] {key}: {m}")))?;
            }
        }
        if let Some(e) = &sv.wal_copy {
            ServiceConfig::interval_or_cron(e, None)
                .map_err(|m| Error::usage(format!("[service] wal_copy: {m}")))?;
        }
        if let Some(t) = &sv.timezone {
            t.parse::<chrono_tz::Tz>().map_err(|_| {
                Error::usage(format!(
                    "[service] timezone {t:?} is not an IANA time zone name"
                ))
            })?;
        }
        if sv.max_parallel == Some(0) {
            return Err(Error::usage("[service] max_parallel must be at least 1").into());
        }
        for name in &c.stack.restore_order {
            if !c.sources.iter().any(|s| &s.name == name) {
                return Err(Error::usage(format!(
                    "[stack] restore_order names {name:?}, which is not a [sources.NAME] table"
                ))
                .into());
            }
        }
        for (name, r) in &c.repositories {
            if !sources::valid_name(name) {
                return Err(Error::usage(format!(
                    "[repositories.{name}]: a repository name is letters, digits, '-', '_' and '.'"
                ))
                .into());
            }
            if name == crate::ops::access::PRIMARY {
                return Err(Error::usage(format!(
                    "[repositories.{name}]: the name {name:?} means the top-level `repository`; choose another"
                ))
                .into());
            }
            if r.location.trim().is_empty() {
                return Err(
                    Error::usage(format!("[repositories.{name}]: location is empty")).into(),
                );
            }
        }
        for src in &c.sources {
            if let Some(n) = src
                .copy_to
                .iter()
                .find(|n| !c.repositories.contains_key(*n))
            {
                return Err(Error::usage(format!(
                    "[sources.{}] copy_to names {n:?}, which is not a [repositories.NAME] table",
                    src.name
                ))
                .into());
            }
        }
        if c.wal_spool.is_none() {
            if let Some(name) = c.async_wal_copies().first() {
                return Err(Error::usage(format!(
                    "[repositories.{name}] has wal = \"async\", which keeps WAL in a local spool \
                     until wal-copy pushes it there: set the top-level wal_spool = \"/path\" \
                     (a local directory)"
                ))
                .into());
            }
        }
        // Relative paths in the file are relative to the file.
        if let Some(dir) = dir {
            for r in c.repositories.values_mut() {
                if let Some(rel) = r.password_file.as_ref().filter(|p| p.is_relative()) {
                    r.password_file = Some(dir.join(rel));
                }
            }
            let r = &mut c.redis;
            for p in [
                &mut c.password_file,
                &mut r.password_file,
                &mut r.tls_ca,
                &mut r.tls_cert,
                &mut r.tls_key,
                &mut c.stack.restore_dir,
                &mut c.service.basic_auth_file,
                &mut c.wal_spool,
            ] {
                if let Some(rel) = p.as_ref().filter(|p| p.is_relative()) {
                    *p = Some(dir.join(rel));
                }
            }
        }
        Ok(c)
    }

    /// The declared source called `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The repositories that WAL goes to beside the primary, in name order: the `copy_to`
    /// of every physical PostgreSQL source (a base backup copied there is restorable only
    /// with its WAL there).
    pub fn wal_copies(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sources
            .iter()
            .filter(|s| {
                matches!(&s.kind, SourceKind::Postgres(p) if p.mode == sources::PgMode::Physical)
            })
            .flat_map(|s| s.copy_to.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Those of [`wal_copies`](Config::wal_copies) with `wal = "async"`.
    pub fn async_wal_copies(&self) -> Vec<String> {
        self.wal_copies()
            .into_iter()
            .filter(|n| self.repositories.get(n).map(|r| r.wal) == Some(WalMode::Async))
            .collect()
    }

    /// The spool folder of the async repository `name`: `<wal_spool>/<name>`.
    pub fn wal_spool_of(&self, name: &str) -> Option<PathBuf> {
        self.wal_spool.as_ref().map(|d| d.join(name))
    }
}

impl ServiceConfig {
    /// `[service] wal_copy`: a 5-field cron expression (in `timezone`), else an interval.
    pub fn interval_or_cron(
        s: &str,
        timezone: Option<chrono_tz::Tz>,
    ) -> std::result::Result<sources::Schedule, String> {
        if s.split_whitespace().count() == 5 {
            sources::cron(s)?;
            return Ok(sources::Schedule::Cron {
                expr: s.to_string(),
                timezone,
            });
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Ok(sources::Schedule::Every(d)),
            Ok(_) => Err(format!("{s:?}: the interval must be above zero")),
            Err(e) => Err(format!(
                "{s:?} is neither an interval ({e}; e.g. 30s, 5m) nor a 5-field cron expression"
            )),
        }
    }
}

/// Each `[repositories.NAME] wal` is `"sync"` or `"async"`: said naming the table (serde's
/// own message names neither the table nor the key).
fn wal_modes(table: &toml::Table) -> Result<()> {
    let Some(toml::Value::Table(repos)) = table.get("repositories") else {
        return Ok(());
    };
    for (name, r) in repos {
        match r.get("wal") {
            None => {}
            Some(toml::Value::String(m)) if m == "sync" || m == "async" => {}
            Some(v) => {
                return Err(Error::usage(format!(
                    "[repositories.{name}] wal = {v} is not a WAL mode: write wal = \"sync\" \
                     (the default: wal-push succeeds once the repository has each file) or \
                     wal = \"async\" (wal-push keeps each file in wal_spool; wal-copy pushes it \
                     there)"
                ))
                .into())
            }
        }
    }
    Ok(())
}

/// A duration as people write it: `90s`, `30m`, `1h30m`, `7d`, `2weeks`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        Error::usage(format!(
            "{s:?} is not a duration ({e}): write e.g. 90s, 30m, 1h30m or 7d"
        ))
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_and_resolves_relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("coffer.toml");
        std::fs::write(&p, "repository = \"/r\"\npassword_file = \"pw\"\n").unwrap();
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
    fn repositories_tables() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("coffer.toml");
        std::fs::write(
            &p,
            "[repositories.offsite]\nlocation = \"s3://b/p\"\npassword_file = \"pw\"\npassword = \"hunter2-secret\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let r = &c.repositories["offsite"];
        assert_eq!(r.location, "s3://b/p");
        assert_eq!(
            r.password_file.as_deref(),
            Some(d.path().join("pw").as_path())
        );
        assert!(!format!("{c:?}").contains("hunter2-secret"));
        std::fs::write(
            &p,
            "[repositories.offsite]\nlocation = \"/x\"\nkeep = { daily = 90, monthly = 12 }\n",
        )
        .unwrap();
        let keep = Config::load(&p).unwrap().repositories["offsite"]
            .keep
            .clone()
            .unwrap();
        assert_eq!((keep.daily, keep.monthly, keep.last), (90, 12, 0));
        for (text, says) in [
            (
                "[repositories.offsite]\nlocation = \"/x\"\nkeep = { dayly = 1 }\n",
                "dayly",
            ),
            (
                "[repositories.offsite]\nlocation = \"/x\"\nkeep = { }\n",
                "keep has no rule",
            ),
            (
                "[repositories.offsite]\nlocation = \"/x\"\nstorage = 1\n",
                "storage",
            ),
            ("[repositories.primary]\nlocation = \"/x\"\n", "top-level"),
            (
                "[repositories.offsite]\nlocation = \"\"\n",
                "location is empty",
            ),
            (
                "[repositories.\"a b\"]\nlocation = \"/x\"\n",
                "repository name",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", Config::load(&p).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn wal_mode_of_a_copy_and_its_spool() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("coffer.toml");
        let physical = "[sources.db]\ntype = \"postgres\"\nmode = \"physical\"\n\
                        copy_to = [\"offsite\", \"near\"]\n";
        let text = |offsite_wal: &str, spool: &str| {
            format!(
                "{spool}\n[repositories.offsite]\nlocation = \"/o\"\n{offsite_wal}\n\
                 [repositories.near]\nlocation = \"/n\"\n{physical}"
            )
        };
        std::fs::write(&p, text("wal = \"async\"", "wal_spool = \"spool\"")).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.repositories["offsite"].wal, WalMode::Async);
        assert_eq!(c.repositories["near"].wal, WalMode::Sync, "the default");
        assert_eq!(c.wal_copies(), ["near", "offsite"]);
        assert_eq!(c.async_wal_copies(), ["offsite"]);
        assert_eq!(
            c.wal_spool_of("offsite"),
            Some(d.path().join("spool/offsite"))
        );
        std::fs::write(&p, text("wal = \"sync\"", "")).unwrap();
        assert!(Config::load(&p).unwrap().async_wal_copies().is_empty());
        for (t, says) in [
            // Not one of the two modes.
            (
                text("wal = \"lazy\"", "wal_spool = \"/s\""),
                vec![
                    "[repositories.offsite] wal = \"lazy\" is not a WAL mode",
                    "\"async\"",
                ],
            ),
            (
                text("wal = true", "wal_spool = \"/s\""),
                vec!["[repositories.offsite] wal = true", "\"sync\"", "\"async\""],
            ),
            // Async without a spool: the error names the repository and the key.
            (
                text("wal = \"async\"", ""),
                vec!["[repositories.offsite]", "wal_spool"],
            ),
            (
                format!("{}\n[service]\nwal_copy = \"soon\"\n", text("", "")),
                vec!["[service] wal_copy", "soon"],
            ),
            (
                format!("{}\n[service]\nwal_copy = \"0s\"\n", text("", "")),
                vec!["[service] wal_copy", "above zero"],
            ),
            (
                format!("{}\n[service]\nwal_copy = \"0 25 * * *\"\n", text("", "")),
                vec!["[service] wal_copy", "cron"],
            ),
        ] {
            std::fs::write(&p, &t).unwrap();
            let e = format!("{:#}", Config::load(&p).unwrap_err());
            for w in says {
                assert!(e.contains(w), "{t}: {e}");
            }
        }
        // An async repository that no physical source archives WAL into needs no spool.
        std::fs::write(
            &p,
            "[repositories.offsite]\nlocation = \"/o\"\nwal = \"async\"\n",
        )
        .unwrap();
        assert!(Config::load(&p).unwrap().async_wal_copies().is_empty());
        for (every, want) in [
            ("30s", sources::Schedule::Every(Duration::from_secs(30))),
            (
                "*/5 * * * *",
                sources::Schedule::Cron {
                    expr: "*/5 * * * *".into(),
                    timezone: None,
                },
            ),
        ] {
            assert_eq!(ServiceConfig::interval_or_cron(every, None).unwrap(), want);
        }
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

    const STACK: &str = r#"
repository = "s3://backups/prod"
password_file = "/etc/coffer/passphrase"

[sources.db]
type = "postgres"
url = "${DATABASE_URL}"
keep = { daily = 30, weekly = 12, monthly = 12 }
rpo = "26h"

[sources.cache]
type = "redis"
url = "${REDIS_URL}"
keep = { within = "7d" }

[sources.uploads]
type = "files"
paths = ["/opt/app/uploads"]
exclude = ["*.tmp"]

[sources.secrets]
type = "files"
paths = ["/opt/app/.env"]

[sources.samba]
type = "command"
command = ["samba-tool", "domain", "backup", "offline", "--targetdir={output_dir}"]
output = "dir"
timeout = "30m"

[stack]
restore_order = ["db", "cache", "uploads", "secrets", "samba"]
before_restore = ["systemctl stop app"]
after_restore = ["systemctl start app"]
"#;

    fn env(v: &str) -> Option<String> {
        match v {
            "DATABASE_URL" => Some("postgresql://app:s3cret-pw@db:5432/app".into()),
            "REDIS_URL" => Some("redis://:r3dis-pw@cache:6379".into()),
            _ => None,
        }
    }

    #[test]
    fn the_stack_in_declared_order() {
        let c = Config::parse(STACK, Some(Path::new("/etc/coffer")), &env).unwrap();
        let names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "cache", "uploads", "secrets", "samba"]);
        let db = c.source("db").unwrap();
        let SourceKind::Postgres(p) = &db.kind else {
            panic!()
        };
        assert_eq!(
            p.url.as_deref(),
            Some("postgresql://app:s3cret-pw@db:5432/app")
        );
        assert_eq!(db.keep.as_ref().unwrap().daily, 30);
        assert_eq!(db.rpo, Some(Duration::from_secs(26 * 3600)));
        let SourceKind::Command(cmd) = &c.source("samba").unwrap().kind else {
            panic!()
        };
        assert_eq!(cmd.output, sources::CommandOutput::Dir);
        assert_eq!(cmd.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(c.stack.after_restore, ["systemctl start app"]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("r3dis-pw"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_and_unset_variables_are_named() {
        let err = |text: &str| Config::parse(text, None, &env).unwrap_err().to_string();
        let e = err("[sources.db]\ntype = \"postgres\"\nurll = \"x\"\n");
        assert!(e.contains("[sources.db]") && e.contains("urll"), "{e}");
        let e = err("[sources.db]\ntype = \"files\"\npaths = [\"/x\"]\nkeep = { dayly = 3 }\n");
        assert!(e.contains("[sources.db]") && e.contains("dayly"), "{e}");
        // An unset variable in a source fails only what uses the source.
        let c = Config::parse(
            "[sources.x]\ntype = \"redis\"\nurl = \"${NOT_SET_ANYWHERE}\"\n",
            None,
            &env,
        )
        .unwrap();
        let e = c.sources[0].resolved().unwrap_err().to_string();
        assert!(
            e.contains("sources.x.url") && e.contains("NOT_SET_ANYWHERE is not set"),
            "{e}"
        );
        let e = err("repository = \"${NOT_SET_ANYWHERE}\"\n");
        assert!(e.contains("repository") && e.contains("is not set"), "{e}");
        let e = err("repositry = \"/r\"\n");
        assert!(e.contains("repositry"), "{e}");
        let e = err("[stack]\nrestore_ordr = []\n");
        assert!(e.contains("restore_ordr"), "{e}");
        let e = err("[sources.x]\ntype = \"command\"\n");
        assert!(e.contains("command") && e.contains("shell"), "{e}");
        let e = err("[sources.x]\ntype = \"mysql\"\n");
        assert!(e.contains("unknown type"), "{e}");
        let e = err(
            "[sources.x]\ntype = \"postgres\"\nmode = \"physical\"\ndrill_url = \"postgres://h/db\"\n",
        );
        assert!(e.contains("drill_url is for mode = \"logical\""), "{e}");
        let e = err("[stack]\nrestore_order = [\"nope\"]\n");
        assert!(e.contains("nope"), "{e}");
        let e = err("[sources.x]\ntype = \"command\"\nshell = \"x\"\ntimeout = \"soon\"\n");
        assert!(e.contains("soon") && e.contains("duration"), "{e}");
    }

    #[test]
    fn schedules_service_and_alerts() {
        use sources::Schedule;
        let text = r#"
[service]
listen = "127.0.0.1:9808"
prune = "0 4 * * 0"
check = "0 5 * * *"
check_read_data_subset = "5%"
wal_verify = "*/10 * * * *"
max_parallel = 2
shutdown_grace = "2m"

[alerts]
slack_webhook = "https://hooks.slack.com/services/T0/B0/very-secret"
remind = "12h"

[sources.db]
type = "postgres"
schedule = "0 2 * * *"
timezone = "Europe/Paris"
jitter = "5m"
healthcheck_url = "https://hc-ping.com/secret-uuid"

[sources.cache]
type = "redis"
every = "15m"
"#;
        let c = Config::parse(text, None, &env).unwrap();
        assert_eq!(
            c.source("db").unwrap().schedule,
            Some(Schedule::Cron {
                expr: "0 2 * * *".into(),
                timezone: Some(chrono_tz::Europe::Paris)
            })
        );
        assert_eq!(
            c.source("db").unwrap().jitter,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            c.source("cache").unwrap().schedule,
            Some(Schedule::Every(Duration::from_secs(900)))
        );
        assert_eq!(c.service.max_parallel, Some(2));
        assert_eq!(c.alerts.remind, Some(Duration::from_secs(12 * 3600)));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("secret-uuid"),
            "{shown}"
        );
        let err = |text: &str| Config::parse(text, None, &env).unwrap_err().to_string();
        for (text, needle) in [
            ("[sources.x]\ntype = \"redis\"\nschedule = \"0 2 * *\"\n", "5-field"),
            ("[sources.x]\ntype = \"redis\"\nschedule = \"0 25 * * *\"\n", "not a cron expression"),
            ("[sources.x]\ntype = \"redis\"\nschedule = \"0 2 * * *\"\nevery = \"1h\"\n", "not both"),
            ("[sources.x]\ntype = \"redis\"\nschedule = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"\n", "IANA"),
            ("[service]\nprune = \"weekly\"\n", "[service] prune"),
            ("[service]\nlisten = \"x\"\nlisn = 1\n", "lisn"),
            ("[alerts]\nslack = \"x\"\n", "slack"),
        ] {
            let e = err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
