//! `wal-verify`: the WAL archive against every physical base backup.

use crate::error::Error;
use crate::repo::lock::Lock;
use crate::repo::Repository;
use crate::sources::postgres::wal::verify::{self, Report, Window};
use anyhow::Result;
use serde::Serialize;
use std::fmt::{self, Display, Formatter};
use std::sync::Arc;

/// What wal-verify found (`wal-verify --json`: the report itself).
#[derive(Serialize)]
#[serde(transparent)]
pub struct WalVerifyReport(pub Report);

pub fn wal_verify(repo: &Arc<Repository>) -> Result<WalVerifyReport> {
    let _lock = Lock::shared(repo, "wal-verify")?;
    Ok(WalVerifyReport(verify::verify(repo)?))
}

/// A run of missing or removed segments: one name, or `FIRST to LAST (N segments)`.
pub fn segment_run(first: &str, last: &str, count: u64) -> String {
    if count == 1 {
        first.to_string()
    } else {
        format!("{first} to {last} ({count} segments)")
    }
}

impl WalVerifyReport {
    /// The integrity error when a gap affects a base backup.
    pub fn verdict(&self) -> Result<()> {
        let r = &self.0;
        if r.ok {
            return Ok(());
        }
        let gaps: Vec<String> = r
            .gaps
            .iter()
            .map(|g| {
                format!(
                    "{} (base backup(s) {})",
                    segment_run(&g.first, &g.last, g.count),
                    g.backups.join(", ")
                )
            })
            .collect();
        Err(Error::integrity(format!(
            "the WAL archive has {} gap(s) affecting base backups: missing {}",
            r.gaps.len(),
            gaps.join("; ")
        ))
        .into())
    }
}

fn window_text(w: &Window) -> String {
    let latest_time = match w.latest_archived_at {
        Some(t) => format!(
            "archived {}; the last commit in it is no later",
            t.with_timezone(&chrono::Local).to_rfc3339()
        ),
        None => "time unknown: the storage gives no write time".to_string(),
    };
    format!(
        "from {} ({}, end of base backup {}) to {} on timeline {} (end of segment {}, {latest_time})",
        w.earliest_lsn,
        w.earliest_time.to_rfc3339(),
        &w.earliest_backup[..w.earliest_backup.len().min(8)],
        w.latest_lsn,
        w.latest_timeline,
        w.latest_segment,
    )
}

impl Display for WalVerifyReport {
    fn fmt(&self, out: &mut Formatter<'_>) -> fmt::Result {
        let r = &self.0;
        writeln!(
            out,
            "WAL archive{}: {} segment(s), {} history file(s), {} partial, {} backup label(s); {} MiB segments",
            r.system_identifier
                .as_ref()
                .map(|s| format!(" of cluster {s}"))
                .unwrap_or_default(),
            r.segments,
            r.history_files,
            r.partial_files,
            r.backup_files,
            r.segment_size >> 20
        )?;
        for t in &r.timelines {
            let from = match (&t.parent, &t.switch_lsn) {
                (Some(p), Some(l)) => format!(" (from timeline {p} at {l})"),
                _ => String::new(),
            };
            let extent = match (&t.first_segment, &t.last_segment) {
                (Some(f), Some(l)) => format!(
                    "{} ({} segment(s){})",
                    if f == l {
                        f.clone()
                    } else {
                        format!("{f} to {l}")
                    },
                    t.segments,
                    if t.holes > 0 {
                        format!(", {} missing in between", t.holes)
                    } else {
                        String::new()
                    }
                ),
                _ => "no segment".to_string(),
            };
            writeln!(out, "  timeline {}{from}: {extent}", t.timeline)?;
        }
        for b in &r.backups {
            let verdict = match (b.status, &b.window) {
                ("ok", Some(w)) => format!(
                    "ok, recoverable from {} to {} on timeline {}",
                    w.earliest_lsn, w.latest_lsn, w.latest_timeline
                ),
                (_, Some(w)) => format!(
                    "GAP at {}: recoverable from {} only up to {} on timeline {}",
                    b.first_missing.as_deref().unwrap_or("?"),
                    w.earliest_lsn,
                    w.latest_lsn,
                    w.latest_timeline
                ),
                _ => format!(
                    "INCOMPLETE: its segment {} is missing; it cannot be restored",
                    b.first_missing.as_deref().unwrap_or("?")
                ),
            };
            let tls: Vec<String> = b.timelines.iter().map(|t| t.to_string()).collect();
            writeln!(
                out,
                "base backup {} (timeline {}, WAL {} to {}, finished {}; follows timeline(s) {}): {verdict}",
                b.short_id,
                b.timeline,
                b.start_lsn,
                b.stop_lsn,
                b.stopped_at.to_rfc3339(),
                tls.join(" → ")
            )?;
            for n in &b.notes {
                writeln!(out, "  note: {n}")?;
            }
        }
        for g in &r.gaps {
            writeln!(
                out,
                "missing: {} (WAL {} to {}), needed by base backup(s) {}",
                segment_run(&g.first, &g.last, g.count),
                g.start_lsn,
                g.end_lsn,
                g.backups.join(", ")
            )?;
        }
        match &r.window {
            Some(w) => {
                writeln!(out, "recoverable window: {}", window_text(w))?;
                if let Some(t) = r.latest_commit_time {
                    writeln!(
                        out,
                        "newest archived commit: {} (the latest --target-time that recovery can reach)",
                        t.to_rfc3339()
                    )?;
                }
            }
            None if !r.backups.is_empty() => {
                writeln!(out, "recoverable window: none (no base backup is complete)")?
            }
            None => {}
        }
        for n in &r.notes {
            writeln!(out, "note: {n}")?;
        }
        Ok(())
    }
}
