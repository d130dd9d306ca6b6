//! `[sources.NAME]` tables and the `[stack]` table: the application stack that `coffer
//! backup` (with no paths) and `coffer restore --stack` work on.
//!
//! Each source has a `type` (`postgres`, `redis`, `files`, `command`), the options of its
//! command-line counterpart, and the keys every source shares: `tags`, `keep` (the forget
//! rules), `before`/`after` hooks and `rpo`. Unknown keys are errors that name the key and
//! the table.

use crate::error::Error;
use crate::repo::forget::{Policy, Within};
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One declared source.
#[derive(Clone)]
pub struct SourceConfig {
    /// The table's name (`[sources.db]` → `db`): recorded in each snapshot as `source`.
    pub name: String,
    pub kind: SourceKind,
    pub tags: Vec<String>,
    /// Forget rules applied to this source's snapshots after each successful backup.
    pub keep: Option<Policy>,
    /// Shell command lines run in order before the backup; a failing one fails the source.
    pub before: Vec<String>,
    /// Shell command lines run in order after the backup, whatever happened.
    pub after: Vec<String>,
    /// The longest time without a successful backup before the source is in breach.
    pub rpo: Option<Duration>,
    /// When `coffer run` backs it up: a 5-field cron expression (`schedule`, in `timezone`,
    /// default local time) or an interval (`every`), with up to `jitter` of random delay.
    pub schedule: Option<Schedule>,
    pub jitter: Option<Duration>,
    /// A healthchecks.io-style URL `coffer run` pings at each backup's start, success and
    /// failure (may hold a secret token: never shown).
    pub healthcheck_url: Option<String>,
    /// How `coffer drill` proves the source's backups restore (the `drill` table).
    pub drill: Option<Drill>,
    /// A source whose last successful drill is older than this is flagged by `status`.
    pub drill_max_age: Option<Duration>,
    /// `[repositories.NAME]`s that each new snapshot of the source is copied to, after its
    /// backup (`coffer copy`).
    pub copy_to: Vec<String>,
    /// Why the source's `${VAR}`s could not be expanded (a variable is not set): commands
    /// that back it up or restore it fail with this; the others (snapshots, status…)
    /// work without the variable.
    pub unresolved: Option<String>,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("tags", &self.tags)
            .field("keep", &self.keep)
            .field("before", &self.before)
            .field("after", &self.after)
            .field("rpo", &self.rpo)
            .field("schedule", &self.schedule)
            .field("jitter", &self.jitter)
            .field(
                "healthcheck_url",
                &crate::redact::Redacted(&self.healthcheck_url),
            )
            .field("drill", &self.drill)
            .field("drill_max_age", &self.drill_max_age)
            .field("copy_to", &self.copy_to)
            .field("unresolved", &self.unresolved)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub enum SourceKind {
    Postgres(PostgresSource),
    Redis(RedisSource),
    Files(FilesSource),
    Command(CommandSource),
}

impl SourceKind {
    /// The `type` key's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::Postgres(p) if p.mode == PgMode::Physical => "postgres (physical)",
            SourceKind::Postgres(_) => "postgres",
            SourceKind::Redis(_) => "redis",
            SourceKind::Files(_) => "files",
            SourceKind::Command(_) => "command",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgMode {
    /// pg_dump (`backup --postgres`).
    #[default]
    Logical,
    /// A base backup (`backup --postgres --physical`), for PITR with the WAL archive.
    Physical,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// The connection URL (may hold a password: never shown); DATABASE_URL and the libpq
    /// variables when unset.
    pub url: Option<String>,
    #[serde(default)]
    pub mode: PgMode,
    /// Dump these databases (with the roles and tablespaces) instead of the URL's one.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Dump every database, with the roles and tablespaces.
    #[serde(default)]
    pub all_databases: bool,
    /// pg_dump processes per database (`--dump-jobs`, default 2).
    pub dump_jobs: Option<u32>,
    /// Physical: the data directory (the server's data_directory setting when unset); also
    /// where `restore --stack` lays the base backup out.
    pub pgdata: Option<PathBuf>,
    /// Physical: how long to wait for the backup's WAL to be archived (default 5m).
    #[serde(default, with = "opt_duration")]
    pub archive_timeout: Option<Duration>,
    /// Where `restore --stack` restores a logical dump (default: `url`).
    pub restore_url: Option<String>,
    /// Parallel pg_restore jobs for `restore --stack` (default 1).
    pub restore_jobs: Option<u32>,
    /// Logical: where `coffer drill` restores, into scratch databases it creates and drops,
    /// instead of a scratch cluster of its own (may hold a password: never shown).
    pub drill_url: Option<String>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field("mode", &self.mode)
            .field("databases", &self.databases)
            .field("all_databases", &self.all_databases)
            .field("dump_jobs", &self.dump_jobs)
            .field("pgdata", &self.pgdata)
            .field("archive_timeout", &self.archive_timeout)
            .field(
                "restore_url",
                &self.restore_url.as_deref().map(crate::redact::url),
            )
            .field("restore_jobs", &self.restore_jobs)
            .field(
                "drill_url",
                &self.drill_url.as_deref().map(crate::redact::url),
            )
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSource {
    /// redis://, rediss:// or a socket path (may hold a password: never shown); REDIS_URL,
    /// then 127.0.0.1:6379 when unset.
    pub url: Option<String>,
    /// `sync` (default) or `bgsave`.
    pub method: Option<String>,
    pub password_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field("method", &self.method)
            .field("password_file", &self.password_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSource {
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Do not cross into other file systems below the paths.
    #[serde(default)]
    pub one_file_system: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandOutput {
    /// Standard output is the backup.
    #[default]
    Stdout,
    /// The command writes into `{output_dir}`, and its contents are the backup.
    Dir,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    /// The program and its arguments, run without a shell (`{output_dir}` is replaced).
    pub command: Option<Vec<String>>,
    /// A command line for `sh -c`, instead of `command`.
    pub shell: Option<String>,
    #[serde(default)]
    pub output: CommandOutput,
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Exit statuses that mean success (default `[0]`).
    #[serde(default)]
    pub success_codes: Vec<i32>,
    /// Less output than this is a failure (default 1: an empty output fails).
    pub min_bytes: Option<u64>,
    /// How `restore --stack` loads the output: a program that reads it on standard input
    /// (stdout output) or finds it in `{output_dir}` (dir output).
    pub restore: Option<Vec<String>>,
    /// The same as a command line for `sh -c`.
    pub restore_shell: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub restore_timeout: Option<Duration>,
    /// Where `restore --stack` puts the output when there is no restore command (default:
    /// `[stack] restore_dir`).
    pub restore_dir: Option<PathBuf>,
    /// How `coffer drill` proves the output: a program that reads it on standard input
    /// (stdout output) or finds it in `{output_dir}` (dir output), and must exit 0.
    pub drill_command: Option<Vec<String>>,
    /// The same as a command line for `sh -c`.
    pub drill_shell: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub drill_timeout: Option<Duration>,
}

/// A source's `drill = { … }` table: when `coffer run` drills it and what the drill checks
/// beyond the restore itself.
#[derive(Clone, Debug, Default)]
pub struct Drill {
    pub schedule: Option<Schedule>,
    /// PostgreSQL: SQL queries that must each return true. Files: paths (as backed up) that
    /// must exist in the restored tree. Redis: `COMMAND ARGS => REPLY`.
    pub checks: Vec<String>,
    /// PostgreSQL: the fewest tables the restored database may have.
    pub min_tables: Option<u64>,
    /// PostgreSQL: `bt_index_check(index, heapallindexed => true)` on every B-tree index.
    pub amcheck: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillKeys {
    schedule: Option<String>,
    #[serde(default, with = "opt_duration")]
    every: Option<Duration>,
    timezone: Option<String>,
    #[serde(default)]
    checks: Vec<String>,
    min_tables: Option<u64>,
    #[serde(default)]
    amcheck: bool,
}

/// `[stack]`: how `restore --stack` brings the whole stack back.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Restore order by source name; sources not named follow in declared order.
    #[serde(default)]
    pub restore_order: Vec<String>,
    /// Shell command lines run before anything is restored (e.g. stop the application).
    #[serde(default)]
    pub before_restore: Vec<String>,
    /// Shell command lines run after the restore, also when it failed.
    #[serde(default)]
    pub after_restore: Vec<String>,
    /// Where command outputs without a restore command are put.
    pub restore_dir: Option<PathBuf>,
}

/// The keys every source has besides its type's own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    #[serde(default)]
    tags: Vec<String>,
    keep: Option<Keep>,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default, with = "opt_duration")]
    rpo: Option<Duration>,
    schedule: Option<String>,
    #[serde(default, with = "opt_duration")]
    every: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    jitter: Option<Duration>,
    timezone: Option<String>,
    healthcheck_url: Option<String>,
    drill: Option<DrillKeys>,
    #[serde(default, with = "opt_duration")]
    drill_max_age: Option<Duration>,
    #[serde(default)]
    copy_to: Vec<String>,
}

const COMMON_KEYS: &[&str] = &[
    "tags",
    "keep",
    "before",
    "after",
    "rpo",
    "schedule",
    "every",
    "jitter",
    "timezone",
    "healthcheck_url",
    "drill",
    "drill_max_age",
    "copy_to",
];

/// When a job runs: a cron expression in a time zone, or an interval.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `schedule = "0 2 * * *"` (minute hour day-of-month month day-of-week), in `timezone`
    /// (an IANA name such as `Europe/Paris`; local time when none).
    Cron {
        expr: String,
        timezone: Option<chrono_tz::Tz>,
    },
    /// `every = "15m"`.
    Every(Duration),
}

impl Schedule {
    /// From a source's (or `[service]` job's) keys; None when neither is given.
    pub fn from_keys(
        schedule: Option<&str>,
        every: Option<Duration>,
        timezone: Option<&str>,
    ) -> Result<Option<Schedule>, String> {
        let timezone = match timezone {
            Some(t) => Some(t.parse::<chrono_tz::Tz>().map_err(|_| {
                format!(
                    "timezone {t:?} is not an IANA time zone name (e.g. \"Europe/Paris\", \"UTC\")"
                )
            })?),
            None => None,
        };
        match (schedule, every) {
            (Some(_), Some(_)) => {
                Err("give schedule (a cron expression) or every (an interval), not both".into())
            }
            (Some(expr), None) => {
                cron(expr)?;
                Ok(Some(Schedule::Cron {
                    expr: expr.to_string(),
                    timezone,
                }))
            }
            (None, Some(_)) if timezone.is_some() => {
                Err("timezone is for schedule (a cron expression), not every".into())
            }
            (None, Some(d)) if d.is_zero() => Err("every must be more than 0s".into()),
            (None, Some(d)) => Ok(Some(Schedule::Every(d))),
            (None, None) if timezone.is_some() => Err("timezone needs a schedule".into()),
            (None, None) => Ok(None),
        }
    }
}

/// A 5-field cron expression, parsed (`0 2 * * *`, `*/15 * * * *`, `0 4 * * 0`).
pub fn cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 5 {
        return Err(format!(
            "schedule {expr:?} is not a 5-field cron expression (minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\")"
        ));
    }
    croner::Cron::new(expr)
        .parse()
        .map_err(|e| format!("schedule {expr:?} is not a cron expression: {e}"))
}

/// A `keep` table, read as its policy (a `[repositories.NAME]`'s).
pub(crate) fn keep_policy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Policy>, D::Error> {
    Option::<Keep>::deserialize(d)?
        .map(Keep::policy)
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// `keep = { daily = 30, weekly = 12, within = "7d" }`: forget's `--keep-*` options.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keep {
    last: Option<i64>,
    hourly: Option<i64>,
    daily: Option<i64>,
    weekly: Option<i64>,
    monthly: Option<i64>,
    yearly: Option<i64>,
    within: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl Keep {
    fn policy(self) -> Result<Policy, String> {
        let within = match &self.within {
            Some(w) => Some(
                w.parse::<Within>()
                    .map_err(|e| format!("keep.within: {e}"))?,
            ),
            None => None,
        };
        let p = Policy {
            last: self.last.unwrap_or(0),
            hourly: self.hourly.unwrap_or(0),
            daily: self.daily.unwrap_or(0),
            weekly: self.weekly.unwrap_or(0),
            monthly: self.monthly.unwrap_or(0),
            yearly: self.yearly.unwrap_or(0),
            within,
            keep_tags: self.tags,
        };
        if p.is_empty() {
            return Err(
                "keep has no rule: give last, hourly, daily, weekly, monthly, yearly or within"
                    .into(),
            );
        }
        Ok(p)
    }
}

/// A source name: what `--source` and snapshots use, so plain.
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.')
}

/// Parse the `[sources]` table (in declared order); relative paths are taken relative to
/// `dir`, the config file's directory.
pub fn parse_sources(
    sources: toml::Table,
    dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SourceConfig>> {
    let mut out = Vec::new();
    for (name, mut value) in sources {
        let at = format!("[sources.{name}]");
        let bad = |e: String| -> anyhow::Error { Error::usage(format!("{at}: {e}")).into() };
        if !valid_name(&name) {
            return Err(bad(
                "a source name is letters, digits, '-', '_' and '.' (at most 64, not starting with '.')".into(),
            ));
        }
        let mut unresolved = None;
        if let toml::Value::Table(t) = &mut value {
            let mut expanded = t.clone();
            match super::expand::expand_table(&mut expanded, &format!("sources.{name}"), env) {
                Ok(()) => *t = expanded,
                Err(e) => unresolved = Some(e.to_string()),
            }
        }
        let toml::Value::Table(mut table) = value else {
            return Err(bad("must be a table".into()));
        };
        let ty = match table.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(_) => return Err(bad("type must be a string".into())),
            None => {
                return Err(bad(
                    "missing key `type` (postgres, redis, files or command)".into(),
                ))
            }
        };
        let mut common = toml::Table::new();
        for k in COMMON_KEYS {
            if let Some(v) = table.remove(*k) {
                common.insert(k.to_string(), v);
            }
        }
        let common: Common = toml::Value::Table(common)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        let rest = toml::Value::Table(table);
        let de = |e: toml::de::Error| {
            let m = e.message().to_string();
            // serde lists the type's own keys; the shared ones are valid too.
            bad(if m.starts_with("unknown field") {
                format!("{m} (or one every source has: {})", COMMON_KEYS.join(", "))
            } else {
                m
            })
        };
        let kind = match ty.as_str() {
            "postgres" => SourceKind::Postgres(rest.try_into().map_err(de)?),
            "redis" => SourceKind::Redis(rest.try_into().map_err(de)?),
            "files" => SourceKind::Files(rest.try_into().map_err(de)?),
            "command" => SourceKind::Command(rest.try_into().map_err(de)?),
            other => {
                return Err(bad(format!(
                    "unknown type {other:?}: use postgres, redis, files or command"
                )))
            }
        };
        let mut s = SourceConfig {
            name,
            kind,
            tags: common.tags,
            keep: common.keep.map(Keep::policy).transpose().map_err(bad)?,
            before: common.before,
            after: common.after,
            rpo: common.rpo,
            schedule: Schedule::from_keys(
                common.schedule.as_deref(),
                common.every,
                common.timezone.as_deref(),
            )
            .map_err(bad)?,
            jitter: common.jitter,
            healthcheck_url: common.healthcheck_url,
            drill: common
                .drill
                .map(|d| -> Result<Drill, String> {
                    Ok(Drill {
                        schedule: Schedule::from_keys(
                            d.schedule.as_deref(),
                            d.every,
                            d.timezone.as_deref(),
                        )
                        .map_err(|e| format!("drill: {e}"))?,
                        checks: d.checks,
                        min_tables: d.min_tables,
                        amcheck: d.amcheck,
                    })
                })
                .transpose()
                .map_err(bad)?,
            drill_max_age: common.drill_max_age,
            copy_to: common.copy_to,
            unresolved,
        };
        s.check().map_err(bad)?;
        if let Some(dir) = dir {
            s.resolve_paths(dir);
        }
        out.push(s);
    }
    Ok(out)
}

impl SourceConfig {
    /// Fail (exit 2) when a `${VAR}` of this source is not set.
    pub fn resolved(&self) -> Result<&SourceConfig> {
        match &self.unresolved {
            Some(e) => Err(Error::usage(format!("source {}: {e}", self.name)).into()),
            None => Ok(self),
        }
    }

