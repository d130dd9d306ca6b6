//! The scheduler of `coffer run`: which jobs run when, without overlap, within
//! `max_parallel`, catching up missed runs, and how the service stops and reloads.
//!
//! - **Jobs.** One backup job per declared source with a `schedule` (cron, in its
//!   `timezone`) or `every`, and the repository jobs of `[service]`: `prune`, `check` (with
//!   `check_read_data_subset`) and `wal_verify`; and with a `wal = "async"` repository, the
//!   `wal_copy` job (every 30 s unless set) that drains the WAL spool into it. A backup job
//!   is `coffer backup --source NAME` ([`crate::ops::stack::backup_stack`]: hooks, run
//!   record, keep rules).
//! - **Missed runs.** At start, a job whose last success is older than its previous
//!   scheduled time (equivalently: whose next time after its last success has passed) runs
//!   at once, as systemd's `Persistent=true` does. The last success comes from the
//!   repository (the newest snapshot of the source; for repository jobs the run history), not
//!   from a local state file, so a restart, a reinstall or another host does the right thing.
//! - **No overlap.** A job still running when its next time comes is skipped, logged and
//!   counted. At most `max_parallel` jobs (default 1) run at once; a due job waits for a
//!   slot. `prune` (an exclusive lock) runs alone. `wal-copy` takes no lock and no slot: like
//!   `archive_command`, it must keep up whatever else runs.
//! - **Shutdown.** SIGTERM or SIGINT: no new runs; the running ones get `shutdown_grace`
//!   (default 5 min) to finish, then [`crate::cancel::request`] makes them fail before their
//!   snapshot (no snapshot, locks released); the service then returns `Ok`.
//! - **Alerts.** Each backup's result, each check's, and each source's age against its
//!   `rpo` (looked at every 30 s or a tenth of the shortest `rpo`, not only after a run), and
//!   for physical sources the WAL archive as the last wal-verify saw it, go to the
//!   [`super::alerts::Alerter`],
//!   which alerts on changes of state; sources with a `healthcheck_url` are pinged at each
//!   backup's start and end. At start the alert state is seeded from the run history, so a
//!   restart does not alert again on a failure it already reported.
//! - **State.** [`ServiceState`] holds the jobs, the recent runs and an [`Overview`] of the
//!   repository, read once at start (and on reload) and then kept up to date by the
//!   service's own runs: the listener ([`super::http`]) renders the metrics, the status
//!   JSON and the status page from it without reading the storage.
//! - **Reload.** SIGHUP reads the config file again; a config that does not load (or a
//!   repository that does not open with it) is refused and logged, and the old one keeps
//!   running.

use crate::config::sources::{cron, Schedule};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::ops::status::{
    Copied, CopyOverview, Failure, LastDrill, LastRun, Overview, SpoolOverview, Success,
    WalOverview,
};
use crate::progress::Progress;
use crate::repo::id::Id;
use crate::repo::runs::{self, RepositoryRun, RunRecord, RunStatus};
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::sources::postgres::pitr::FetchConfig;
use anyhow::Result;
use chrono::{DateTime, Utc};
use crossbeam_channel::{select, unbounded, Sender};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a job does.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// `backup --source NAME`.
    Backup(String),
    Prune,
    /// `check`, reading this part of the data (`check_read_data_subset`, e.g. `5%`).
    Check(Option<String>),
    WalVerify,
    /// `drill --source NAME`: a restore drill of the source.
    Drill(String),
    /// `wal-copy`: the WAL spool of the `wal = "async"` repositories, pushed into them.
    WalCopy,
}

impl JobKind {
    /// The declared source the job is about.
    pub fn source(&self) -> Option<&str> {
        match self {
            JobKind::Backup(s) | JobKind::Drill(s) => Some(s),
            _ => None,
        }
    }

    /// The job's name in logs, metrics and the run history: `backup db`, `prune`, …
    pub fn name(&self) -> String {
        match self {
            JobKind::Backup(s) => format!("backup {s}"),
            JobKind::Prune => "prune".into(),
            JobKind::Check(_) => "check".into(),
            JobKind::WalVerify => "wal-verify".into(),
            JobKind::Drill(s) => format!("drill {s}"),
            JobKind::WalCopy => "wal-copy".into(),
        }
    }

    /// The run history's `job`.
    fn record_job(&self) -> &'static str {
        match self {
            JobKind::Backup(_) => "backup",
            JobKind::Prune => "prune",
            JobKind::Check(_) => "check",
            JobKind::WalVerify => "wal-verify",
            JobKind::Drill(_) => "drill",
            JobKind::WalCopy => "wal-copy",
        }
    }
}

/// A scheduled job.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub kind: JobKind,
    pub schedule: Schedule,
    pub jitter: Option<Duration>,
}

/// The jobs a config file declares.
pub fn jobs(config: &Config) -> Result<Vec<Job>> {
    let mut out = Vec::new();
    for s in &config.sources {
        if let Some(schedule) = &s.schedule {
            out.push(Job {
                kind: JobKind::Backup(s.name.clone()),
                schedule: schedule.clone(),
                jitter: s.jitter,
            });
        }
    }
    for s in &config.sources {
        if let Some(schedule) = s.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
            out.push(Job {
                kind: JobKind::Drill(s.name.clone()),
                schedule: schedule.clone(),
                jitter: s.jitter,
            });
        }
    }
    let sv = &config.service;
    let tz = match &sv.timezone {
        Some(t) => Some(
            t.parse::<chrono_tz::Tz>()
                .map_err(|_| Error::usage(format!("[service] timezone {t:?} is not known")))?,
        ),
        None => None,
    };
    for (kind, expr) in [
        (JobKind::Prune, &sv.prune),
        (JobKind::Check(sv.check_read_data_subset.clone()), &sv.check),
        (JobKind::WalVerify, &sv.wal_verify),
    ] {
        if let Some(e) = expr {
            out.push(Job {
                kind,
                schedule: Schedule::Cron {
                    expr: e.clone(),
                    timezone: tz,
                },
                jitter: None,
            });
        }
    }
    if !config.async_wal_copies().is_empty() {
        let schedule = match &sv.wal_copy {
            Some(e) => crate::config::ServiceConfig::interval_or_cron(e, tz)
                .map_err(|m| Error::usage(format!("[service] wal_copy: {m}")))?,
            None => Schedule::Every(WAL_COPY_EVERY),
        };
        out.push(Job {
            kind: JobKind::WalCopy,
            schedule,
            jitter: None,
        });
    }
    if let Some(subset) = &sv.check_read_data_subset {
        crate::ops::check::read_data_subset(subset)?;
    }
    Ok(out)
}

/// How often `wal-copy` runs when `[service] wal_copy` is not set.
pub const WAL_COPY_EVERY: Duration = Duration::from_secs(30);

