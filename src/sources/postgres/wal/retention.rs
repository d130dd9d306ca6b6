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
//!
//! Live holds ([`super::hold`]: a recovery in progress) lower the cut-off to their start
//! when it is older; an unreadable hold stops retention (it may protect a recovery). Expired
//! holds are not honoured, and are removed. Before removing WAL, retention raises the
//! horizon to its cut-off, so a `wal-fetch` of removed WAL fails instead of answering "not
//! archived".

use super::super::basebackup::base_backups;
use super::archive::{self, WalFileKind};
use super::hold::{self, Hold};
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
    /// The cut-off as a segment number, in the archive's segment size.
    pub keep_from_segno: Option<u64>,
    pub segment_size: u32,
    /// Live holds, oldest first.
    pub holds: Vec<Hold>,
    /// The live hold that moved the cut-off below the oldest kept base backup's start, if
    /// one did (the one that starts first).
    pub held_by: Option<String>,
    /// Expired holds: not honoured, removed by [`apply`].
    pub expired: Vec<Hold>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.remove.iter().map(|f| f.size).sum()
    }
}

/// The segment number an archived file belongs to (none for `.history` files).
fn segment_of(name: &str, segment_size: u32) -> Option<(WalFileKind, u32, u64)> {
    let kind = archive::classify(name)?;
    if kind == WalFileKind::History {
        return None;
    }
    let (tli, segno) = archive::parse_segment(name.get(..24)?, segment_size)?;
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
    let Some(info) = archive::archive_info(repo)? else {
        return Ok(Plan {
            skipped: Some("no WAL segment is archived".into()),
            ..Default::default()
        });
    };
    let now = chrono::Local::now().fixed_offset();
    let mut holds = Vec::new();
    let mut expired = Vec::new();
    let mut unreadable = None;
    for l in hold::list(repo)? {
        match l {
            hold::Listed::Hold(h) if h.expired(now) => expired.push(h),
            hold::Listed::Hold(h) => holds.push(h),
            hold::Listed::Unreadable { id, error } => {
                unreadable.get_or_insert((id, error));
            }
        }
    }
    let skip = |why: String| {
        Ok(Plan {
            archived: true,
            skipped: Some(why),
            segment_size: info.segment_size,
            holds: holds.clone(),
            expired: expired.clone(),
            ..Default::default()
        })
    };
    if let Some((id, error)) = unreadable {
        return skip(format!(
            "the WAL hold {} cannot be read ({error}), and may protect a recovery in \
             progress, so no WAL is removed; `coffer wal-hold release {id}` removes it",
            FileKind::WalHold.path(&id)
        ));
    }
    let mut oldest: Option<(u64, String, String)> = None;
    // Base backups are found by their source, whatever the kind of the snapshot holding
    // them.
    for s in kept {
        let Ok(backups) = base_backups(s) else {
            return skip(format!(
                "the base backup record of snapshot {} cannot be read, so no WAL is removed",
                s.id.short()
            ));
        };
        for b in backups {
            if b.system_identifier != info.system_identifier {
                continue;
            }
            let Some((_, segno)) = archive::parse_segment(&b.start_wal, info.segment_size)
                .filter(|_| b.wal_segment_size == info.segment_size)
            else {
                return skip(format!(
                    "base backup {} does not match the archive's segment size, so no WAL is \
                     removed",
                    s.id.short()
                ));
            };
            if oldest.as_ref().is_none_or(|(o, _, _)| segno < *o) {
                oldest = Some((segno, s.id.short(), b.start_wal.clone()));
            }
        }
    }
    let Some((backup_from, short, backup_start)) = oldest else {
        return skip(
            "no physical base backup of the archived cluster is kept, so no WAL is removed".into(),
        );
    };
    let (mut keep_from, mut start_wal, mut held_by) = (backup_from, backup_start, None);
    for h in &holds {
        let Some(segno) = h.start_segno(info.segment_size) else {
            return skip(format!(
                "WAL hold {} starts at {:?} in {}-byte segments, which this archive cannot \
                 place, so no WAL is removed",
                h.id, h.start_wal, h.segment_size
            ));
        };
        if segno < keep_from {
            (keep_from, start_wal, held_by) = (segno, h.start_wal.clone(), Some(h.id.clone()));
        }
    }
    let files: Vec<(String, u64)> = repo
        .backend
        .list(FileKind::Wal)?
        .into_iter()
        .filter_map(|l| {
            let name = l.name.rsplit('/').next().unwrap_or("").to_string();
            archive::classify(&name).map(|_| (name, l.size))
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
        keep_from_segno: Some(keep_from),
        segment_size: info.segment_size,
        holds,
        held_by,
        expired,
    })
}

