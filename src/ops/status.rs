//! `status`: each declared source's newest successful snapshot, its age against the
//! source's `rpo`, its last failure when newer, and for physical PostgreSQL the recoverable
//! window. Read from the repository alone (snapshots and the run history), so it works
//! from any host with the config file.

use super::mib;
use crate::config::sources::PgMode;
use crate::config::{Config, SourceKind};
use crate::error::{Error, ErrorKind};
use crate::repo::runs::{self, RunStatus};
use crate::repo::Repository;
use crate::sources::postgres::wal::verify::Window;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::sync::Arc;

/// `status --json`.
#[derive(Serialize)]
pub struct StatusReport {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub sources: Vec<SourceStatus>,
    /// Sources out of their RPO, or never backed up.
    pub breached: usize,
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
    let now = chrono::Local::now().fixed_offset();
    let snaps = repo.load_snapshots()?;
    let history = runs::load(repo)?;
    let physical = config
        .sources
        .iter()
        .any(|s| matches!(&s.kind, SourceKind::Postgres(p) if p.mode == PgMode::Physical));
    let wal = if physical {
        Some(super::wal_verify::wal_verify(repo)?.0)
    } else {
        None
    };
    let mut out = Vec::new();
    for src in &config.sources {
        let newest = snaps
            .iter()
            .filter(|s| s.source.as_deref() == Some(&src.name) && !s.has_tag("safety-backup"))
            .max_by_key(|s| s.time);
        let last_success = newest.map(|s| LastSuccess {
            snapshot: s.id.to_hex(),
            time: s.time,
            age_secs: secs(s.time, now),
            size: s.size,
        });
        let last_failure = history
            .iter()
            .filter(|r| r.source == src.name && r.status == RunStatus::Failed)
            .filter(|r| newest.is_none_or(|s| r.finished > s.time))
            .max_by_key(|r| r.finished)
            .map(|r| LastFailure {
                time: r.finished,
                age_secs: secs(r.finished, now),
                error: r.error.clone(),
                host: r.host.clone(),
            });
        let state = match (&last_success, src.rpo) {
            (None, _) => State::Breached,
            (Some(s), Some(rpo)) if s.age_secs > rpo.as_secs() => State::Breached,
            _ => State::Ok,
        };
        let recoverable = match (&src.kind, &wal) {
            (SourceKind::Postgres(p), Some(w)) if p.mode == PgMode::Physical => Some(Recoverable {
                ok: w.ok,
                window: w.window.clone(),
                latest_commit_time: w.latest_commit_time,
            }),
            _ => None,
        };
        out.push(SourceStatus {
            source: src.name.clone(),
            source_type: src.kind.type_name().to_string(),
            state,
            rpo_secs: src.rpo.map(|d| d.as_secs()),
            last_success,
            last_failure,
            recoverable,
        });
    }
    Ok(StatusReport {
        time: now,
        breached: out.iter().filter(|s| s.state == State::Breached).count(),
        sources: out,
    })
}

impl StatusReport {
    /// Exit 1 when a source is out of its RPO (or was never backed up).
    pub fn verdict(&self) -> Result<()> {
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
