//! `status`: each declared source's newest successful snapshot, its age against the
//! source's `rpo`, its last failure when newer, and for physical PostgreSQL the recoverable
//! window. Read from the repository alone (snapshots and the run history), so it works
//! from any host with the config file.

use super::mib;
use crate::config::sources::PgMode;
use crate::config::{Config, SourceKind};
use crate::error::{Error, ErrorKind};
use crate::repo::runs::{self, RunRecord, RunStatus};
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::sources::postgres::wal::verify::Window;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `status --json`.
#[derive(Serialize)]
pub struct StatusReport {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub sources: Vec<SourceStatus>,
    /// Sources out of their RPO, or never backed up.
    pub breached: usize,
    /// Sources whose last successful drill is older than their `drill_max_age` (or that
    /// have none).
    pub drills_overdue: usize,
}

#[derive(Serialize)]
pub struct SourceStatus {
    pub source: String,
    #[serde(rename = "type")]
    pub source_type: String,
    /// `ok`; `breached` (older than `rpo`, or never backed up).
    pub state: State,
    pub rpo_secs: Option<u64>,
    pub last_success: Option<LastSuccess>,
    /// The newest failed run, when newer than the last success.
    pub last_failure: Option<LastFailure>,
    /// Physical PostgreSQL: the window point-in-time recovery can reach (wal-verify).
    pub recoverable: Option<Recoverable>,
    /// The newest restore drill (`coffer drill`), passed or failed.
    pub last_drill: Option<DrillState>,
    /// Its `drill_max_age`, when set.
    pub drill_max_age_secs: Option<u64>,
    /// No drill passed within `drill_max_age`.
    pub drill_overdue: bool,
}

#[derive(Serialize)]
pub struct DrillState {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub passed: bool,
    pub rto_secs: f64,
    pub snapshot: Option<String>,
    /// When the newest drill passed (this one, or an earlier one).
    pub last_passed: Option<DateTime<FixedOffset>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Breached,
}

#[derive(Serialize)]
pub struct LastSuccess {
    pub snapshot: String,
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub size: u64,
}

#[derive(Serialize)]
pub struct LastFailure {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub error: Option<String>,
    pub host: String,
}

#[derive(Serialize)]
pub struct Recoverable {
    /// No base backup is cut off by a gap in the archive.
    pub ok: bool,
    pub window: Option<Window>,
    pub latest_commit_time: Option<DateTime<FixedOffset>>,
}

fn secs(from: DateTime<FixedOffset>, to: DateTime<FixedOffset>) -> u64 {
    (to - from).num_seconds().max(0) as u64
}

pub fn status(repo: &Arc<Repository>, config: &Config) -> Result<StatusReport> {
    if config.sources.is_empty() {
        return Err(Error::usage(
            "the config file declares no sources: status reports on [sources.NAME] tables",
        )
        .into());
    }
    let overview = Overview::read(repo, config)?;
    Ok(overview.report(config, chrono::Local::now().fixed_offset()))
}

