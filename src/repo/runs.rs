//! The run history: one record per backup run of a declared source, success or failure.
//!
//! A snapshot exists only for a success; a record also says when a source failed and why,
//! so `coffer status` (and later the service and its alerts) can tell "failing since
//! Tuesday" from "never configured", from any host, out of the repository alone. Each record
//! is one object `runs/<id>`, sealed like a snapshot (named by the hash of its stored bytes)
//! and written after the run ended (after its snapshot, when there is one). Records are not
//! referenced by anything: losing one loses only history, and [`trim`] removes the oldest
//! beyond [`KEEP_PER_SOURCE`] per source.

use super::id::Id;
use super::Repository;
use crate::backend::{is_not_found, FileKind};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// Records kept per source by [`trim`] (the newest).
pub const KEEP_PER_SOURCE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
}

/// One run of one source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The storage name; not part of the stored JSON.
    #[serde(skip)]
    pub id: Id,
    /// The id the run's snapshots share (one `coffer backup` of the stack).
    pub run: String,
    /// What ran: `backup`.
    pub job: String,
    /// The declared source.
    pub source: String,
    /// The source's type (`postgres`, `redis`, `files`, `command`).
    #[serde(rename = "type")]
    pub source_type: String,
    pub host: String,
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes of the files and streams read.
    pub bytes_read: u64,
    /// Plaintext bytes new to the repository.
    pub bytes_added: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A restore drill's steps and checks (job `drill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillDetails>,
    /// A repository job over several repositories (`prune` of `coffer run`): each one's
    /// result, the primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<RepositoryRun>,
}

/// What a repository job did in one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryRun {
    /// `primary`, or the name of its `[repositories.NAME]` table.
    pub repository: String,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Snapshots its `keep` removed before the prune.
    #[serde(default)]
    pub snapshots_removed: u64,
    /// Bytes of packs the prune deleted.
    #[serde(default)]
    pub bytes_freed: u64,
}

/// What a restore drill did and found, as its run record keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillDetails {
    /// Wall time from the drill's start to the restore verified and checked.
    pub rto_secs: f64,
    pub steps: Vec<DrillStep>,
    pub checks: Vec<DrillCheck>,
}

/// One step of a drill: fetching and restoring, starting a scratch server, the checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillStep {
    pub step: String,
    pub duration_secs: f64,
    pub ok: bool,
}

/// One check of a drill and its result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillCheck {
    pub check: String,
    pub ok: bool,
    /// What was found (the mismatches, the query's answer, the error).
    pub detail: String,
}

/// Store a record.
pub fn save(repo: &Repository, r: &RunRecord) -> Result<Id> {
    repo.save_json(FileKind::Run, r)
}

/// Every record, oldest first. One that cannot be read is skipped with a warning: the
/// history informs, it decides nothing that loses data.
pub fn load(repo: &Repository) -> Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    for l in repo.backend.list(FileKind::Run)? {
        // load_json checks that the contents match the name, so the name is an id.
        match repo
            .load_json::<RunRecord>(FileKind::Run, &l.name)
            .and_then(|r| {
                Ok(RunRecord {
                    id: l.name.parse()?,
                    ..r
                })
            }) {
            Ok(r) => out.push(r),
            Err(e) if is_not_found(&e) => {}
            Err(e) => repo.events().warn(&format!(
                "skipping run record {}: {e:#}",
                FileKind::Run.path(&l.name)
            )),
        }
    }
    out.sort_by_key(|r| r.finished);
    Ok(out)
}

/// A new run id: 16 random hex digits, shared by what one run writes.
pub fn new_run_id() -> String {
    Id::random().to_hex()[..16].to_string()
}

/// Trim the history when it has grown past [`KEEP_PER_SOURCE`] records for each of its
/// `histories` (a source's backups, its drills, each repository job): one listing on every
/// call, and the records read only then, so a run does not read the whole history each
/// time. Returns how many went.
pub fn trim_if_grown(repo: &Repository, histories: usize) -> Result<usize> {
    let listed = repo.backend.list(FileKind::Run)?.len();
    if listed <= KEEP_PER_SOURCE * histories.max(1) {
        return Ok(0);
    }
    trim(repo, &load(repo)?)
}

/// The histories a config can have: each source's backups and drills, and the repository
/// jobs (prune, check, wal-verify, wal-copy).
pub fn histories(sources: usize) -> usize {
    2 * sources + 4
}

/// Remove the records of each source and job beyond the newest [`KEEP_PER_SOURCE`] (a
/// source's weekly drills are not pushed out by its hourly backups); returns how many.
pub fn trim(repo: &Repository, records: &[RunRecord]) -> Result<usize> {
    let mut by_source: std::collections::BTreeMap<(&str, &str), Vec<&RunRecord>> =
        Default::default();
    for r in records {
        by_source.entry((&r.source, &r.job)).or_default().push(r);
    }
    let mut removed = 0;
    for list in by_source.values_mut() {
        list.sort_by_key(|r| std::cmp::Reverse(r.finished));
        for r in list.iter().skip(KEEP_PER_SOURCE) {
            match repo.backend.remove(FileKind::Run, &r.id.to_hex()) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, minute: i64) -> RunRecord {
        let t = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z").unwrap()
            + chrono::Duration::minutes(minute);
        RunRecord {
            id: Id::default(),
            run: new_run_id(),
            job: "backup".into(),
            source: source.into(),
            source_type: "files".into(),
            host: "h".into(),
            started: t,
            finished: t,
            status: RunStatus::Ok,
            error: None,
            bytes_read: 0,
            bytes_added: 0,
            snapshot: None,
            drill: None,
            repositories: Vec::new(),
        }
    }

    #[test]
    fn the_history_is_trimmed_only_once_it_has_grown() {
        let d = tempfile::tempdir().unwrap();
        let repo = crate::repo::test_repository(d.path());
        for m in 0..KEEP_PER_SOURCE as i64 {
            save(&repo, &record("a", m)).unwrap();
        }
        assert_eq!(trim_if_grown(&repo, 1).unwrap(), 0, "at the limit");
        save(&repo, &record("a", -1)).unwrap();
        save(&repo, &record("a", -2)).unwrap();
        let mut drill = record("a", -3);
        drill.job = "drill".into();
        save(&repo, &drill).unwrap();
        assert_eq!(
            trim_if_grown(&repo, 2).unwrap(),
            0,
            "within 200 per history"
        );
        assert_eq!(trim_if_grown(&repo, 1).unwrap(), 2, "past it");
        let left = load(&repo).unwrap();
        assert_eq!(left.len(), KEEP_PER_SOURCE + 1);
        assert_eq!(
            left[0].job, "drill",
            "the old drill stays: it is a history of its own"
        );
        assert_eq!(
            left[1].finished,
            record("a", 0).finished,
            "the oldest backups went"
        );
    }
}
