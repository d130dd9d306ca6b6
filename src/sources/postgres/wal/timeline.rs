//! Timelines as recovery follows them: `.history` files, the archive listed by timeline,
//! the chain of timelines recovery from a base backup takes, and the walk along that chain
//! that finds which segments are there. [`super::verify`] reports on every base backup
//! with it; `restore --pgdata` ([`crate::sources::postgres::pitr`]) checks the one it
//! restores.

use super::super::basebackup::BaseBackupInfo;
use super::archive::{self, classify, parse_lsn, parse_segment, segment_name, WalFileKind};
use crate::backend::FileKind;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, FixedOffset, Utc};
use std::collections::BTreeMap;

/// An archived WAL segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub timeline: u32,
    pub segno: u64,
    /// When its object was written, when the storage says.
    pub pushed: Option<DateTime<Utc>>,
}

/// A physical base backup, as far as WAL is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub id: String,
    pub short_id: String,
    pub timeline: u32,
    pub start_lsn: u64,
    pub stop_lsn: u64,
    /// Its first and last segment numbers (PostgreSQL's `start_wal`/`stop_wal`).
    pub start_segno: u64,
    pub stop_segno: u64,
    pub stopped_at: DateTime<FixedOffset>,
    pub system_identifier: String,
}

impl Backup {
    /// A base backup held by a snapshot (`info`, one of its [`base_backups`]); `None` when
    /// its WAL positions cannot be read.
    ///
    /// [`base_backups`]: super::super::basebackup::base_backups
    pub fn of(snap: &Snapshot, info: &BaseBackupInfo) -> Option<Backup> {
        let seg = info.wal_segment_size;
        Some(Backup {
            id: snap.id.to_hex(),
            short_id: snap.id.short(),
            timeline: info.timeline,
            start_lsn: parse_lsn(&info.start_lsn)?,
            stop_lsn: parse_lsn(&info.stop_lsn)?,
            start_segno: parse_segment(&info.start_wal, seg)?.1,
            stop_segno: parse_segment(&info.stop_wal, seg)?.1,
            stopped_at: info.stopped_at,
            system_identifier: info.system_identifier.clone(),
        })
    }
}

/// What the analysis works on.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub segment_size: u32,
    pub system_identifier: Option<String>,
    pub segments: Vec<Segment>,
    /// Each archived `.history` file, parsed: the timeline's ancestors with the LSN at
    /// which each one ended, oldest first.
    pub histories: BTreeMap<u32, Vec<(u32, u64)>>,
    /// How many `.partial` and `.backup` files the archive holds (reported only).
    pub partial_files: usize,
    pub backup_files: usize,
}

/// The parent timelines of a timeline, from its `.history` file: `(parent, switch LSN)`
/// per line, oldest first.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = parse_lsn(f.next()?)?;
            Some((tli, lsn))
        })
        .collect()
}

/// The timelines recovery from a backup on `tli` that stopped at `stop` follows, with the
/// LSN at which each one begins (none for the first): up to the highest-numbered timeline
/// that descends from `tli` after `stop` (PostgreSQL's `recovery_target_timeline = latest`).
pub fn timeline_chain(
    tli: u32,
    stop: u64,
    histories: &BTreeMap<u32, Vec<(u32, u64)>>,
) -> Vec<(u32, Option<u64>)> {
    histories
        .iter()
        .rev()
        .filter(|(t, _)| **t > tli)
        .find_map(|(t, h)| chain_through(tli, stop, *t, h).ok())
        .unwrap_or_else(|| vec![(tli, None)])
}

/// Why recovery cannot follow a requested timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainError {
    /// The archive has no `.history` file for it.
    NoHistory,
    /// Its history does not pass through the backup's timeline.
    NotDescendant,
    /// It left the backup's timeline at this LSN, before the backup ended.
    LeftBefore(u64),
}

/// The timelines recovery from a backup on `tli` that stopped at `stop` follows to reach
/// timeline `target` (`recovery_target_timeline = N`).
pub fn timeline_chain_to(
    tli: u32,
    stop: u64,
    histories: &BTreeMap<u32, Vec<(u32, u64)>>,
    target: u32,
) -> Result<Vec<(u32, Option<u64>)>, ChainError> {
    if target == tli {
        return Ok(vec![(tli, None)]);
    }
    let history = histories.get(&target).ok_or(ChainError::NoHistory)?;
    chain_through(tli, stop, target, history)
}

/// The chain from `tli` to `target` along `target`'s history.
fn chain_through(
    tli: u32,
    stop: u64,
    target: u32,
    history: &[(u32, u64)],
) -> Result<Vec<(u32, Option<u64>)>, ChainError> {
    let i = history
        .iter()
        .position(|(p, _)| *p == tli)
        .ok_or(ChainError::NotDescendant)?;
    if history[i].1 < stop {
        return Err(ChainError::LeftBefore(history[i].1));
    }
    let mut chain = vec![(tli, None)];
    for k in i + 1..history.len() {
        chain.push((history[k].0, Some(history[k - 1].1)));
    }
    chain.push((target, Some(history[history.len() - 1].1)));
    Ok(chain)
}

pub(super) type ByTimeline = BTreeMap<u32, BTreeMap<u64, Option<DateTime<Utc>>>>;