/// What `status` reads from the repository about the declared sources: the snapshots, the
/// run history and (with a physical source) the WAL archive. `coffer run` reads it once at
/// start, then keeps it up to date from its own runs, so that its metrics and status page
/// never read the storage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overview {
    /// By declared source name.
    pub sources: BTreeMap<String, SourceOverview>,
    /// The WAL archive (wal-verify), when a source is physical PostgreSQL.
    pub wal: Option<WalOverview>,
    /// The newest successful `check` in the run history.
    pub check_last_success: Option<DateTime<FixedOffset>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceOverview {
    /// Snapshots of the source (safety backups included).
    pub snapshots: u64,
    /// Its newest snapshot, safety backups aside.
    pub last_success: Option<Success>,
    /// Its newest failed run, when newer than the last success.
    pub last_failure: Option<Failure>,
    /// Its newest run in the history, ok or failed.
    pub last_run: Option<LastRun>,
    /// Its newest restore drill.
    pub last_drill: Option<LastDrill>,
    /// When its newest passing drill finished.
    pub last_drill_passed: Option<DateTime<FixedOffset>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastDrill {
    pub finished: DateTime<FixedOffset>,
    pub passed: bool,
    pub rto_secs: f64,
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Success {
    pub snapshot: String,
    pub time: DateTime<FixedOffset>,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub time: DateTime<FixedOffset>,
    pub error: Option<String>,
    pub host: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastRun {
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    pub ok: bool,
    pub bytes_read: u64,
    pub bytes_added: u64,
}

/// The WAL archive as wal-verify sees it.
#[derive(Clone, Debug, Serialize)]
pub struct WalOverview {
    /// No base backup is cut off by a gap.
    pub ok: bool,
    pub gaps: usize,
    pub window: Option<Window>,
    pub latest_commit_time: Option<DateTime<FixedOffset>>,
}

impl WalOverview {
    pub fn from_report(r: &crate::sources::postgres::wal::verify::Report) -> WalOverview {
        WalOverview {
            ok: r.ok,
            gaps: r.gaps.len(),
            window: r.window.clone(),
            latest_commit_time: r.latest_commit_time,
        }
    }

    /// When the newest segment reachable without a gap was archived.
    pub fn newest_segment_time(&self) -> Option<DateTime<FixedOffset>> {
        self.window
            .as_ref()
            .and_then(|w| w.latest_archived_at)
            .map(|t| t.fixed_offset())
    }

    /// From the end of the oldest usable base backup to the latest commit recovery reaches
    /// (or, when pg_waldump found none, to when the newest segment was archived).
    pub fn window_secs(&self) -> Option<u64> {
        let w = self.window.as_ref()?;
        let end = self.latest_commit_time.or(self.newest_segment_time())?;
        Some(secs(w.earliest_time, end))
    }
}

/// Whether any declared source is physical PostgreSQL (and so has a WAL archive).
pub fn has_physical(config: &Config) -> bool {
    config
        .sources
        .iter()
        .any(|s| matches!(&s.kind, SourceKind::Postgres(p) if p.mode == PgMode::Physical))
}

impl Overview {
    /// One read of the repository.
    pub fn read(repo: &Arc<Repository>, config: &Config) -> Result<Overview> {
        let wal = Overview::read_wal(repo, config)?;
        Ok(Overview::from_parts(
            config,
            &repo.load_snapshots()?,
            &runs::load(repo)?,
            wal,
        ))
    }

    /// The WAL archive's view, when a declared source is physical.
    pub fn read_wal(repo: &Arc<Repository>, config: &Config) -> Result<Option<WalOverview>> {
        Ok(if has_physical(config) {
            Some(WalOverview::from_report(
                &super::wal_verify::wal_verify(repo)?.0,
            ))
        } else {
            None
        })
    }

    /// From the snapshots and the run history, already read.
    pub fn from_parts(
        config: &Config,
        snaps: &[Snapshot],
        history: &[RunRecord],
        wal: Option<WalOverview>,
    ) -> Overview {
        let mut sources = BTreeMap::new();
        for src in &config.sources {
            let mine = || {
                snaps
                    .iter()
                    .filter(|s| s.source.as_deref() == Some(&src.name))
            };
            let newest = mine()
                .filter(|s| !s.has_tag("safety-backup"))
                .max_by_key(|s| s.time);
            let runs = || {
                history
                    .iter()
                    .filter(|r| r.source == src.name && r.job == "backup")
            };
            let drills = || {
                history
                    .iter()
                    .filter(|r| r.source == src.name && r.job == "drill")
            };
            let last_failure = runs()
                .filter(|r| r.status == RunStatus::Failed)
                .filter(|r| newest.is_none_or(|s| r.finished > s.time))
                .max_by_key(|r| r.finished)
                .map(|r| Failure {
                    time: r.finished,
                    error: r.error.clone(),
                    host: r.host.clone(),
                });
            let last_run = runs().max_by_key(|r| r.finished).map(|r| LastRun {
                started: r.started,
                finished: r.finished,
                ok: r.status == RunStatus::Ok,
                bytes_read: r.bytes_read,
                bytes_added: r.bytes_added,
            });
            sources.insert(
                src.name.clone(),
                SourceOverview {
                    snapshots: mine().count() as u64,
                    last_success: newest.map(|s| Success {
                        snapshot: s.id.to_hex(),
                        time: s.time,
                        size: s.size,
                    }),
                    last_failure,
                    last_run,
                    last_drill: drills().max_by_key(|r| r.finished).map(|r| LastDrill {
                        finished: r.finished,
                        passed: r.status == RunStatus::Ok,
                        rto_secs: r.drill.as_ref().map_or(0.0, |d| d.rto_secs),
                        snapshot: r.snapshot.clone(),
                    }),
                    last_drill_passed: drills()
                        .filter(|r| r.status == RunStatus::Ok)
                        .map(|r| r.finished)
                        .max(),
                },
            );
        }
        let check_last_success = history
            .iter()
            .filter(|r| r.job == "check" && r.status == RunStatus::Ok)
            .map(|r| r.finished)
            .max();
        Overview {
            sources,
            wal,
            check_last_success,
        }
    }

    /// The status of each declared source at `now`.
    pub fn report(&self, config: &Config, now: DateTime<FixedOffset>) -> StatusReport {
        let mut out = Vec::new();
        let none = SourceOverview::default();
        for src in &config.sources {
            let o = self.sources.get(&src.name).unwrap_or(&none);
            let last_success = o.last_success.as_ref().map(|s| LastSuccess {
                snapshot: s.snapshot.clone(),
                time: s.time,
                age_secs: secs(s.time, now),
                size: s.size,
            });
            let last_failure = o.last_failure.as_ref().map(|f| LastFailure {
                time: f.time,
                age_secs: secs(f.time, now),
                error: f.error.clone(),
                host: f.host.clone(),
            });
            let state = match (&last_success, src.rpo) {
                (None, _) => State::Breached,
                (Some(s), Some(rpo)) if s.age_secs > rpo.as_secs() => State::Breached,
                _ => State::Ok,
            };
            let recoverable = match (&src.kind, &self.wal) {
                (SourceKind::Postgres(p), Some(w)) if p.mode == PgMode::Physical => {
                    Some(Recoverable {
                        ok: w.ok,
                        window: w.window.clone(),
                        latest_commit_time: w.latest_commit_time,
                    })
                }
                _ => None,
            };
            let drill_overdue = src.drill_max_age.is_some_and(|max| {
                o.last_drill_passed
                    .is_none_or(|t| secs(t, now) > max.as_secs())
            });
            out.push(SourceStatus {
                source: src.name.clone(),
                source_type: src.kind.type_name().to_string(),
                state,
                rpo_secs: src.rpo.map(|d| d.as_secs()),
                last_success,
                last_failure,
                recoverable,
                last_drill: o.last_drill.as_ref().map(|d| DrillState {
                    time: d.finished,
                    age_secs: secs(d.finished, now),
                    passed: d.passed,
                    rto_secs: d.rto_secs,
                    snapshot: d.snapshot.clone(),
                    last_passed: o.last_drill_passed,
                }),
                drill_max_age_secs: src.drill_max_age.map(|d| d.as_secs()),
                drill_overdue,
            });
        }
        StatusReport {
            time: now,
            breached: out.iter().filter(|s| s.state == State::Breached).count(),
            drills_overdue: out.iter().filter(|s| s.drill_overdue).count(),
            sources: out,
        }
    }
}

impl StatusReport {
    /// Exit 1 when a source is out of its RPO (or was never backed up), or its drills are
    /// overdue.
    pub fn verdict(&self) -> Result<()> {
        if self.breached == 0 && self.drills_overdue > 0 {
            let names: Vec<&str> = self
                .sources
                .iter()
                .filter(|s| s.drill_overdue)
                .map(|s| s.source.as_str())
                .collect();
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "no restore drill passed within drill_max_age for: {}",
                    names.join(", ")
                ),
            )
            .into());
        }
        if self.breached == 0 {
            return Ok(());
        }
        let names: Vec<&str> = self
            .sources
            .iter()
            .filter(|s| s.state == State::Breached)
            .map(|s| s.source.as_str())
            .collect();
        Err(Error::new(
            ErrorKind::Other,
            format!(
                "{} of {} sources are out of their RPO or were never backed up: {}",
                self.breached,
                self.sources.len(),
                names.join(", ")
            ),
        )
        .into())
    }
}

