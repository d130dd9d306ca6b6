//! `backup` of the declared stack: every `[sources.NAME]` (or those picked), each into its
//! own snapshot, then each source's `keep` rules.
//!
//! Each source runs in declared order: its `before` hooks (a failing one fails the source,
//! with no snapshot), the backup (recording the source's name and the run's id in the
//! snapshot), its `after` hooks (always, with `COFFER_SOURCE`, `COFFER_STATUS`,
//! `COFFER_SNAPSHOT` and `COFFER_ERROR`), a run record (success or failure, see
//! [`crate::repo::runs`]), and, after a success, forget with its `keep` rules on that
//! source's snapshots (WAL retention follows the kept base backups). A failing source does
//! not stop the others; [`StackReport::verdict`] fails (exit 8) when any failed.

use super::backup::{backup, Source};
use super::forget::{forget, ForgetOptions};
use super::mib;
use crate::config::sources::{CommandOutput, CommandSource, FilesSource, PgMode, RedisSource};
use crate::config::{Config, RedisSettings, SourceConfig, SourceKind};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::id::Id;
use crate::repo::runs::{self, RunRecord, RunStatus};
use crate::repo::Repository;
use crate::sources::command::{CommandOptions, CommandRestore, Output, Program};
use crate::sources::postgres::DumpSplit;
use crate::sources::redis::conn::ConnOptions;
use crate::sources::redis::{Method, RedisOptions};
use crate::sources::CommonOptions;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct StackOptions {
    /// The sources to back up, by name (all, in declared order, when empty).
    pub sources: Vec<String>,
    /// Apply each source's `keep` rules after its backup.
    pub forget: bool,
    /// Tags, time and host for every snapshot (the sources' own tags are added).
    pub common: CommonOptions,
}

/// What one `coffer backup` of the stack did (`backup --json`).
#[derive(Serialize)]
pub struct StackReport {
    /// The id every snapshot of this run records as `run`.
    pub run: String,
    pub sources: Vec<SourceRun>,
    pub failed: usize,
    pub duration_secs: f64,
}

/// One source's run.
#[derive(Serialize)]
pub struct SourceRun {
    pub source: String,
    #[serde(rename = "type")]
    pub source_type: String,
    /// `ok` or `failed`.
    pub status: RunStatus,
    pub duration_secs: f64,
    /// Bytes of the files and streams read.
    pub bytes_read: u64,
    /// Plaintext bytes new to the repository.
    pub bytes_added: u64,
    /// Bytes written to storage for them (compressed and sealed).
    pub bytes_stored: u64,
    pub snapshot: Option<String>,
    /// The snapshot's time.
    #[serde(skip)]
    pub snapshot_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub error: Option<String>,
    /// Snapshots of this source removed by its `keep` rules.
    pub forgotten: Vec<String>,
    /// The `copy_to` repositories the new snapshot was copied to.
    pub copied_to: Vec<String>,
}

/// Which sources `names` picks (all when empty), in declared order; an unknown name is a
/// usage error that lists the declared ones.
pub fn pick<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a SourceConfig>> {
    if config.sources.is_empty() {
        return Err(Error::usage(
            "the config file declares no sources: add [sources.NAME] tables (see README, \
             \"The stack\"), or use --all to take them from DATABASE_URL, SUPABASE_DB_URL, \
             REDIS_URL and UPLOADS_DIR",
        )
        .into());
    }
    for n in names {
        if config.source(n).is_none() {
            let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::usage(format!(
                "no source {n:?} in the config file; it declares: {}",
                known.join(", ")
            ))
            .into());
        }
    }
    config
        .sources
        .iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .map(SourceConfig::resolved)
        .collect()
}