    /// What serde cannot say: required keys that depend on others.
    fn check(&self) -> Result<(), String> {
        match &self.kind {
            SourceKind::Postgres(p) => {
                if p.mode == PgMode::Physical && (p.all_databases || !p.databases.is_empty()) {
                    return Err("databases and all_databases are for mode = \"logical\"; a physical backup holds the whole cluster".into());
                }
                if p.all_databases && !p.databases.is_empty() {
                    return Err("give databases or all_databases, not both".into());
                }
                if p.mode == PgMode::Logical && (p.pgdata.is_some() || p.archive_timeout.is_some())
                {
                    return Err("pgdata and archive_timeout are for mode = \"physical\"".into());
                }
                if p.mode == PgMode::Physical && p.drill_url.is_some() {
                    return Err("drill_url is for mode = \"logical\": a physical drill recovers the base backup in a scratch data directory".into());
                }
                if let Some(j) = p.dump_jobs.filter(|j| !(1..=32).contains(j)) {
                    return Err(format!("dump_jobs = {j}: use 1 to 32"));
                }
                if let Some(j) = p.restore_jobs.filter(|j| !(1..=64).contains(j)) {
                    return Err(format!("restore_jobs = {j}: use 1 to 64"));
                }
            }
            SourceKind::Redis(r) => {
                if let Some(m) = r
                    .method
                    .as_deref()
                    .filter(|m| !["sync", "bgsave"].contains(m))
                {
                    return Err(format!("method = {m:?}: use \"sync\" or \"bgsave\""));
                }
                if r.tls_cert.is_some() != r.tls_key.is_some() {
                    return Err("tls_cert and tls_key go together".into());
                }
            }
            SourceKind::Files(f) => {
                if f.paths.is_empty() {
                    return Err("paths is empty: name the files and directories to back up".into());
                }
            }
            SourceKind::Command(c) => {
                match (&c.command, &c.shell) {
                    (Some(a), None) if a.is_empty() || a[0].is_empty() => {
                        return Err("command is empty: give the program and its arguments".into())
                    }
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => {
                        return Err(
                            "give command (an argument list, run without a shell) or shell (a command line), exactly one"
                                .into(),
                        )
                    }
                }
                if c.drill_command.is_some() && c.drill_shell.is_some() {
                    return Err("give drill_command or drill_shell, not both".into());
                }
                if c.restore.is_some() && c.restore_shell.is_some() {
                    return Err("give restore or restore_shell, not both".into());
                }
                if c.restore.as_ref().is_some_and(|a| a.is_empty()) {
                    return Err("restore is empty: give the program and its arguments".into());
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        match &mut self.kind {
            SourceKind::Postgres(p) => p.pgdata.iter_mut().for_each(fix),
            SourceKind::Redis(r) => {
                for p in [
                    &mut r.password_file,
                    &mut r.tls_ca,
                    &mut r.tls_cert,
                    &mut r.tls_key,
                ] {
                    p.iter_mut().for_each(fix);
                }
            }
            SourceKind::Files(f) => f.paths.iter_mut().for_each(fix),
            SourceKind::Command(c) => c.restore_dir.iter_mut().for_each(fix),
        }
    }
}

/// `timeout = "30m"`-style durations (see [`super::parse_duration`]).
pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