/// `3d 4h`, `2h 5m`, `40s`.
pub fn human(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<20} {:<9} {:<10} {:>9} {:>9} {:>11}  last success",
            "source", "type", "state", "snapshot", "age", "rpo", "size"
        )?;
        for s in &self.sources {
            let (snap, age, size, when) = match &s.last_success {
                Some(l) => (
                    l.snapshot[..8].to_string(),
                    human(l.age_secs),
                    mib(l.size),
                    l.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into(), "never".into()),
            };
            writeln!(
                f,
                "{:<16} {:<20} {:<9} {:<10} {:>9} {:>9} {:>11}  {when}",
                s.source,
                s.source_type,
                match s.state {
                    State::Ok => "OK",
                    State::Breached => "BREACHED",
                },
                snap,
                age,
                s.rpo_secs.map(human).unwrap_or("-".into()),
                size
            )?;
            if let Some(l) = &s.last_failure {
                writeln!(
                    f,
                    "  last failure {} ago on {}: {}",
                    human(l.age_secs),
                    l.host,
                    l.error.as_deref().unwrap_or("(no message)")
                )?;
            }
            match (&s.last_drill, s.drill_overdue) {
                (Some(d), overdue) => writeln!(
                    f,
                    "  last drill {} {} ago (RTO {:.1} s){}",
                    if d.passed { "passed" } else { "FAILED" },
                    human(d.age_secs),
                    d.rto_secs,
                    if overdue {
                        " — DRILL OVERDUE: no drill passed within drill_max_age"
                    } else {
                        ""
                    }
                )?,
                (None, true) => writeln!(f, "  never drilled — DRILL OVERDUE: run coffer drill")?,
                (None, false) => {}
            }
            if let Some(r) = &s.recoverable {
                match &r.window {
                    Some(w) => writeln!(
                        f,
                        "  recoverable from {} (end of base backup {}) to {}{}{}",
                        w.earliest_time.format("%Y-%m-%d %H:%M:%S"),
                        &w.earliest_backup.get(..8).unwrap_or(&w.earliest_backup),
                        w.latest_segment,
                        r.latest_commit_time
                            .map(|t| format!(", last commit {}", t.format("%Y-%m-%d %H:%M:%S")))
                            .unwrap_or_default(),
                        if r.ok {
                            ""
                        } else {
                            " — GAPS: run coffer wal-verify"
                        }
                    )?,
                    None => writeln!(f, "  no recoverable window: run coffer wal-verify")?,
                }
            }
        }
        write!(
            f,
            "{} of {} sources within their RPO",
            self.sources.len() - self.breached,
            self.sources.len()
        )
    }
}