/// Back up the sources `opts` picks from `config`. `progress_for` gives each source's
/// progress display.
pub fn backup_stack(
    repo: &Arc<Repository>,
    config: &Config,
    opts: &StackOptions,
    progress_for: &dyn Fn(&str) -> Progress,
) -> Result<StackReport> {
    let picked = pick(config, &opts.sources)?;
    let started = Instant::now();
    let run = runs::new_run_id();
    let mut out = Vec::new();
    let mut copies = Destinations::default();
    for src in picked {
        let p = progress_for(&format!("{} ({})", src.name, src.kind.type_name()));
        let r = backup_one(repo, config, src, &run, opts, &mut copies, &p);
        p.finish();
        out.push(r);
    }
    match runs::trim_if_grown(repo, runs::histories(config.sources.len())) {
        Ok(_) => {}
        Err(e) => repo
            .events()
            .warn(&format!("could not trim the run history: {e:#}")),
    }
    Ok(StackReport {
        run,
        failed: out.iter().filter(|r| r.status == RunStatus::Failed).count(),
        sources: out,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// Apply `policy` to the snapshots of `src` in `repo` (grouped by host and source); the ids
/// removed.
fn forget_source(
    repo: &Arc<Repository>,
    src: &SourceConfig,
    policy: &crate::repo::forget::Policy,
    progress: &Progress,
) -> Result<Vec<String>> {
    let f = ForgetOptions {
        snapshots: Vec::new(),
        policy: policy.clone(),
        tags: Vec::new(),
        sources: vec![src.name.clone()],
        group_by: vec!["host".into(), "source".into()],
        dry_run: false,
        prune: false,
    };
    Ok(forget(repo, &f, &|_| {}, progress)?.removed)
}

/// The `copy_to` repositories of one stack run, each opened once.
#[derive(Default)]
struct Destinations(std::collections::HashMap<String, Arc<Repository>>);

impl Destinations {
    fn open(&mut self, config: &Config, name: &str, events: &Progress) -> Result<Arc<Repository>> {
        if let Some(r) = self.0.get(name) {
            return Ok(r.clone());
        }
        let r = super::access::open_named(config, name, events)?;
        self.0.insert(name.to_string(), r.clone());
        Ok(r)
    }
}

/// Copy snapshot `id` of source `src` to each of its `copy_to` repositories, with the ones
/// an earlier copy missed (`catch_up`). Returns the names it was copied to and the errors,
/// one per repository that failed.
fn copy_out(
    repo: &Arc<Repository>,
    config: &Config,
    src: &SourceConfig,
    id: &str,
    forget_after: bool,
    copies: &mut Destinations,
    progress: &Progress,
) -> (Vec<String>, Vec<String>) {
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    for name in &src.copy_to {
        progress.set_message(format!("copying to {name}"));
        let r = copies.open(config, name, progress).and_then(|to| {
            let opts = super::copy::CopyOptions {
                snapshots: vec![id.to_string()],
                sources: Vec::new(),
                catch_up: true,
            };
            super::copy::copy(repo, &to, (super::access::PRIMARY, name), &opts, progress)
        });
        // The destination's own retention, over this source's copies there.
        let r = r.and_then(
            |_| match config.repositories.get(name).and_then(|t| t.keep.as_ref()) {
                Some(policy) if forget_after => {
                    let to = copies.open(config, name, progress)?;
                    forget_source(&to, src, policy, progress).map(|_| ())
                }
                _ => Ok(()),
            },
        );
        match r {
            Ok(()) => done.push(name.clone()),
            Err(e) => {
                let e = format!("copy to {name}: {e:#}");
                progress.warn(&format!("source {}: {e}", src.name));
                errors.push(e);
            }
        }
    }
    (done, errors)
}

fn backup_one(
    repo: &Arc<Repository>,
    config: &Config,
    src: &SourceConfig,
    run: &str,
    opts: &StackOptions,
    copies: &mut Destinations,
    progress: &Progress,
) -> SourceRun {
    let t0 = Instant::now();
    let started = chrono::Local::now().fixed_offset();
    let env = |status: &str, snapshot: &str, error: &str| {
        vec![
            ("COFFER_SOURCE", src.name.clone()),
            ("COFFER_STATUS", status.to_string()),
            ("COFFER_SNAPSHOT", snapshot.to_string()),
            ("COFFER_ERROR", error.to_string()),
            ("COFFER_RUN", run.to_string()),
        ]
    };
    let mut common = opts.common.clone();
    common.tags.extend(src.tags.iter().cloned());
    common.source = Some(src.name.clone());
    common.run = Some(run.to_string());
    let result = super::hooks::run(
        &format!("before hook of source {}", src.name),
        &src.before,
        &env("running", "", ""),
        ErrorKind::Source,
        progress,
    )
    .and_then(|()| source_of(config, src))
    .and_then(|source| backup(repo, source, common, progress));
    let (snapshot, error) = match &result {
        Ok(r) => (Some(r.id.clone()), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let mut error = error;
    if let Err(e) = super::hooks::run(
        &format!("after hook of source {}", src.name),
        &src.after,
        &env(
            if error.is_none() { "ok" } else { "failed" },
            snapshot.as_deref().unwrap_or(""),
            error.as_deref().unwrap_or(""),
        ),
        ErrorKind::Source,
        progress,
    ) {
        // The snapshot (if any) stands; the source still counts as failed.
        let e = format!("{e:#}");
        error = Some(match error {
            Some(first) => format!("{first}; {e}"),
            None => e,
        });
    }
    // The snapshot stands whatever its copies do; a copy that fails fails the source, as a
    // failing after hook does.
    let copied_to = match &snapshot {
        Some(id) if !src.copy_to.is_empty() => {
            let (done, errors) = copy_out(repo, config, src, id, opts.forget, copies, progress);
            for e in errors {
                error = Some(match error {
                    Some(first) => format!("{first}; {e}"),
                    None => e,
                });
            }
            done
        }
        _ => Vec::new(),
    };
    let (bytes_read, bytes_added, bytes_stored) = match &result {
        Ok(r) => (r.size, r.summary.bytes_added, r.summary.bytes_stored),
        Err(_) => (0, 0, 0),
    };
    let status = if error.is_none() {
        RunStatus::Ok
    } else {
        RunStatus::Failed
    };
    let record = RunRecord {
        id: Id::default(),
        run: run.to_string(),
        job: "backup".into(),
        source: src.name.clone(),
        source_type: src.kind.type_name().to_string(),
        host: opts
            .common
            .hostname
            .clone()
            .unwrap_or_else(crate::repo::hostname),
        started,
        finished: chrono::Local::now().fixed_offset(),
        status,
        error: error.clone(),
        bytes_read,
        bytes_added,
        snapshot: snapshot.clone(),
        drill: None,
        repositories: Vec::new(),
    };
    if let Err(e) = runs::save(repo, &record) {
        progress.warn(&format!(
            "source {}: could not record the run in the history: {e:#}",
            src.name
        ));
    }
    let mut forgotten = Vec::new();
    if let (true, Some(policy), Ok(_)) = (opts.forget, &src.keep, &result) {
        match forget_source(repo, src, policy, progress) {
            Ok(removed) => forgotten = removed,
            Err(e) => {
                let e = format!("keep rules of source {}: {e:#}", src.name);
                progress.warn(&e);
                error.get_or_insert(e);
            }
        }
    }
    SourceRun {
        source: src.name.clone(),
        source_type: src.kind.type_name().to_string(),
        status: if error.is_none() {
            RunStatus::Ok
        } else {
            RunStatus::Failed
        },
        duration_secs: t0.elapsed().as_secs_f64(),
        bytes_read,
        bytes_added,
        bytes_stored,
        snapshot,
        snapshot_time: result.as_ref().ok().map(|r| r.snapshot.time),
        error,
        forgotten,
        copied_to,
    }
}

/// The Redis connection settings of a source: its own, else the `[redis]` table's.
pub fn redis_settings(r: &RedisSource, global: &RedisSettings) -> RedisSettings {
    RedisSettings {
        password_file: r.password_file.clone().or(global.password_file.clone()),
        tls_ca: r.tls_ca.clone().or(global.tls_ca.clone()),
        tls_cert: r.tls_cert.clone().or(global.tls_cert.clone()),
        tls_key: r.tls_key.clone().or(global.tls_key.clone()),
    }
}

/// The backup a declared source describes.
fn source_of<'a>(config: &Config, src: &SourceConfig) -> Result<Source<'a>> {
    Ok(match &src.kind {
        SourceKind::Postgres(p) if p.mode == PgMode::Physical => Source::Physical {
            conn: p.url.clone(),
            pgdata: p.pgdata.clone(),
            archive_timeout: p.archive_timeout.unwrap_or(Duration::from_secs(300)),
        },
        SourceKind::Postgres(p) => Source::Postgres {
            conn: p.url.clone(),
            all_databases: p.all_databases,
            databases: p.databases.clone(),
            split: DumpSplit {
                jobs: p.dump_jobs.unwrap_or(2) as usize,
                ..DumpSplit::default()
            },
        },
        SourceKind::Redis(r) => Source::Redis(RedisOptions {
            url: r.url.clone(),
            method: Method::parse(r.method.as_deref().unwrap_or("sync"))?,
            conn: ConnOptions::from_settings(&redis_settings(r, &config.redis))?,
            common: CommonOptions::default(),
        }),
        SourceKind::Files(FilesSource {
            paths,
            exclude,
            one_file_system,
        }) => Source::Files {
            paths: paths.clone(),
            excludes: exclude.clone(),
            one_file_system: *one_file_system,
        },
        SourceKind::Command(c) => Source::Command(command_options(&src.name, c)?),
    })
}

/// The command source a `[sources.NAME]` table of type `command` describes.
pub fn command_options(name: &str, c: &CommandSource) -> Result<CommandOptions> {
    let program = match (&c.command, &c.shell) {
        (Some(argv), None) => Program::Argv(argv.clone()),
        (None, Some(line)) => Program::Shell(line.clone()),
        _ => {
            let msg = format!(
                "source {name}: give command (an argument list) or shell (a command line), \
                 exactly one"
            );
            return Err(Error::usage(msg).into());
        }
    };
    let mut o = CommandOptions::new(name, program);
    o.output = match c.output {
        CommandOutput::Stdout => Output::Stdout,
        CommandOutput::Dir => Output::Dir,
    };
    o.timeout = c.timeout;
    o.success_codes = c.success_codes.clone();
    o.min_bytes = c.min_bytes.unwrap_or(1);
    Ok(o)
}

/// How `restore --stack` brings back the output of a `[sources.NAME]` table of type
/// `command` (for [`restore_command_output`](crate::sources::command::restore_command_output)):
/// through its `restore` (or `restore_shell`) command, else into its `restore_dir`, else into
/// `stack_restore_dir` (`[stack] restore_dir`).
pub fn command_restore(
    name: &str,
    c: &CommandSource,
    stack_restore_dir: Option<&std::path::Path>,
) -> Result<CommandRestore> {
    let program = match (&c.restore, &c.restore_shell) {
        (Some(argv), None) => Some(Program::Argv(argv.clone())),
        (None, Some(line)) => Some(Program::Shell(line.clone())),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(Error::usage(format!(
                "source {name}: give restore or restore_shell, not both"
            ))
            .into())
        }
    };
    if let Some(program) = program {
        return Ok(CommandRestore::Run {
            program,
            timeout: c.restore_timeout,
        });
    }
    match c.restore_dir.as_deref().or(stack_restore_dir) {
        Some(dir) => Ok(CommandRestore::Dir(dir.to_path_buf())),
        None => Err(Error::usage(format!(
            "source {name}: its output has nowhere to go: give restore (a command that loads it), \
             restore_dir, or [stack] restore_dir"
        ))
        .into()),
    }
}

/// `backup --all` without declared sources: the stack the seeds' environment variables
/// describe. Returns the sources and what was found, for the user.
pub fn from_environment(env: &dyn Fn(&str) -> Option<String>) -> (Vec<SourceConfig>, Vec<String>) {
    use crate::config::sources::PostgresSource;
    let mut out = Vec::new();
    let mut found = Vec::new();
    let source = |name: &str, kind| SourceConfig {
        name: name.into(),
        kind,
        tags: Vec::new(),
        keep: None,
        before: Vec::new(),
        after: Vec::new(),
        rpo: None,
        schedule: None,
        jitter: None,
        healthcheck_url: None,
        drill: None,
        drill_max_age: None,
        copy_to: Vec::new(),
        unresolved: None,
    };
    let pg = |url: String| {
        SourceKind::Postgres(PostgresSource {
            url: Some(url),
            mode: PgMode::Logical,
            databases: Vec::new(),
            all_databases: false,
            dump_jobs: None,
            pgdata: None,
            archive_timeout: None,
            restore_url: None,
            restore_jobs: None,
            drill_url: None,
        })
    };
    let get = |v: &str| env(v).filter(|s| !s.trim().is_empty());
    if let Some(u) = get("DATABASE_URL") {
        found.push("db (postgres, from DATABASE_URL)".to_string());
        out.push(source("db", pg(u)));
    }
    if let Some(u) = get("SUPABASE_DB_URL") {
        found.push("supabase (postgres, from SUPABASE_DB_URL)".to_string());
        out.push(source("supabase", pg(u)));
    }
    if let Some(u) = get("REDIS_URL") {
        found.push("redis (redis, from REDIS_URL)".to_string());
        out.push(source(
            "redis",
            SourceKind::Redis(RedisSource {
                url: Some(u),
                method: None,
                password_file: None,
                tls_ca: None,
                tls_cert: None,
                tls_key: None,
            }),
        ));
    }
    if let Some(d) = get("UPLOADS_DIR") {
        found.push(format!("uploads (files, {d} from UPLOADS_DIR)"));
        out.push(source(
            "uploads",
            SourceKind::Files(FilesSource {
                paths: vec![PathBuf::from(d)],
                exclude: Vec::new(),
                one_file_system: false,
            }),
        ));
    }
    (out, found)
}

impl StackReport {
    /// Exit 8 when a source failed.
    pub fn verdict(&self) -> Result<()> {
        if self.failed > 0 {
            let names: Vec<&str> = self
                .sources
                .iter()
                .filter(|s| s.status == RunStatus::Failed)
                .map(|s| s.source.as_str())
                .collect();
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "{} of {} sources failed ({}); the others were backed up",
                    self.failed,
                    self.sources.len(),
                    names.join(", ")
                ),
            )
            .into());
        }
        Ok(())
    }
}

impl std::fmt::Display for StackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<20} {:<7} {:>9} {:>11} {:>11}  snapshot",
            "source", "type", "status", "time", "read", "added"
        )?;
        for s in &self.sources {
            writeln!(
                f,
                "{:<16} {:<20} {:<7} {:>8.1}s {:>11} {:>11}  {}",
                s.source,
                s.source_type,
                match s.status {
                    RunStatus::Ok => "ok",
                    RunStatus::Failed => "FAILED",
                },
                s.duration_secs,
                mib(s.bytes_read),
                mib(s.bytes_added),
                s.snapshot.as_deref().map(|i| &i[..8]).unwrap_or("-")
            )?;
            if let Some(e) = &s.error {
                writeln!(f, "  error: {e}")?;
            }
            if !s.forgotten.is_empty() {
                writeln!(
                    f,
                    "  keep rules removed {} older snapshot(s)",
                    s.forgotten.len()
                )?;
            }
        }
        write!(
            f,
            "run {}: {} of {} sources backed up in {:.1}s",
            self.run,
            self.sources.len() - self.failed,
            self.sources.len(),
            self.duration_secs
        )
    }
}