/// The first time of `schedule` strictly after `after`.
pub fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
    match schedule {
        Schedule::Every(d) => Ok(after + chrono::Duration::from_std(*d)?),
        Schedule::Cron { expr, timezone } => {
            let c = cron(expr).map_err(Error::usage)?;
            let next = match timezone {
                Some(tz) => c
                    .find_next_occurrence(&after.with_timezone(tz), false)
                    .map(|t| t.with_timezone(&Utc)),
                None => c
                    .find_next_occurrence(&after.with_timezone(&chrono::Local), false)
                    .map(|t| t.with_timezone(&Utc)),
            };
            next.map_err(|e| {
                Error::usage(format!("schedule {expr:?} has no next time: {e}")).into()
            })
        }
    }
}

/// When a job first runs, given its last success: at once when it never succeeded or a
/// scheduled time passed since (a missed run), else at its next time.
pub fn first_due(
    schedule: &Schedule,
    last_success: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    match last_success {
        None => Ok(now),
        Some(t) => {
            let n = next_after(schedule, t)?;
            Ok(if n <= now { now } else { n })
        }
    }
}

/// One finished run, as the service keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub job: String,
    pub source: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub duration_secs: f64,
    pub status: RunStatus,
    pub error: Option<String>,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub snapshot: Option<String>,
    /// What the run changed in the repository, for the service's [`Overview`].
    #[serde(skip)]
    pub effect: Effect,
}

/// What a run changed that the service's view of the repository follows.
#[derive(Clone, Debug, Default)]
pub enum Effect {
    #[default]
    None,
    /// A backup: its snapshot's time, the snapshots its keep rules removed, the bytes it
    /// stored, and the `copy_to` repositories its snapshot was copied to.
    Backup {
        snapshot_time: Option<DateTime<chrono::FixedOffset>>,
        forgotten: u64,
        bytes_stored: u64,
        copied_to: Vec<String>,
    },
    /// A prune: the primary's stored bytes after it (when they could be read), and what it
    /// did in each repository.
    Prune {
        stored_bytes: Option<u64>,
        repositories: Vec<RepositoryRun>,
    },
    /// A wal-verify: the WAL archive as it found it.
    Wal(WalOverview),
    /// A restore drill.
    Drill { passed: bool, rto_secs: f64 },
    /// A wal-copy: the WAL spool of each async repository after it.
    WalCopy(BTreeMap<String, SpoolOverview>),
}

/// A job's state, for logs, metrics and the status page.
#[derive(Clone, Debug, Serialize)]
pub struct JobState {
    pub job: String,
    pub source: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub running_since: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_run: Option<RunSummary>,
    pub runs_total: u64,
    pub failures_total: u64,
    pub skipped_total: u64,
}

/// What the service knows, shared with whatever reports on it (the metrics and the status
/// page): the scheduler's state, and the repository as one read at start (and on reload)
/// showed it, kept up to date by the service's own runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceState {
    pub started: Option<DateTime<Utc>>,
    pub jobs: Vec<JobState>,
    /// The newest runs, newest last (at most [`RECENT_RUNS`]); at start, from the run history.
    pub recent: VecDeque<RunSummary>,
    pub overview: Overview,
    /// Sealed bytes of the blobs the index lists (see [`stored_bytes`]).
    pub stored_bytes: u64,
    pub alerts_sent: u64,
    pub alerts_failed: u64,
    /// The newest prune of each repository (`primary` and the `[repositories.NAME]`), by
    /// name; at start, from the run history.
    pub prunes: BTreeMap<String, PruneState>,
    /// The config in force (its sources and their `rpo`).
    #[serde(skip)]
    pub config: Option<Arc<Config>>,
}

impl ServiceState {
    /// Follow a finished run in the view of the repository.
    fn apply(&mut self, s: &RunSummary) {
        let local = |t: DateTime<Utc>| t.with_timezone(&chrono::Local).fixed_offset();
        match &s.effect {
            Effect::Backup {
                snapshot_time,
                forgotten,
                bytes_stored,
                copied_to,
            } => {
                let Some(source) = &s.source else { return };
                let o = self.overview.sources.entry(source.clone()).or_default();
                if let Some(id) = &s.snapshot {
                    let time = snapshot_time.unwrap_or_else(|| local(s.started));
                    o.snapshots += 1;
                    o.oldest.get_or_insert(time);
                    o.last_success = Some(Success {
                        snapshot: id.clone(),
                        time,
                        size: s.bytes_read,
                    });
                    // A repository it was copied to has it now; one it was not lacks it.
                    for name in copied_to {
                        o.copies.insert(
                            name.clone(),
                            CopyOverview {
                                newest: Some(Copied {
                                    original: id.clone(),
                                    time,
                                }),
                                error: None,
                            },
                        );
                    }
                }
                o.snapshots = o.snapshots.saturating_sub(*forgotten);
                o.last_failure = (s.status == RunStatus::Failed).then(|| Failure {
                    time: local(s.finished),
                    error: s.error.clone(),
                    host: crate::repo::hostname(),
                });
                o.last_run = Some(LastRun {
                    started: local(s.started),
                    finished: local(s.finished),
                    ok: s.status == RunStatus::Ok,
                    bytes_read: s.bytes_read,
                    bytes_added: s.bytes_added,
                });
                self.stored_bytes += bytes_stored;
            }
            Effect::Prune {
                stored_bytes,
                repositories,
            } => {
                if let Some(b) = stored_bytes {
                    self.stored_bytes = *b;
                }
                for r in repositories {
                    self.prunes
                        .insert(r.repository.clone(), PruneState::of(r, s.finished));
                }
            }
            Effect::Wal(w) => self.overview.wal = Some(w.clone()),
            Effect::WalCopy(spools) => self.overview.wal_spools = spools.clone(),
            Effect::Drill { passed, rto_secs } => {
                let Some(source) = &s.source else { return };
                let o = self.overview.sources.entry(source.clone()).or_default();
                o.last_drill = Some(LastDrill {
                    finished: local(s.finished),
                    passed: *passed,
                    rto_secs: *rto_secs,
                    snapshot: s.snapshot.clone(),
                });
                if *passed {
                    o.last_drill_passed = Some(local(s.finished));
                }
            }
            Effect::None => {}
        }
        if s.job == "check" && s.status == RunStatus::Ok {
            self.overview.check_last_success = Some(local(s.finished));
        }
    }
}

/// The newest prune of one repository, as the service knows it.
#[derive(Clone, Debug, Serialize)]
pub struct PruneState {
    pub finished: DateTime<Utc>,
    pub ok: bool,
    /// When a prune of it last succeeded.
    pub last_success: Option<DateTime<Utc>>,
}

impl PruneState {
    fn of(r: &RepositoryRun, finished: DateTime<Utc>) -> PruneState {
        let ok = r.status == RunStatus::Ok;
        PruneState {
            finished,
            ok,
            last_success: ok.then_some(finished),
        }
    }
}

