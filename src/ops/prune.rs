//! `prune`: remove the data no snapshot needs.

use super::mib;
use crate::progress::Progress;
use crate::repo::lock::{ExclusiveLock, Lock};
use crate::repo::prune::{self, Run};
use crate::repo::Repository;
use anyhow::Result;
use serde::Serialize;
use std::sync::Arc;

/// What prune did, or with `dry_run` would do.
#[derive(Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    #[serde(flatten)]
    pub report: prune::PruneReport,
}

/// Prune under a lock of its own (none for a dry run). A pack is repacked when more than
/// `max_unused_pct` percent of its blobs' bytes is unused; `progress` hears each step.
pub fn prune(
    repo: &Arc<Repository>,
    dry_run: bool,
    max_unused_pct: f64,
    progress: &Progress,
) -> Result<PruneReport> {
    repo.require_full("prune")?;
    if dry_run {
        return run(Run::DryRun(repo), max_unused_pct, progress);
    }
    let lock = Lock::exclusive(repo, "prune")?;
    prune_locked(&lock, max_unused_pct, progress)
}

/// Prune under a lock already held (`forget --prune`).
pub fn prune_locked(
    lock: &ExclusiveLock,
    max_unused_pct: f64,
    progress: &Progress,
) -> Result<PruneReport> {
    run(Run::Delete(lock), max_unused_pct, progress)
}

fn run(run: Run<'_>, max_unused_pct: f64, progress: &Progress) -> Result<PruneReport> {
    let dry_run = matches!(run, Run::DryRun(_));
    Ok(PruneReport {
        dry_run,
        report: prune::prune(run, max_unused_pct / 100.0, progress)?,
    })
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.report;
        write!(
            f,
            "{}{} of {} pack(s) unused, {} to repack, {} unindexed; {} {}; {} blobs used, {} unused",
            if self.dry_run { "dry run: " } else { "" },
            r.packs_deleted,
            r.packs_total,
            r.packs_repacked,
            r.packs_unindexed,
            if self.dry_run { "would free" } else { "freed" },
            mib(r.bytes_deleted),
            r.blobs_used,
            r.blobs_unused
        )
    }
}