/// Carry out the plan: raise the horizon to the cut-off (before anything is removed, so a
/// `wal-fetch` never finds removed WAL missing without it), remove the planned files oldest
/// first (a crash leaves only newer WAL, still contiguous), then the expired holds that are
/// still expired. Only under the exclusive lock, in its repository. Returns how many files
/// and bytes were removed.
pub fn apply(lock: &ExclusiveLock, plan: &Plan) -> Result<(usize, u64)> {
    let repo = lock.repo();
    lock.ensure_held()?;
    if let (Some(segno), Some(first), false) = (
        plan.keep_from_segno,
        &plan.keep_from,
        plan.remove.is_empty(),
    ) {
        hold::raise_horizon(repo, segno, plan.segment_size, first)?;
    }
    let mut n = 0;
    let mut bytes = 0;
    for f in &plan.remove {
        repo.backend
            .remove(FileKind::Wal, &archive::object_name(&f.name))?;
        n += 1;
        bytes += f.size;
    }
    let now = chrono::Local::now().fixed_offset();
    for h in &plan.expired {
        // A wal-fetch may have refreshed it since the plan was made.
        if hold::read(repo, &h.id)?.is_some_and(|h| h.expired(now)) {
            hold::release(repo, &h.id)?;
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::super::push::push_bytes;
    use super::*;
    use std::sync::Arc;

    /// A segment's worth of bytes with a long page header (system identifier 7).
    fn segment(tli: u32, segno: u64) -> Vec<u8> {
        let seg = 16u32 << 20;
        let mut data = vec![0u8; seg as usize];
        data[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        data[2..4].copy_from_slice(&7u16.to_le_bytes());
        data[4..8].copy_from_slice(&tli.to_le_bytes());
        data[8..16].copy_from_slice(&(segno * seg as u64).to_le_bytes());
        data[24..32].copy_from_slice(&7u64.to_le_bytes());
        data[32..36].copy_from_slice(&seg.to_le_bytes());
        data[36..40].copy_from_slice(&8192u32.to_le_bytes());
        data
    }

    #[test]
    fn expired_holds_are_not_honoured_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::test_repository(dir.path());
        let name = "000000010000000000000003";
        push_bytes(&repo, name, WalFileKind::Segment, &segment(1, 3)).unwrap();
        let spec = |expires_after| hold::HoldSpec {
            purpose: "test".into(),
            start_wal: "000000010000000000000002".into(),
            segment_size: 16 << 20,
            snapshot: None,
            expires_after,
        };
        let live = hold::take(&repo, &spec(hold::DEFAULT_EXPIRY)).unwrap();
        let gone = hold::take(&repo, &spec(std::time::Duration::ZERO)).unwrap();
        let p = plan(&repo, &[]).unwrap();
        assert_eq!(p.holds.len(), 1);
        assert_eq!(p.holds[0], live);
        assert_eq!(p.expired.len(), 1);
        assert_eq!(p.expired[0], gone);
        // No base backup is kept, so no WAL goes, but the expired hold does.
        assert!(p.skipped.is_some() && p.remove.is_empty());
        let repo = Arc::new(repo);
        let lock = crate::repo::lock::Lock::exclusive(&repo, "test").unwrap();
        apply(&lock, &p).unwrap();
        drop(lock);
        assert!(hold::read(&repo, &gone.id).unwrap().is_none());
        assert_eq!(hold::read(&repo, &live.id).unwrap(), Some(live.clone()));
        // A hold that cannot be read stops retention.
        std::fs::write(
            dir.path().join("repo/wal/holds").join(&gone.id),
            b"not sealed",
        )
        .unwrap();
        let p = plan(&repo, &[]).unwrap();
        let why = p.skipped.unwrap();
        assert!(
            why.contains(&gone.id) && why.contains("cannot be read"),
            "{why}"
        );
        assert!(hold::release(&repo, &gone.id).unwrap());
        assert!(hold::release(&repo, &live.id).unwrap());
        assert!(hold::list(&repo).unwrap().is_empty());
    }

    #[test]
    fn a_base_backup_is_kept_by_its_source_whatever_the_snapshot_kind() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::test_repository(dir.path());
        for segno in 1..=4 {
            let name = format!("00000001000000000000000{segno}");
            push_bytes(&repo, &name, WalFileKind::Segment, &segment(1, segno)).unwrap();
        }
        // A snapshot of several sources (a kind this coffer does not know) whose second
        // source is a base backup of the archived cluster, starting in segment 3.
        let snap: Snapshot = serde_json::from_value(serde_json::json!({
            "time": "2024-05-01T02:00:00Z", "hostname": "h", "username": "u",
            "paths": ["/app", "/db/pgdata"], "kind": "stack", "tree": "0".repeat(64),
            "size": 1, "program_version": "coffer 9.0.0",
            "sources": [
                {"kind": "files", "name": "/app", "path": "/app"},
                {"kind": "postgres-physical", "name": "/var/lib/pg", "path": "/db/pgdata",
                 "metadata": {
                    "server": "db:5432", "server_version": "15.1", "server_version_num": 150001,
                    "system_identifier": "7", "timeline": 1,
                    "start_lsn": "0/3000028", "stop_lsn": "0/3000138",
                    "start_wal": "000000010000000000000003",
                    "stop_wal": "000000010000000000000003",
                    "wal_segment_size": 16777216, "data_directory": "/var/lib/pg",
                    "label": "coffer", "started_at": "2024-05-01T02:00:00Z",
                    "stopped_at": "2024-05-01T02:00:01Z"
                 }}
            ]
        }))
        .unwrap();
        let p = plan(&repo, &[snap]).unwrap();
        assert_eq!(p.skipped, None);
        assert_eq!(p.keep_from.as_deref(), Some("000000010000000000000003"));
        let removed: Vec<&str> = p.remove.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            removed,
            ["000000010000000000000001", "000000010000000000000002"]
        );
        // Without it, nothing is kept for, so nothing goes.
        let p = plan(&repo, &[]).unwrap();
        assert!(p.skipped.is_some() && p.remove.is_empty());
    }

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