/// The newest prune of each repository in the run history.
fn prunes_of(history: &[RunRecord]) -> BTreeMap<String, PruneState> {
    let mut out: BTreeMap<String, PruneState> = BTreeMap::new();
    // The history is oldest first: each record overrides the older ones.
    for rec in history.iter().filter(|r| r.job == "prune") {
        let finished = rec.finished.with_timezone(&Utc);
        for r in &rec.repositories {
            let older = out.get(&r.repository).and_then(|p| p.last_success);
            let mut newest = PruneState::of(r, finished);
            newest.last_success = newest.last_success.or(older);
            out.insert(r.repository.clone(), newest);
        }
    }
    out
}

/// `[service] prune`: the service's repository, then each `[repositories.NAME]`, each
/// under its own exclusive lock; a named one with a `keep` first forgets by it (as
/// `--repo NAME forget` does), so that its retention runs even when nothing copies to it.
/// One that fails does not stop the others. Returns what each did, and the primary's
/// stored bytes after it.
fn prune_repositories(
    repo: &Arc<Repository>,
    config: &Config,
    p: &Progress,
) -> (Vec<RepositoryRun>, Option<u64>) {
    use crate::ops::access::PRIMARY;
    let result = |name: &str, r: Result<(u64, u64)>| {
        let run = match r {
            Ok((removed, freed)) => RepositoryRun {
                repository: name.to_string(),
                status: RunStatus::Ok,
                error: None,
                snapshots_removed: removed,
                bytes_freed: freed,
            },
            Err(e) => RepositoryRun {
                repository: name.to_string(),
                status: RunStatus::Failed,
                error: Some(format!("{e:#}")),
                snapshots_removed: 0,
                bytes_freed: 0,
            },
        };
        match &run.error {
            None => p.log(&format!(
                "prune {name}: ok{}, freed {}",
                match run.snapshots_removed {
                    0 => String::new(),
                    n => format!(", its keep removed {n} snapshot(s)"),
                },
                crate::ops::mib(run.bytes_freed)
            )),
            Some(e) => p.warn(&format!("prune {name}: FAILED: {e}")),
        }
        run
    };
    let mut out = Vec::new();
    p.set_message(format!("pruning {PRIMARY}"));
    out.push(result(
        PRIMARY,
        crate::ops::prune::prune(repo, false, 10.0, p).map(|r| (0, r.report.bytes_deleted)),
    ));
    // Prune is rare and reads the index anyway: read it again for the size.
    let stored = match repo.load_index() {
        Ok(i) => Some(stored_bytes(&i)),
        Err(e) => {
            p.warn(&format!("could not read the index after prune: {e:#}"));
            None
        }
    };
    for (name, table) in &config.repositories {
        p.set_message(format!("pruning {name}"));
        let r = crate::ops::access::open_named(config, name, p).and_then(|named| {
            if named.config.id == repo.config.id {
                // `coffer run --repo NAME`: pruned above.
                return Ok(None);
            }
            let Some(policy) = &table.keep else {
                return crate::ops::prune::prune(&named, false, 10.0, p)
                    .map(|r| Some((0, r.report.bytes_deleted)));
            };
            let opts = crate::ops::forget::ForgetOptions {
                snapshots: Vec::new(),
                policy: policy.clone(),
                tags: Vec::new(),
                sources: Vec::new(),
                group_by: vec!["host".into(), "paths".into()],
                dry_run: false,
                prune: true,
            };
            let f = crate::ops::forget::forget(&named, &opts, &|_| {}, p)?;
            Ok(Some((
                f.removed.len() as u64,
                f.prune.map_or(0, |r| r.report.bytes_deleted),
            )))
        });
        match r {
            Ok(None) => {}
            Ok(Some(done)) => out.push(result(name, Ok(done))),
            Err(e) => out.push(result(name, Err(e))),
        }
    }
    (out, stored)
}

/// A prune job fails when it failed in any repository, naming each.
fn prune_verdict(results: &[RepositoryRun]) -> Result<()> {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.repository, r.error.as_deref()?)))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "prune failed in {} of {} repositories ({}); the others were pruned",
        failed.len(),
        results.len(),
        failed.join("; ")
    ))
}

/// What the service reads from the repository at start and on reload.
struct Reading {
    history: Vec<RunRecord>,
    prunes: BTreeMap<String, PruneState>,
    /// The last success of each job, by job name.
    last: BTreeMap<String, DateTime<Utc>>,
    overview: Overview,
    stored_bytes: u64,
}

fn read_repository(repo: &Arc<Repository>, config: &Config, jobs: &[Job]) -> Result<Reading> {
    let snaps = repo.load_snapshots()?;
    let history = runs::load(repo)?;
    let last = last_successes(&snaps, &history, jobs);
    let mut overview = Overview::from_parts(
        config,
        &snaps,
        &history,
        Overview::read_wal(repo, config)?,
        &Overview::read_copies(config, repo.events()),
    );
    overview.wal_spools = Overview::read_spools(config);
    let stored_bytes = stored_bytes(&repo.load_index()?);
    Ok(Reading {
        prunes: prunes_of(&history),
        history,
        last,
        overview,
        stored_bytes,
    })
}

/// The sealed bytes of the blobs the index lists (as a backup's `bytes_stored` counts them:
/// pack headers aside).
fn stored_bytes(index: &crate::repo::index::MasterIndex) -> u64 {
    index
        .packs
        .iter()
        .flat_map(|p| &p.blobs)
        .map(|b| b.length as u64)
        .sum()
}

/// A run of the history as the service shows it.
fn summary_of(r: &RunRecord) -> RunSummary {
    RunSummary {
        job: if r.source.is_empty() {
            r.job.clone()
        } else {
            format!("{} {}", r.job, r.source)
        },
        source: (!r.source.is_empty()).then(|| r.source.clone()),
        started: r.started.with_timezone(&Utc),
        finished: r.finished.with_timezone(&Utc),
        duration_secs: (r.finished - r.started).num_milliseconds().max(0) as f64 / 1000.0,
        status: r.status,
        error: r.error.clone(),
        bytes_read: r.bytes_read,
        bytes_added: r.bytes_added,
        snapshot: r.snapshot.clone(),
        effect: Effect::None,
    }
}

/// The newest [`RECENT_RUNS`] runs of the history, newest last.
fn recent_of(history: &[RunRecord]) -> VecDeque<RunSummary> {
    let mut all: Vec<&RunRecord> = history.iter().collect();
    all.sort_by_key(|r| r.finished);
    let skip = all.len().saturating_sub(RECENT_RUNS);
    all[skip..].iter().map(|r| summary_of(r)).collect()
}

/// Runs kept in [`ServiceState::recent`].
pub const RECENT_RUNS: usize = 100;

pub struct RunOptions {
    /// Run every due job once, then return.
    pub once: bool,
    /// The config file, read again on SIGHUP.
    pub config_path: Option<PathBuf>,
}

/// What `coffer run --once` did.
#[derive(Serialize)]
pub struct OnceReport {
    pub runs: Vec<RunSummary>,
    pub failed: usize,
}

