//! `forget`: remove snapshots by a retention policy and/or by id, then the archived WAL no
//! remaining base backup and no live hold needs, then (optionally) prune.

use super::mib;
use super::prune::{prune_locked, PruneReport};
use super::wal_verify::segment_run;
use crate::error::Error;
use crate::progress::Progress;
use crate::repo::forget::{self, Decision, Policy};
use crate::repo::lock::{ExclusiveLock, Lock};
use crate::repo::snapshot::Snapshot;
use crate::repo::{pick_snapshot, Repository};
use crate::sources::postgres::wal::archive::{segment_name, WalFileKind};
use crate::sources::postgres::wal::hold::Hold;
use crate::sources::postgres::wal::retention::{self, Plan};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct ForgetOptions {
    /// Snapshots to forget by id (prefix), besides the policy's.
    pub snapshots: Vec<String>,
    pub policy: Policy,
    /// Only snapshots with all these tags are subject to the policy.
    pub tags: Vec<String>,
    /// Only snapshots of these declared sources are subject to the policy (all when empty).
    pub sources: Vec<String>,
    /// What groups snapshots before the policy applies (`host`, `paths`, `tags`).
    pub group_by: Vec<String>,
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// Prune afterwards (not with `dry_run`).
    pub prune: bool,
}

impl ForgetOptions {
    /// Refuse options that forget nothing (before a repository is opened).
    pub fn check(&self) -> Result<()> {
        if self.policy.is_empty() && self.snapshots.is_empty() {
            return Err(Error::usage(
                "no policy given: use --keep-* options or name snapshots to forget",
            )
            .into());
        }
        Ok(())
    }
}

/// What forget did (`forget --json`).
#[derive(Serialize)]
pub struct ForgetReport {
    pub groups: Vec<Group>,
    pub dry_run: bool,
    /// Every snapshot removed (or with `dry_run`, to be removed).
    pub removed: Vec<String>,
    pub wal: WalRetention,
    /// With `prune`.
    #[serde(skip)]
    pub prune: Option<PruneReport>,
}

/// The policy's decisions for one group.
#[derive(Serialize)]
pub struct Group {
    pub group: String,
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    #[serde(skip)]
    pub decisions: Vec<Decision>,
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group {}:", self.group)?;
        for d in &self.decisions {
            write!(
                f,
                "\n  {} {} {}  {}",
                if d.keep { "keep  " } else { "remove" },
                d.snapshot.id.short(),
                d.snapshot.time.format("%Y-%m-%d %H:%M:%S"),
                d.reasons.join(",")
            )?;
        }
        Ok(())
    }
}

/// What WAL retention did, or would do.
#[derive(Serialize)]
pub struct WalRetention {
    /// The repository has a WAL archive.
    pub archived: bool,
    /// Why nothing is removed, when so.
    pub skipped: Option<String>,
    pub oldest_backup: Option<String>,
    /// The first segment kept.
    pub keep_from: Option<String>,
    /// The hold that moved `keep_from` earlier.
    pub held_by: Option<String>,
    pub holds: Vec<HoldSummary>,
    pub expired_holds: Vec<HoldSummary>,
    pub remove_files: usize,
    pub remove_bytes: u64,
    pub removed_files: usize,
    pub removed_bytes: u64,
    pub kept_files: usize,
}

#[derive(Serialize)]
pub struct HoldSummary {
    pub id: String,
    pub purpose: String,
    pub host: String,
    pub start_wal: String,
    pub refreshed: DateTime<FixedOffset>,
    pub expires: Option<DateTime<FixedOffset>>,
}

impl From<&Hold> for HoldSummary {
    fn from(h: &Hold) -> HoldSummary {
        HoldSummary {
            id: h.id.clone(),
            purpose: h.purpose.clone(),
            host: h.host.clone(),
            start_wal: h.start_wal.clone(),
            refreshed: h.refreshed,
            expires: h.expires(),
        }
    }
}

/// Forget. `on_group` hears each group's decisions as they are made; `log` hears what is
/// removed (or would be) and prune's steps.
pub fn forget(
    repo: &Arc<Repository>,
    opts: &ForgetOptions,
    on_group: &dyn Fn(&Group),
    log: &Progress,
) -> Result<ForgetReport> {
    opts.check()?;
    let lock = if opts.dry_run {
        None
    } else {
        Some(Lock::exclusive(repo, "forget")?)
    };
    // Every snapshot, strictly: one that cannot be read, or that needs a feature this
    // coffer does not know, stops forget before anything is decided or deleted (retention
    // on a subset could remove what the rest would keep).
    let all = repo.load_snapshots_strict()?;
    let mut remove = Vec::new();
    for spec in &opts.snapshots {
        remove.push(pick_snapshot(&all, spec)?);
    }
    let mut groups = Vec::new();
    if !opts.policy.is_empty() {
        let candidates: Vec<_> = all
            .iter()
            .filter(|s| opts.tags.iter().all(|t| s.has_tag(t)))
            .filter(|s| {
                opts.sources.is_empty()
                    || s.source.as_ref().is_some_and(|n| opts.sources.contains(n))
            })
            .filter(|s| !remove.iter().any(|r| r.id == s.id))
            .cloned()
            .collect();
        for (group, list) in
            forget::group(candidates, &opts.group_by).map_err(|e| Error::usage(e.to_string()))?
        {
            let decisions = forget::apply(list, &opts.policy);
            let ids = |keep: bool| {
                decisions
                    .iter()
                    .filter(|d| d.keep == keep)
                    .map(|d| d.snapshot.id.to_hex())
                    .collect()
            };
            let g = Group {
                group,
                keep: ids(true),
                remove: ids(false),
                decisions,
            };
            on_group(&g);
            remove.extend(
                g.decisions
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| d.snapshot.clone()),
            );
            groups.push(g);
        }
    }
    // What stays: the snapshots read above (forget holds the exclusive lock, so no backup
    // adds one meanwhile) less those removed.
    let kept: Vec<_> = all
        .into_iter()
        .filter(|s| !remove.iter().any(|r| r.id == s.id))
        .collect();
    match &lock {
        None => log.log(&format!(
            "would remove {} snapshot(s) (dry run: nothing changed)",
            remove.len()
        )),
        Some(lock) => {
            let n = forget::remove(lock, &remove)?;
            log.log(&format!("removed {n} snapshot(s)"));
        }
    }
    let wal = wal_retention(repo, &kept, lock.as_ref(), log)?;
    let prune = match &lock {
        Some(lock) if opts.prune => Some(prune_locked(lock, 10.0, log)?),
        _ => None,
    };
    Ok(ForgetReport {
        groups,
        dry_run: opts.dry_run,
        removed: remove.iter().map(|s| s.id.to_hex()).collect(),
        wal,
        prune,
    })
}