pub(super) fn by_timeline(archive: &Archive) -> ByTimeline {
    let mut by_tli: ByTimeline = BTreeMap::new();
    for s in &archive.segments {
        by_tli
            .entry(s.timeline)
            .or_default()
            .insert(s.segno, s.pushed);
    }
    by_tli
}

/// What recovery of one base backup along one chain of timelines finds in the archive.
#[derive(Debug, Clone)]
pub struct Walk {
    /// (timeline, first segment number on it).
    pub pieces: Vec<(u32, u64)>,
    /// Present segments along the chain: segno → the timeline of its file.
    pub present: BTreeMap<u64, u32>,
    /// Runs of missing segments from the backup's start to the last present segment (or its
    /// stop segment), inclusive.
    pub runs: Vec<(u64, u64)>,
    /// The backup's own first and last segment.
    pub start: u64,
    pub stop: u64,
    seg: u32,
}

impl Walk {
    /// The timeline segment `s` is expected on.
    pub fn tli_of(&self, s: u64) -> u32 {
        self.pieces
            .iter()
            .rev()
            .find(|(_, from)| *from <= s)
            .map(|(t, _)| *t)
            .unwrap_or(self.pieces[0].0)
    }
    /// The name segment `s` is expected under.
    pub fn name(&self, s: u64) -> String {
        segment_name(self.tli_of(s), s, self.seg)
    }
    /// One of the backup's own segments is missing: it cannot be restored.
    pub fn incomplete(&self) -> bool {
        self.runs.first().is_some_and(|(a, _)| *a <= self.stop)
    }
    /// The last segment of the WAL that is contiguous from the backup's start.
    pub fn reach(&self) -> Option<u64> {
        match self.runs.first() {
            Some((a, _)) if *a == self.start => None,
            Some((a, _)) => Some(a - 1),
            None => Some(self.last()),
        }
    }
    fn last(&self) -> u64 {
        self.present
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.start)
            .max(self.stop)
    }
}

/// Walk the archive from base backup `b` along `chain` (from [`timeline_chain`] or
/// [`timeline_chain_to`]).
pub fn walk(archive: &Archive, b: &Backup, chain: &[(u32, Option<u64>)]) -> Walk {
    walk_in(&by_timeline(archive), archive.segment_size.max(1), b, chain)
}

pub(super) fn walk_in(
    by_tli: &ByTimeline,
    seg: u32,
    b: &Backup,
    chain: &[(u32, Option<u64>)],
) -> Walk {
    let pieces: Vec<(u32, u64)> = chain
        .iter()
        .map(|(t, from)| (*t, from.map(|l| l / seg as u64).unwrap_or(0)))
        .collect();
    let (start, stop) = (b.start_segno, b.stop_segno.max(b.start_segno));
    let mut present: BTreeMap<u64, u32> = BTreeMap::new();
    if let Some(own) = by_tli.get(&b.timeline) {
        for s in own.range(start..=stop).map(|(s, _)| *s) {
            present.insert(s, b.timeline);
        }
    }
    for (k, (tli, from)) in pieces.iter().enumerate() {
        let to = pieces.get(k + 1).map(|(_, f)| *f).unwrap_or(u64::MAX);
        let lo = (*from).max(start);
        if lo >= to {
            continue;
        }
        if let Some(segs) = by_tli.get(tli) {
            for s in segs.range(lo..to).map(|(s, _)| *s) {
                present.insert(s, *tli);
            }
        }
    }
    let mut w = Walk {
        pieces,
        present,
        runs: Vec::new(),
        start,
        stop,
        seg,
    };
    let last = w.last();
    let mut next = start;
    for &s in w.present.keys() {
        if s > next {
            w.runs.push((next, s - 1));
        }
        next = s + 1;
    }
    if next <= last {
        w.runs.push((next, last));
    }
    w
}

/// List the WAL archive and read its `.history` files.
pub fn load_archive(
    repo: &Repository,
    segment_size: u32,
    system_identifier: Option<String>,
) -> Result<Archive> {
    let mut archive = Archive {
        segment_size,
        system_identifier,
        ..Default::default()
    };
    let mut history_names = Vec::new();
    for l in repo.backend.list(FileKind::Wal)? {
        let name = l.name.rsplit('/').next().unwrap_or("");
        match classify(name) {
            Some(WalFileKind::Segment) => {
                if let Some((timeline, segno)) = parse_segment(name, segment_size) {
                    archive.segments.push(Segment {
                        timeline,
                        segno,
                        pushed: l.modified,
                    });
                }
            }
            Some(WalFileKind::History) => history_names.push(name.to_string()),
            Some(WalFileKind::Partial) => archive.partial_files += 1,
            Some(WalFileKind::Backup) => archive.backup_files += 1,
            None => {}
        }
    }
    history_names.sort();
    history_names.dedup();
    for h in history_names {
        let Ok(tli) = u32::from_str_radix(&h[..8], 16) else {
            continue;
        };
        if let Some(text) = archive::read(repo, &h)? {
            archive
                .histories
                .insert(tli, parse_history(&String::from_utf8_lossy(&text)));
        }
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history() {
        let h =
            "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tat restore point \"x\"\n";
        assert_eq!(parse_history(h), [(1, 0x300_0000), (2, 0x50_00A0)]);
    }
}