impl OnceReport {
    pub fn verdict(&self) -> Result<()> {
        if self.failed > 0 {
            return Err(Error::new(
                ErrorKind::Source,
                format!("{} of {} runs failed", self.failed, self.runs.len()),
            )
            .into());
        }
        Ok(())
    }
}

/// An open repository, and how a drill's scratch server reads its WAL archive.
pub type Opened = (Arc<Repository>, Arc<FetchConfig>);

/// How the service opens the repository for a config (on start and on reload).
pub type Opener<'a> = &'a dyn Fn(&Config) -> Result<Opened>;

enum Signal {
    Stop,
    Reload,
}

struct Slot {
    job: Job,
    next: DateTime<Utc>,
    running: bool,
    state: JobState,
}

/// The last success of each job, from the repository's snapshots and run history.
fn last_successes(
    snaps: &[Snapshot],
    history: &[RunRecord],
    jobs: &[Job],
) -> BTreeMap<String, DateTime<Utc>> {
    let mut out = BTreeMap::new();
    for j in jobs {
        let t = match &j.kind {
            JobKind::Backup(name) => snaps
                .iter()
                .filter(|s| s.source.as_deref() == Some(name) && !s.has_tag("safety-backup"))
                .map(|s| s.time.with_timezone(&Utc))
                .max(),
            k => history
                .iter()
                .filter(|r| {
                    r.job == k.record_job()
                        && r.source == k.source().unwrap_or("")
                        && r.status == RunStatus::Ok
                })
                .map(|r| r.finished.with_timezone(&Utc))
                .max(),
        };
        if let Some(t) = t {
            out.insert(j.kind.name(), t);
        }
    }
    out
}

fn jittered(t: DateTime<Utc>, jitter: Option<Duration>) -> DateTime<Utc> {
    match jitter.filter(|j| !j.is_zero()) {
        Some(j) => {
            use rand::Rng;
            let ms = rand::thread_rng().gen_range(0..j.as_millis().min(u64::MAX as u128) as u64);
            t + chrono::Duration::milliseconds(ms as i64)
        }
        None => t,
    }
}

fn slots(
    last: &BTreeMap<String, DateTime<Utc>>,
    jobs: Vec<Job>,
    old: &[Slot],
    now: DateTime<Utc>,
) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for job in jobs {
        let name = job.kind.name();
        // A job that kept its schedule across a reload keeps its state.
        if let Some(o) = old.iter().find(|o| o.job == job) {
            out.push(Slot {
                job,
                next: o.next,
                running: o.running,
                state: o.state.clone(),
            });
            continue;
        }
        let last_success = last.get(&name).copied();
        let next = jittered(first_due(&job.schedule, last_success, now)?, job.jitter);
        let source = job.kind.source().map(str::to_string);
        let running = old.iter().any(|o| o.job.kind == job.kind && o.running);
        out.push(Slot {
            state: JobState {
                job: name,
                source,
                next_run: Some(next),
                running_since: None,
                last_success,
                last_run: None,
                runs_total: 0,
                failures_total: 0,
                skipped_total: 0,
            },
            job,
            next,
            running,
        });
    }
    Ok(out)
}