/// Remove (under `lock`; without one, list) the archived WAL that none of the `kept`
/// snapshots and no live WAL hold needs, and remove expired holds.
pub fn wal_retention(
    repo: &Repository,
    kept: &[Snapshot],
    lock: Option<&ExclusiveLock>,
    log: &Progress,
) -> Result<WalRetention> {
    let plan = retention::plan(repo, kept)?;
    let mut report = WalRetention {
        archived: plan.archived,
        skipped: plan.skipped.clone(),
        oldest_backup: plan.oldest_backup.clone(),
        keep_from: plan.keep_from.clone(),
        held_by: plan.held_by.clone(),
        holds: plan.holds.iter().map(HoldSummary::from).collect(),
        expired_holds: plan.expired.iter().map(HoldSummary::from).collect(),
        remove_files: plan.remove.len(),
        remove_bytes: plan.bytes(),
        removed_files: 0,
        removed_bytes: 0,
        kept_files: plan.kept,
    };
    // Live holds keep WAL, and say so; expired ones are removed.
    for h in &plan.holds {
        log.log(&format!(
            "WAL archive: kept from {} on for WAL hold {} ({} on {}; last used {}, expires {})",
            h.start_wal,
            h.id,
            h.purpose,
            h.host,
            h.refreshed.to_rfc3339(),
            h.expires()
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "never".into())
        ));
    }
    for h in &plan.expired {
        log.log(&format!(
            "WAL archive: WAL hold {} ({} on {}) expired at {}{}",
            h.id,
            h.purpose,
            h.host,
            h.expires()
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "?".into()),
            if lock.is_none() {
                "; it would be removed"
            } else {
                "; removed"
            }
        ));
    }
    if let Some(why) = &plan.skipped {
        if plan.archived {
            log.log(&format!("WAL archive: {why}"));
        }
        if let Some(lock) = lock {
            retention::apply(lock, &plan)?;
        }
        return Ok(report);
    }
    let from = format!(
        "older than {}, {}",
        plan.keep_from.as_deref().unwrap_or("?"),
        match &plan.held_by {
            Some(id) => format!(
                "where WAL hold {id} starts (the oldest kept base backup {} starts later)",
                plan.oldest_backup.as_deref().unwrap_or("?")
            ),
            None => format!(
                "the start of the oldest kept base backup {}",
                plan.oldest_backup.as_deref().unwrap_or("?")
            ),
        }
    );
    if plan.remove.is_empty() {
        log.log(&format!(
            "WAL archive: nothing to remove ({} file(s) kept; none {from})",
            plan.kept
        ));
        if let Some(lock) = lock {
            retention::apply(lock, &plan)?;
        }
        return Ok(report);
    }
    let Some(lock) = lock else {
        log.log(&format!(
            "WAL archive: would remove {} file(s), {}, {from} (dry run: nothing changed):",
            plan.remove.len(),
            mib(plan.bytes())
        ));
        for line in removal_lines(&plan) {
            log.log(&format!("  {line}"));
        }
        return Ok(report);
    };
    let (n, bytes) = retention::apply(lock, &plan)?;
    log.log(&format!(
        "WAL archive: removed {n} file(s), {}, {from}; {} file(s) kept",
        mib(bytes),
        plan.kept
    ));
    report.removed_files = n;
    report.removed_bytes = bytes;
    Ok(report)
}

/// The files a plan removes: consecutive segments of a timeline as one line, other files
/// one by one.
fn removal_lines(plan: &Plan) -> Vec<String> {
    let mut runs: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    let segment = |f: &&retention::WalFile| f.kind == WalFileKind::Segment;
    for f in plan.remove.iter().filter(segment) {
        let r = runs.entry(f.timeline).or_default();
        match r.last_mut() {
            Some((_, last)) if *last + 1 == f.segno => *last = f.segno,
            _ => r.push((f.segno, f.segno)),
        }
    }
    let seg = plan.segment_size;
    let mut lines = Vec::new();
    for (tli, r) in &runs {
        for (a, z) in r {
            lines.push(segment_run(
                &segment_name(*tli, *a, seg),
                &segment_name(*tli, *z, seg),
                z - a + 1,
            ));
        }
    }
    let others = plan.remove.iter().filter(|f| !segment(f));
    lines.extend(others.map(|f| f.name.clone()));
    lines
}
