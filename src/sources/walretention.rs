//! WAL retention: which archived WAL no kept physical base backup needs.
//!
//! Recovery from a base backup replays WAL from the backup's start segment on, so WAL
//! older than the *oldest* kept base backup's start segment is needed by none of them and
//! by no point of the recovery window. `coffer forget` removes it, under its exclusive
//! lock: every segment, `.partial` and `.backup` file whose segment number is below that
//! start, on any timeline. `.history` files are never removed (they are tiny, and
//! recovery needs them to follow timelines). Nothing is removed when no physical base
//! backup of the archive's cluster is kept, or when a physical base backup's record cannot
//! be read (better some WAL too many than a backup without its WAL).

use super::postgres::physical::{base_backup_info, KIND_PHYSICAL};
use super::wal::{self, WalFileKind};
use crate::backend::FileKind;
use crate::repo::lock::ExclusiveLock;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use anyhow::Result;

/// One archived file to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct WalFile {
    /// The WAL file's name (`000000010000000000000003`, `….partial`, `….backup`).
    pub name: String,
    pub kind: WalFileKind,
    pub timeline: u32,
    pub segno: u64,
    pub size: u64,
}

/// What retention would do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The repository has a WAL archive at all.
    pub archived: bool,
    /// Why nothing is removed, when so.
    pub skipped: Option<String>,
    /// The oldest kept base backup (short id) and its first segment: the WAL kept starts
    /// there.
    pub oldest_backup: Option<String>,
    pub keep_from: Option<String>,
    /// Oldest first.
    pub remove: Vec<WalFile>,
    /// Archived files that stay (history files included).
    pub kept: usize,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.remove.iter().map(|f| f.size).sum()
    }
}

/// The segment number an archived file belongs to (none for `.history` files).
fn segment_of(name: &str, segment_size: u32) -> Option<(WalFileKind, u32, u64)> {
    let kind = wal::classify(name)?;
    if kind == WalFileKind::History {
        return None;
    }
    let (tli, segno) = wal::parse_segment(name.get(..24)?, segment_size)?;
    Some((kind, tli, segno))
}

/// The files (name, size) below segment number `keep_from`, oldest first.
pub fn select(files: &[(String, u64)], segment_size: u32, keep_from: u64) -> Vec<WalFile> {
    let mut out: Vec<WalFile> = files
        .iter()
        .filter_map(|(name, size)| {
            let (kind, timeline, segno) = segment_of(name, segment_size)?;
            (segno < keep_from).then(|| WalFile {
                name: name.clone(),
                kind,
                timeline,
                segno,
                size: *size,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.segno, a.timeline, &a.name).cmp(&(b.segno, b.timeline, &b.name)));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// Plan retention for the snapshots that stay (`kept`: every snapshot of the repository
/// that is not being forgotten).
pub fn plan(repo: &Repository, kept: &[Snapshot]) -> Result<Plan> {
    let Some(info) = wal::archive_info(repo)? else {
        return Ok(Plan {
            skipped: Some("no WAL segment is archived".into()),
            ..Default::default()
        });
    };
    let skip = |why: String| {
        Ok(Plan {
            archived: true,
            skipped: Some(why),
            ..Default::default()
        })
    };
    let mut oldest: Option<(u64, String, String)> = None;
    for s in kept.iter().filter(|s| s.kind == KIND_PHYSICAL) {
        let Some(b) = base_backup_info(s) else {
            return skip(format!(
                "the base backup record of snapshot {} cannot be read, so no WAL is removed",
                s.id.short()
            ));
        };
        if b.system_identifier != info.system_identifier {
            continue;
        }
        let Some((_, segno)) = wal::parse_segment(&b.start_wal, info.segment_size)
            .filter(|_| b.wal_segment_size == info.segment_size)
        else {
            return skip(format!(
                "base backup {} does not match the archive's segment size, so no WAL is removed",
                s.id.short()
            ));
        };
        if oldest.as_ref().is_none_or(|(o, _, _)| segno < *o) {
            oldest = Some((segno, s.id.short(), b.start_wal.clone()));
        }
    }
    let Some((keep_from, short, start_wal)) = oldest else {
        return skip(
            "no physical base backup of the archived cluster is kept, so no WAL is removed".into(),
        );
    };
    let files: Vec<(String, u64)> = repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .filter_map(|l| {
            let name = l.name.rsplit('/').next().unwrap_or("").to_string();
            wal::classify(&name).map(|_| (name, l.size))
        })
        .collect();
    let remove = select(&files, info.segment_size, keep_from);
    Ok(Plan {
        archived: true,
        skipped: None,
        oldest_backup: Some(short),
        keep_from: Some(start_wal),
        kept: files.len() - remove.len(),
        remove,
    })
}

/// Remove the planned files, oldest first (a crash leaves only newer WAL, still contiguous).
/// Only under the exclusive lock, in its repository. Returns how many files and bytes were
/// removed.
pub fn apply(lock: &ExclusiveLock, plan: &Plan) -> Result<(usize, u64)> {
    let repo = lock.repo();
    lock.ensure_held()?;
    let mut n = 0;
    let mut bytes = 0;
    for f in &plan.remove {
        repo.backend
            .remove(FileKind::Wal, &wal::object_name(&f.name))?;
        n += 1;
        bytes += f.size;
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_below_the_oldest_start_on_every_timeline() {
        let seg = 16 << 20;
        let files: Vec<(String, u64)> = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000003.partial",
            "00000002.history",
            "000000020000000000000002",
            "000000020000000000000005",
            "000000010000000100000000",
        ]
        .iter()
        .map(|n| (n.to_string(), 10))
        .collect();
        let out: Vec<String> = select(&files, seg, 3).into_iter().map(|f| f.name).collect();
        assert_eq!(
            out,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000020000000000000002",
            ]
        );
        // Segment numbers, not names: log 1 is after log 0.
        assert_eq!(select(&files, seg, 0x100).len(), 8);
        assert!(select(&files, seg, 0).is_empty());
    }
}