/// Run the service until SIGTERM/SIGINT (or, with `once`, until every due job ran once).
/// `log` hears the service's own lines; `progress_for` gives each run its display.
pub fn run(
    config: Config,
    open: Opener<'_>,
    opts: &RunOptions,
    state: Arc<Mutex<ServiceState>>,
    log: &Progress,
    progress_for: &(dyn Fn(&str) -> Progress + Sync),
) -> Result<Option<OnceReport>> {
    let mut config = Arc::new(config);
    let (mut repo, mut fetch) = open(&config)?;
    let js = jobs(&config)?;
    if js.is_empty() && !opts.once {
        return Err(Error::usage(
            "nothing to run: no source has a schedule (schedule = \"0 2 * * *\" or every = \"1h\") \
             and [service] has no prune, check or wal_verify (nor is any repository wal = \"async\")",
        )
        .into());
    }
    let started = Utc::now();
    let reading = read_repository(&repo, &config, &js)?;
    let mut table = slots(&reading.last, js, &[], started)?;
    let new_alerter = |config: &Config, history: &[RunRecord]| -> super::alerts::Alerter {
        let a = super::alerts::Alerter::new(
            &config.alerts,
            &config.sources,
            super::alerts::Delivery::default(),
            log.clone(),
        );
        for line in a.seed_from_history(history, chrono::Local::now().fixed_offset()) {
            log.log(&line);
        }
        a
    };
    let mut alerter = new_alerter(&config, &reading.history);
    // Alerts sent by the alerters replaced on reload.
    let mut alerts_before = (0u64, 0u64);
    wal_lag_notes(&config, &table, log);
    let mut rpo_looked: Option<Instant> = None;
    let (signals_tx, signals) = unbounded::<Signal>();
    let _signal_thread = if opts.once {
        None
    } else {
        Some(watch_signals(signals_tx)?)
    };
    {
        let mut s = state.lock().unwrap();
        s.started = Some(started);
        s.jobs = table.iter().map(|t| t.state.clone()).collect();
        s.recent = recent_of(&reading.history);
        s.overview = reading.overview;
        s.stored_bytes = reading.stored_bytes;
        s.prunes = reading.prunes;
        s.config = Some(config.clone());
    }
    let _http = match (&config.service.listen, opts.once) {
        (Some(listen), false) => Some(super::http::serve(
            listen,
            config.service.basic_auth_file.as_deref(),
            state.clone(),
            log,
        )?),
        _ => None,
    };
    for t in &table {
        log.log(&format!(
            "{}: next run {}",
            t.state.job,
            if t.next <= started {
                "now (missed or never run)".to_string()
            } else {
                t.next.with_timezone(&chrono::Local).to_rfc3339()
            }
        ));
    }
    let max_parallel = config.service.max_parallel.unwrap_or(1).max(1);
    let grace = config
        .service
        .shutdown_grace
        .unwrap_or(Duration::from_secs(300));
    let (done_tx, done) = unbounded::<(String, RunSummary)>();
    let mut running = 0usize;
    // Of those, wal-copy runs, which take no slot.
    let mut light_running = 0usize;
    let mut exclusive_running = false;
    let mut stopping: Option<Instant> = None;
    let mut once_pending: Vec<String> = if opts.once {
        table
            .iter()
            .filter(|t| t.next <= started)
            .map(|t| t.state.job.clone())
            .collect()
    } else {
        Vec::new()
    };
    let mut once_runs = Vec::new();
    if opts.once && once_pending.is_empty() {
        log.log("nothing is due");
        return Ok(Some(OnceReport {
            runs: Vec::new(),
            failed: 0,
        }));
    }
    loop {
        let now = Utc::now();
        // Start what is due, in table order, within the limits.
        if stopping.is_none() {
            for t in table.iter_mut() {
                if t.next > now {
                    continue;
                }
                if opts.once && !once_pending.contains(&t.state.job) {
                    continue;
                }
                let exclusive = t.job.kind == JobKind::Prune;
                let light = t.job.kind == JobKind::WalCopy;
                if t.running {
                    t.state.skipped_total += 1;
                    log.warn(&format!(
                        "{}: skipped: the previous run is still going (skipped {} time(s) so far)",
                        t.state.job, t.state.skipped_total
                    ));
                    t.next = jittered(next_after(&t.job.schedule, now)?, t.job.jitter);
                    t.state.next_run = Some(t.next);
                    continue;
                }
                let heavy = running - light_running;
                if !light
                    && (heavy >= max_parallel || exclusive_running || (exclusive && heavy > 0))
                {
                    continue; // waits for a slot
                }
                t.running = true;
                running += 1;
                light_running += usize::from(light);
                exclusive_running |= exclusive;
                t.state.running_since = Some(now);
                if !opts.once {
                    t.next = jittered(next_after(&t.job.schedule, now)?, t.job.jitter);
                    t.state.next_run = Some(t.next);
                } else {
                    once_pending.retain(|j| j != &t.state.job);
                    t.state.next_run = None;
                }
                log.log(&format!("{}: started", t.state.job));
                if let JobKind::Backup(source) = &t.job.kind {
                    alerter.ping_start(source);
                }
                let (job, repo, config, fetch, tx) = (
                    t.job.clone(),
                    repo.clone(),
                    config.clone(),
                    fetch.clone(),
                    done_tx.clone(),
                );
                let name = t.state.job.clone();
                let p = progress_for(&name);
                std::thread::spawn(move || {
                    let summary = run_job(&job, &repo, &config, &fetch, &p);
                    p.finish();
                    let _ = tx.send((name, summary));
                });
            }
            let mut s = state.lock().unwrap();
            s.jobs = table.iter().map(|t| t.state.clone()).collect();
            let (sent, failed) = alerter.counters();
            (s.alerts_sent, s.alerts_failed) = (alerts_before.0 + sent, alerts_before.1 + failed);
        }
        if opts.once && once_pending.is_empty() && running == 0 {
            alerter.flush(ALERT_FLUSH);
            let failed = once_runs
                .iter()
                .filter(|r: &&RunSummary| r.status == RunStatus::Failed)
                .count();
            return Ok(Some(OnceReport {
                runs: once_runs,
                failed,
            }));
        }
        if rpo_looked.is_none_or(|t| t.elapsed() >= rpo_every(&config)) {
            rpo_looked = Some(Instant::now());
            let wal = state.lock().unwrap().overview.wal.clone();
            rpo_alerts(&alerter, &config, &table, wal.as_ref());
            copy_alerts(&alerter, &state, &config);
            // The spool is a local directory, filled by wal-push between the runs.
            if !config.async_wal_copies().is_empty() {
                let spools = Overview::read_spools(&config);
                state.lock().unwrap().overview.wal_spools = spools;
            }
            wal_copy_alerts(&alerter, &state, &config);
        }
        if let Some(since) = stopping {
            if running == 0 {
                alerter.flush(ALERT_FLUSH);
                log.log("stopped");
                return Ok(None);
            }
            if since.elapsed() >= grace && !crate::cancel::requested() {
                log.warn(&format!(
                    "shutdown grace of {} passed: stopping {running} running job(s); they leave no snapshot",
                    humantime::format_duration(grace)
                ));
                crate::cancel::request();
                // A drill's scratch servers and directories go at once.
                crate::sources::postgres::scratch::remove_all_now();
            }
        }
        // Sleep until the next due time (at most a second: signals and finished runs
        // wake it at once).
        let wait = table
            .iter()
            .filter(|t| !t.running)
            .map(|t| t.next)
            .min()
            .map(|n| (n - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        select! {
            recv(done) -> msg => {
                let Ok((name, summary)) = msg else { continue };
                running -= 1;
                if let Some(t) = table.iter_mut().find(|t| t.state.job == name) {
                    t.running = false;
                    if t.job.kind == JobKind::Prune {
                        exclusive_running = false;
                    }
                    if t.job.kind == JobKind::WalCopy {
                        light_running -= 1;
                    }
                    t.state.running_since = None;
                    t.state.runs_total += 1;
                    if summary.status == RunStatus::Ok {
                        t.state.last_success = Some(summary.finished);
                    } else {
                        t.state.failures_total += 1;
                    }
                    t.state.last_run = Some(summary.clone());
                } else if exclusive_running && name == "prune" {
                    exclusive_running = false;
                } else if name == "wal-copy" {
                    light_running = light_running.saturating_sub(1);
                }
                log.log(&describe(&name, &summary));
                alert(&alerter, &summary);
                let mut s = state.lock().unwrap();
                s.apply(&summary);
                s.recent.push_back(summary.clone());
                while s.recent.len() > RECENT_RUNS {
                    s.recent.pop_front();
                }
                s.jobs = table.iter().map(|t| t.state.clone()).collect();
                drop(s);
                if matches!(summary.effect, Effect::Backup { .. }) {
                    copy_alerts(&alerter, &state, &config);
                }
                if matches!(summary.effect, Effect::WalCopy(_)) {
                    wal_copy_alerts(&alerter, &state, &config);
                }
                if opts.once {
                    once_runs.push(summary);
                }
            }
            recv(signals) -> msg => match msg {
                Ok(Signal::Stop) if stopping.is_none() => {
                    log.log(&format!(
                        "stopping: no new runs; {running} running job(s) have {} to finish",
                        humantime::format_duration(grace)
                    ));
                    stopping = Some(Instant::now());
                }
                Ok(Signal::Stop) => {}
                Ok(Signal::Reload) => match reload(opts, open, &table) {
                    Ok((c, (r, f), t, reading)) => {
                        alerter.flush(ALERT_FLUSH);
                        let (sent, failed) = alerter.counters();
                        alerts_before = (alerts_before.0 + sent, alerts_before.1 + failed);
                        alerter = new_alerter(&c, &reading.history);
                        if c.service.listen != config.service.listen
                            || c.service.basic_auth_file != config.service.basic_auth_file
                        {
                            log.warn("[service] listen and basic_auth_file take effect at the next start, not on reload");
                        }
                        config = Arc::new(c);
                        repo = r;
                        fetch = f;
                        table = t;
                        wal_lag_notes(&config, &table, log);
                        let mut s = state.lock().unwrap();
                        s.overview = reading.overview;
                        s.stored_bytes = reading.stored_bytes;
                        s.prunes = reading.prunes;
                        s.config = Some(config.clone());
                        drop(s);
                        log.log(&format!("reloaded the config: {} job(s)", table.len()));
                        for t in &table {
                            log.log(&format!("{}: next run {}", t.state.job, t.next.with_timezone(&chrono::Local).to_rfc3339()));
                        }
                    }
                    Err(e) => log.warn(&format!(
                        "the config was not reloaded, the old one keeps running: {e:#}"
                    )),
                },
                Err(_) => {}
            },
            default(wait) => {}
        }
    }
}

/// How often each source's age is held against its `rpo`: every 30 s, or a tenth of the
/// shortest `rpo` when that is sooner (at most every second).
fn rpo_every(config: &Config) -> Duration {
    config
        .sources
        .iter()
        .filter_map(|s| s.rpo)
        .map(|r| r / 10)
        .min()
        .unwrap_or(Duration::MAX)
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// How long the service waits for alerts still being sent when it stops or reloads.
const ALERT_FLUSH: Duration = Duration::from_secs(10);

/// A finished run's alerts and pings.
fn alert(alerter: &super::alerts::Alerter, s: &RunSummary) {
    use super::alerts::{AlertKey, Condition, Problem};
    let now = s.finished.with_timezone(&chrono::Local).fixed_offset();
    let problem = (s.status == RunStatus::Failed).then(|| Problem {
        error: s.error.clone().unwrap_or_else(|| "failed".into()),
        snapshot: s.snapshot.clone(),
        duration_s: Some(s.duration_secs),
    });
    if let (Effect::Drill { .. }, Some(source)) = (&s.effect, &s.source) {
        alerter.observe(
            AlertKey::new(Some(source), Condition::DrillFailed),
            problem,
            now,
        );
        return;
    }
    match &s.source {
        Some(source) => {
            alerter.observe(
                AlertKey::new(Some(source), Condition::BackupFailed),
                problem,
                now,
            );
            match s.status {
                RunStatus::Ok => alerter.ping_success(source, &describe(&s.job, s)),
                RunStatus::Failed => alerter.ping_fail(source, &describe(&s.job, s)),
            }
        }
        None if s.job == "check" => {
            alerter.observe(AlertKey::new(None, Condition::CheckFailed), problem, now)
        }
        None => {}
    }
}

/// Each scheduled source's last success against its `rpo`, from the service's own state
/// (read from the repository at start, then kept up to date by the runs); for physical
/// sources, the WAL archive too (as the last wal-verify run saw it).
fn rpo_alerts(
    alerter: &super::alerts::Alerter,
    config: &Config,
    table: &[Slot],
    wal: Option<&WalOverview>,
) {
    use super::alerts::{AlertKey, Condition, Problem};
    let now = Utc::now();
    let local = now.with_timezone(&chrono::Local).fixed_offset();
    if let Some(w) = wal {
        for src in config.sources.iter().filter(|s| is_physical(s)) {
            let Some(rpo) = src.rpo else { continue };
            if let Some(problem) = wal_lag(w, rpo, local) {
                alerter.observe(
                    AlertKey::new(Some(&src.name), Condition::WalLagging),
                    problem,
                    local,
                );
            }
        }
    }
    for t in table {
        let JobKind::Backup(source) = &t.job.kind else {
            continue;
        };
        let Some(rpo) = config.source(source).and_then(|s| s.rpo) else {
            continue;
        };
        let age = t
            .state
            .last_success
            .map(|l| (now - l).to_std().unwrap_or_default());
        let problem = match age {
            Some(a) if a <= rpo => None,
            Some(a) => Some(Problem::new(format!(
                "no successful backup for {} (rpo {})",
                humantime::format_duration(Duration::from_secs(a.as_secs())),
                humantime::format_duration(rpo)
            ))),
            None => Some(Problem::new(format!(
                "never backed up (rpo {})",
                humantime::format_duration(rpo)
            ))),
        };
        alerter.observe(
            AlertKey::new(Some(source), Condition::RpoBreached),
            problem,
            now.with_timezone(&chrono::Local).fixed_offset(),
        );
    }
}

/// Each source's copies in its `copy_to` repositories against its newest snapshot and its
/// `rpo`, from the service's own state (read at start, then kept up to date by the runs).
fn copy_alerts(alerter: &super::alerts::Alerter, state: &Mutex<ServiceState>, config: &Config) {
    if config.sources.iter().all(|s| s.copy_to.is_empty()) {
        return;
    }
    let now = chrono::Local::now().fixed_offset();
    let report = state.lock().unwrap().overview.report(config, now);
    alerter.copies(&report);
}

/// The WAL spooled for each async repository against the `rpo` of the physical sources
/// that copy to it, from the service's own state (read at start, after each wal-copy run
/// and whenever the `rpo` is looked at).
fn wal_copy_alerts(alerter: &super::alerts::Alerter, state: &Mutex<ServiceState>, config: &Config) {
    let now = chrono::Local::now().fixed_offset();
    let s = state.lock().unwrap();
    if s.overview.wal_spools.is_empty() {
        return;
    }
    let report = s.overview.report(config, now);
    drop(s);
    alerter.wal_copies(&report);
}

fn is_physical(s: &crate::config::sources::SourceConfig) -> bool {
    use crate::config::sources::PgMode;
    matches!(&s.kind, crate::config::SourceKind::Postgres(p) if p.mode == PgMode::Physical)
}

/// Whether the WAL archive lags behind a physical source's `rpo` (`Some(None)`: it does
/// not), or cannot tell yet (`None`: no base backup, so no window).
pub fn wal_lag(
    w: &WalOverview,
    rpo: Duration,
    now: DateTime<chrono::FixedOffset>,
) -> Option<Option<super::alerts::Problem>> {
    use super::alerts::Problem;
    if w.gaps > 0 || !w.ok {
        return Some(Some(Problem::new(format!(
            "wal-verify finds {} gap(s) in the WAL archive: point-in-time recovery stops at the \
             first one; run coffer wal-verify",
            w.gaps
        ))));
    }
    let newest = w.newest_segment_time()?;
    let age = (now - newest).to_std().unwrap_or_default();
    Some((age > rpo).then(|| {
        Problem::new(format!(
            "the newest archived WAL segment is {} old (rpo {}): is archive_command failing?",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(rpo)
        ))
    }))
}

/// The service sees the WAL archive through its wal-verify runs: say so when a physical
/// source has an `rpo` and no wal-verify job keeps that view fresh.
fn wal_lag_notes(config: &Config, table: &[Slot], log: &Progress) {
    let verifies = table.iter().any(|t| t.job.kind == JobKind::WalVerify);
    for s in config
        .sources
        .iter()
        .filter(|s| is_physical(s) && s.rpo.is_some())
    {
        if !verifies {
            log.warn(&format!(
                "source {}: WAL lag is only seen at wal-verify runs; set [service] wal_verify \
                 (e.g. \"*/10 * * * *\", more often than its rpo) for WAL-lag alerts",
                s.name
            ));
        }
    }
}

fn reload(
    opts: &RunOptions,
    open: Opener<'_>,
    old: &[Slot],
) -> Result<(Config, Opened, Vec<Slot>, Reading)> {
    let Some(path) = &opts.config_path else {
        return Err(
            Error::usage("coffer run was started without --config: nothing to reload").into(),
        );
    };
    let config = Config::load(path)?;
    let (repo, fetch) = open(&config)?;
    let js = jobs(&config)?;
    let reading = read_repository(&repo, &config, &js)?;
    let table = slots(&reading.last, js, old, Utc::now())?;
    Ok((config, (repo, fetch), table, reading))
}

fn describe(name: &str, s: &RunSummary) -> String {
    match s.status {
        RunStatus::Ok => format!(
            "{name}: ok in {:.1}s{}",
            s.duration_secs,
            s.snapshot
                .as_deref()
                .map(|id| format!(
                    ", snapshot {} ({} read, {} added)",
                    &id[..8.min(id.len())],
                    crate::ops::mib(s.bytes_read),
                    crate::ops::mib(s.bytes_added)
                ))
                .unwrap_or_default()
        ),
        RunStatus::Failed => format!(
            "{name}: FAILED after {:.1}s: {}",
            s.duration_secs,
            s.error.as_deref().unwrap_or("(no message)")
        ),
    }
}

fn watch_signals(tx: Sender<Signal>) -> Result<std::thread::JoinHandle<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(std::thread::spawn(move || {
        for sig in signals.forever() {
            let s = if sig == SIGHUP {
                Signal::Reload
            } else {
                Signal::Stop
            };
            if tx.send(s).is_err() {
                return;
            }
        }
    }))
}

/// Run one job to its end; never panics the service: an error is a failed run.
fn run_job(
    job: &Job,
    repo: &Arc<Repository>,
    config: &Config,
    fetch: &FetchConfig,
    p: &Progress,
) -> RunSummary {
    let started = Utc::now();
    let t0 = Instant::now();
    let mut effect = Effect::None;
    let (status, error, bytes_read, bytes_added, snapshot) = match &job.kind {
        JobKind::Backup(name) => {
            // A run that fails before its source runs is still a failure of the source.
            effect = Effect::Backup {
                snapshot_time: None,
                forgotten: 0,
                bytes_stored: 0,
                copied_to: Vec::new(),
            };
            let opts = crate::ops::stack::StackOptions {
                sources: vec![name.clone()],
                forget: true,
                common: Default::default(),
            };
            match crate::ops::stack::backup_stack(repo, config, &opts, &|_| p.clone()) {
                Ok(r) => match r.sources.into_iter().next() {
                    Some(s) => {
                        effect = Effect::Backup {
                            snapshot_time: s.snapshot_time,
                            forgotten: s.forgotten.len() as u64,
                            bytes_stored: s.bytes_stored,
                            copied_to: s.copied_to.clone(),
                        };
                        (s.status, s.error, s.bytes_read, s.bytes_added, s.snapshot)
                    }
                    None => (RunStatus::Failed, Some("nothing ran".into()), 0, 0, None),
                },
                Err(e) => (RunStatus::Failed, Some(format!("{e:#}")), 0, 0, None),
            }
        }
        JobKind::Drill(name) => {
            let opts = crate::ops::drill::DrillOptions {
                sources: vec![name.clone()],
                snapshot: None,
                target_time: None,
                fetch: fetch.clone(),
            };
            match crate::ops::drill::drill(repo, config, &opts, p) {
                Ok(r) => match r.sources.into_iter().next() {
                    Some(s) => {
                        let passed = s.status == crate::ops::drill::DrillStatus::Passed;
                        effect = Effect::Drill {
                            passed,
                            rto_secs: s.rto_secs,
                        };
                        let status = if passed {
                            RunStatus::Ok
                        } else {
                            RunStatus::Failed
                        };
                        (status, s.failure(), s.bytes, 0, s.snapshot)
                    }
                    None => (RunStatus::Failed, Some("nothing ran".into()), 0, 0, None),
                },
                Err(e) => (RunStatus::Failed, Some(format!("{e:#}")), 0, 0, None),
            }
        }
        other => {
            let mut repositories = Vec::new();
            let r: Result<()> = match other {
                JobKind::Prune => {
                    let (results, stored) = prune_repositories(repo, config, p);
                    effect = Effect::Prune {
                        stored_bytes: stored,
                        repositories: results.clone(),
                    };
                    repositories = results;
                    prune_verdict(&repositories)
                }
                JobKind::Check(subset) => (|| {
                    let read = match subset {
                        Some(s) => crate::ops::check::read_data_subset(s)?,
                        None => crate::repo::check::ReadData::None,
                    };
                    let r = crate::ops::check::check(repo, read, p)?;
                    if r.ok {
                        Ok(())
                    } else {
                        Err(Error::integrity(format!(
                            "check found {} error(s): {}",
                            r.errors.len(),
                            r.errors.first().cloned().unwrap_or_default()
                        ))
                        .into())
                    }
                })(),
                JobKind::WalVerify => crate::ops::wal_verify::wal_verify(repo).and_then(|r| {
                    effect = Effect::Wal(WalOverview::from_report(&r.0));
                    r.verdict()
                }),
                JobKind::WalCopy => {
                    let r = crate::ops::wal_copy::wal_copy(config, None, p);
                    effect = Effect::WalCopy(Overview::read_spools(config));
                    r.and_then(|r| {
                        repositories = r
                            .repositories
                            .iter()
                            .map(|c| RepositoryRun {
                                repository: c.repository.clone(),
                                status: if c.pending == 0 {
                                    RunStatus::Ok
                                } else {
                                    RunStatus::Failed
                                },
                                error: c.error.clone(),
                                snapshots_removed: 0,
                                bytes_freed: 0,
                            })
                            .collect();
                        if r.repositories.iter().any(|c| c.copied > 0) {
                            p.log(&r.to_string());
                        }
                        r.verdict()
                    })
                }
                JobKind::Backup(_) | JobKind::Drill(_) => unreachable!("handled above"),
            };
            let (status, error) = match r {
                Ok(()) => (RunStatus::Ok, None),
                Err(e) => (RunStatus::Failed, Some(format!("{e:#}"))),
            };
            let record = RunRecord {
                id: Id::default(),
                run: runs::new_run_id(),
                job: other.record_job().into(),
                source: String::new(),
                source_type: "repository".into(),
                host: crate::repo::hostname(),
                started: started.fixed_offset(),
                finished: Utc::now().fixed_offset(),
                status,
                error: error.clone(),
                bytes_read: 0,
                bytes_added: 0,
                snapshot: None,
                drill: None,
                repositories,
            };
            if let Err(e) = runs::save(repo, &record) {
                p.warn(&format!("could not record the {} run: {e:#}", other.name()));
            }
            // A record every 30 s: keep the history from growing past its bound.
            if *other == JobKind::WalCopy {
                if let Err(e) = runs::trim_if_grown(repo, runs::histories(config.sources.len())) {
                    p.warn(&format!("could not trim the run history: {e:#}"));
                }
            }
            (status, error, 0, 0, None)
        }
    };
    RunSummary {
        job: job.kind.name(),
        source: job.kind.source().map(str::to_string),
        started,
        finished: Utc::now(),
        duration_secs: t0.elapsed().as_secs_f64(),
        status,
        error,
        bytes_read,
        bytes_added,
        snapshot,
        effect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_times_and_missed_runs() {
        let daily = Schedule::Cron {
            expr: "0 2 * * *".into(),
            timezone: Some(chrono_tz::UTC),
        };
        assert_eq!(
            next_after(&daily, t("2024-05-01T01:00:00Z")).unwrap(),
            t("2024-05-01T02:00:00Z")
        );
        assert_eq!(
            next_after(&daily, t("2024-05-01T02:00:00Z")).unwrap(),
            t("2024-05-02T02:00:00Z"),
            "strictly after"
        );
        let paris = Schedule::Cron {
            expr: "0 2 * * *".into(),
            timezone: Some(chrono_tz::Europe::Paris),
        };
        assert_eq!(
            next_after(&paris, t("2024-05-01T12:00:00Z")).unwrap(),
            t("2024-05-02T00:00:00Z"),
            "02:00 in Paris in May is 00:00 UTC"
        );
        let now = t("2024-05-03T12:00:00Z");
        // Never run: now. Last success before the previous 02:00: missed, now.
        assert_eq!(first_due(&daily, None, now).unwrap(), now);
        assert_eq!(
            first_due(&daily, Some(t("2024-05-02T01:00:00Z")), now).unwrap(),
            now
        );
        // Last success after the previous 02:00: the next one.
        assert_eq!(
            first_due(&daily, Some(t("2024-05-03T02:00:05Z")), now).unwrap(),
            t("2024-05-04T02:00:00Z")
        );
        let every = Schedule::Every(Duration::from_secs(900));
        assert_eq!(
            first_due(&every, Some(t("2024-05-03T11:50:00Z")), now).unwrap(),
            t("2024-05-03T12:05:00Z")
        );
        assert_eq!(
            first_due(&every, Some(t("2024-05-03T11:40:00Z")), now).unwrap(),
            now
        );
    }

    #[test]
    fn jobs_from_the_config() {
        let c = Config::parse(
            "[service]\nprune = \"0 4 * * 0\"\ncheck = \"0 5 * * *\"\ncheck_read_data_subset = \"5%\"\n[sources.a]\ntype = \"files\"\npaths = [\"/x\"]\nevery = \"2s\"\n[sources.b]\ntype = \"files\"\npaths = [\"/y\"]\n",
            None,
            &|_| None,
        )
        .unwrap();
        let names: Vec<String> = jobs(&c).unwrap().iter().map(|j| j.kind.name()).collect();
        assert_eq!(names, ["backup a", "prune", "check"]);
        let c = Config::parse(
            "[service]\ncheck = \"0 5 * * *\"\ncheck_read_data_subset = \"500%\"\n",
            None,
            &|_| None,
        )
        .unwrap();
        assert!(jobs(&c).is_err());
    }

    #[test]
    fn the_wal_archive_lags_when_its_newest_segment_is_older_than_the_rpo() {
        use crate::sources::postgres::wal::verify::Window;
        let now = t("2024-05-01T12:00:00Z").fixed_offset();
        let w = |archived: Option<&str>, gaps: usize| WalOverview {
            ok: gaps == 0,
            gaps,
            window: Some(Window {
                earliest_lsn: "0/2000028".into(),
                earliest_time: t("2024-05-01T10:00:00Z").fixed_offset(),
                earliest_timeline: 1,
                earliest_backup: "abcdef0123".into(),
                latest_lsn: "0/5000000".into(),
                latest_timeline: 1,
                latest_segment: "000000010000000000000004".into(),
                latest_archived_at: archived.map(t),
            }),
            latest_commit_time: None,
        };
        let rpo = Duration::from_secs(900);
        // Archived 10 min ago: within 15 min.
        assert_eq!(
            wal_lag(&w(Some("2024-05-01T11:50:00Z"), 0), rpo, now),
            Some(None)
        );
        let lag = wal_lag(&w(Some("2024-05-01T11:40:00Z"), 0), rpo, now)
            .unwrap()
            .unwrap();
        assert!(lag.error.contains("20m old (rpo 15m)"), "{}", lag.error);
        let gap = wal_lag(&w(Some("2024-05-01T11:59:00Z"), 2), rpo, now)
            .unwrap()
            .unwrap();
        assert!(gap.error.contains("2 gap(s)"), "{}", gap.error);
        // No archive time known: cannot tell.
        assert_eq!(wal_lag(&w(None, 0), rpo, now), None);
        assert_eq!(w(Some("2024-05-01T11:50:00Z"), 0).window_secs(), Some(6600));
    }

    #[test]
    fn the_newest_prune_of_each_repository_comes_from_the_history() {
        let rec = |minute: u32, results: &[(&str, RunStatus)]| RunRecord {
            id: Id::default(),
            run: String::new(),
            job: "prune".into(),
            source: String::new(),
            source_type: "repository".into(),
            host: "h".into(),
            started: t(&format!("2024-05-01T00:{minute:02}:00Z")).fixed_offset(),
            finished: t(&format!("2024-05-01T00:{minute:02}:00Z")).fixed_offset(),
            status: RunStatus::Ok,
            error: None,
            bytes_read: 0,
            bytes_added: 0,
            snapshot: None,
            drill: None,
            repositories: results
                .iter()
                .map(|(name, status)| RepositoryRun {
                    repository: name.to_string(),
                    status: *status,
                    error: None,
                    snapshots_removed: 0,
                    bytes_freed: 0,
                })
                .collect(),
        };
        let history = [
            rec(1, &[("primary", RunStatus::Ok), ("offsite", RunStatus::Ok)]),
            rec(
                2,
                &[("primary", RunStatus::Ok), ("offsite", RunStatus::Failed)],
            ),
        ];
        let p = prunes_of(&history);
        assert!(p["primary"].ok);
        assert_eq!(p["primary"].last_success, Some(t("2024-05-01T00:02:00Z")));
        assert!(!p["offsite"].ok);
        assert_eq!(p["offsite"].finished, t("2024-05-01T00:02:00Z"));
        assert_eq!(p["offsite"].last_success, Some(t("2024-05-01T00:01:00Z")));
        let e = prune_verdict(&[
            history[1].repositories[0].clone(),
            RepositoryRun {
                error: Some("cannot reach it".into()),
                ..history[1].repositories[1].clone()
            },
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("1 of 2 repositories (offsite: cannot reach it)"),
            "{e}"
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let base = t("2024-05-01T00:00:00Z");
        for _ in 0..100 {
            let j = jittered(base, Some(Duration::from_secs(60)));
            assert!(j >= base && j < base + chrono::Duration::seconds(60));
        }
        assert_eq!(jittered(base, None), base);
    }
}