#[cfg(test)]
mod command_tests {
    use super::*;
    use std::path::Path;

    fn source(toml: &str) -> CommandSource {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_declared_command_source_and_its_restore() {
        let c = source(
            "shell = \"mysqldump --all-databases\"\nsuccess_codes = [0, 2]\ntimeout = \"30m\"\n\
             restore = [\"mysql\"]\nrestore_timeout = \"1h\"\n",
        );
        let o = command_options("db", &c).unwrap();
        assert_eq!(o.name, "db");
        assert_eq!(
            o.program,
            Program::Shell("mysqldump --all-databases".into())
        );
        assert_eq!(o.output, Output::Stdout);
        assert_eq!(o.timeout, Some(Duration::from_secs(1800)));
        assert_eq!((o.success_codes.as_slice(), o.min_bytes), (&[0, 2][..], 1));
        match command_restore("db", &c, None).unwrap() {
            CommandRestore::Run { program, timeout } => {
                assert_eq!(program, Program::Argv(vec!["mysql".into()]));
                assert_eq!(timeout, Some(Duration::from_secs(3600)));
            }
            other => panic!("{other:?}"),
        }
        let c = source("command = [\"x\", \"{output_dir}\"]\noutput = \"dir\"\nmin_bytes = 0\n");
        let o = command_options("x", &c).unwrap();
        assert_eq!((o.output, o.min_bytes), (Output::Dir, 0));
        assert!(command_restore("x", &c, None).is_err());
        match command_restore("x", &c, Some(Path::new("/srv/restore"))).unwrap() {
            CommandRestore::Dir(d) => assert_eq!(d, Path::new("/srv/restore")),
            other => panic!("{other:?}"),
        }
    }
}
