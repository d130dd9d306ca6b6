//! `coffer wal-verify`: is the WAL archive complete enough to recover each physical base
//! backup, and up to where?
//!
//! For each base backup, recovery replays WAL from the backup's start segment along a chain
//! of timelines: the backup's own timeline, then (following `.history` files) each timeline
//! that branched off it, up to the newest one: the highest-numbered timeline whose history
//! names the backup's timeline with a switch point at or after the backup's stop LSN.
//! Segment `s` is looked for on the newest timeline of that chain which had begun by `s`
//! (the first segment of a new timeline holds the end of its parent's WAL), as PostgreSQL
//! itself does. The backup's own segments (start to stop) may also be found on its own
//! timeline. The chain and the walk along it are in [`super::timeline`].
//!
//! A backup is *ok* when every segment from its start to the newest archived segment of
//! its chain is present; it has a *gap* when a segment is missing after its stop (it is
//! recoverable only up to the gap); it is *incomplete* when one of its own segments is
//! missing (it cannot be restored at all). The analysis ([`analyze`]) is pure; [`verify`]
//! gathers its input from a repository. Only the presence of the objects is checked:
//! `wal-fetch` verifies each one's content when recovery reads it.

use super::super::basebackup::base_backups;
use super::archive::{archive_info, format_lsn, parse_lsn, parse_segment, segment_name};
use super::timeline::{by_timeline, load_archive, timeline_chain, walk_in, Archive, Backup};
use super::waldump::newest_commit_time;
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;
use std::collections::BTreeSet;

/// A point of the recoverable window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Window {
    /// Recovery cannot stop before the end of the oldest usable base backup.
    pub earliest_lsn: String,
    pub earliest_time: DateTime<FixedOffset>,
    pub earliest_timeline: u32,
    pub earliest_backup: String,
    /// The end of the newest segment reachable without a gap.
    pub latest_lsn: String,
    pub latest_timeline: u32,
    pub latest_segment: String,
    /// When that segment was archived (its object's write time), if the storage says. The
    /// WAL in it was written before, so the last commit recovery can reach is no later.
    /// The segment itself carries no time coffer reads.
    pub latest_archived_at: Option<DateTime<Utc>>,
}

/// One base backup's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupStatus {
    pub id: String,
    pub short_id: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_wal: String,
    pub stop_wal: String,
    pub stopped_at: DateTime<FixedOffset>,
    /// `ok`, `gap` (recoverable only up to a missing segment) or `incomplete` (one of its
    /// own segments is missing: it cannot be restored).
    pub status: &'static str,
    /// The timelines recovery follows from this backup, oldest first.
    pub timelines: Vec<u32>,
    /// Segments missing between its start and the newest segment of its timelines.
    pub missing_segments: u64,
    pub first_missing: Option<String>,
    pub window: Option<Window>,
    pub notes: Vec<String>,
}

/// A run of consecutive missing segments.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gap {
    pub first: String,
    pub last: String,
    pub count: u64,
    /// The WAL lost: from the start of `first` to the end of `last`.
    pub start_lsn: String,
    pub end_lsn: String,
    /// Short ids of the base backups it affects.
    pub backups: Vec<String>,
}

/// One timeline seen in the archive.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineInfo {
    pub timeline: u32,
    /// The timeline it branched from and where, from its `.history` file.
    pub parent: Option<u32>,
    pub switch_lsn: Option<String>,
    pub history_file: bool,
    pub segments: usize,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    /// Segments absent between its first and last one.
    pub holes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// No base backup is affected by a gap.
    pub ok: bool,
    pub system_identifier: Option<String>,
    pub segment_size: u32,
    pub segments: usize,
    pub history_files: usize,
    pub partial_files: usize,
    pub backup_files: usize,
    /// Over all usable base backups: the oldest one's end to the newest reachable segment.
    pub window: Option<Window>,
    /// The newest commit (or abort) time in the segments at the end of that window, read
    /// with `pg_waldump`: the latest time a `--target-time` recovery can reach. None when
    /// pg_waldump is missing or those segments hold no commit.
    pub latest_commit_time: Option<DateTime<FixedOffset>>,
    pub backups: Vec<BackupStatus>,
    pub gaps: Vec<Gap>,
    pub timelines: Vec<TimelineInfo>,
    pub notes: Vec<String>,
}

fn lsn_of(segno: u64, seg: u32) -> String {
    format_lsn(segno.saturating_mul(seg as u64))
}

/// Check every base backup against the archive.
pub fn analyze(archive: &Archive, backups: &[Backup]) -> Report {
    let seg = archive.segment_size.max(1);
    let by_tli = by_timeline(archive);
    let mut notes = Vec::new();
    let mut statuses = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    let mut backups: Vec<&Backup> = backups.iter().collect();
    backups.sort_by(|a, b| a.stopped_at.cmp(&b.stopped_at).then(a.id.cmp(&b.id)));
    let highest_tli = by_tli.keys().chain(archive.histories.keys()).max().copied();
    for b in backups {
        let chain_tl = timeline_chain(b.timeline, b.stop_lsn, &archive.histories);
        let chain = walk_in(&by_tli, seg, b, &chain_tl);
        let (start, stop) = (chain.start, chain.stop);
        let present = &chain.present;
        let runs = &chain.runs;
        let missing: u64 = runs.iter().map(|(a, z)| z - a + 1).sum();
        let reach = chain.reach();
        let incomplete = chain.incomplete();
        let status = if incomplete {
            "incomplete"
        } else if runs.is_empty() {
            "ok"
        } else {
            "gap"
        };
        let mut bnotes = Vec::new();
        if let Some(sysid) = &archive.system_identifier {
            if *sysid != b.system_identifier {
                bnotes.push(format!(
                    "this base backup is of cluster {}, but the archive holds the WAL of cluster \
                     {sysid}",
                    b.system_identifier
                ));
            }
        }
        let newest_chain = chain.pieces.last().map(|(t, _)| *t).unwrap_or(b.timeline);
        if let Some(h) = highest_tli.filter(|h| *h > newest_chain) {
            bnotes.push(format!(
                "timeline {h} is the newest in the archive but does not continue this backup's \
                 history; PostgreSQL's default recovery_target_timeline = latest would refuse to \
                 recover it: restore with --target-timeline {newest_chain}"
            ));
        }
        if newest_chain != b.timeline && !by_tli.contains_key(&newest_chain) {
            bnotes.push(format!(
                "timeline {newest_chain} has a history file but no archived segment yet (a \
                 recent promotion, or its WAL is lost): recovery ends on an older timeline"
            ));
        }
        let window = match reach {
            Some(r) if !incomplete => {
                let tli = present.get(&r).copied().unwrap_or(b.timeline);
                Some(Window {
                    earliest_lsn: format_lsn(b.stop_lsn),
                    earliest_time: b.stopped_at,
                    earliest_timeline: b.timeline,
                    earliest_backup: b.id.clone(),
                    latest_lsn: lsn_of(r + 1, seg),
                    latest_timeline: tli,
                    latest_segment: segment_name(tli, r, seg),
                    latest_archived_at: by_tli.get(&tli).and_then(|m| m.get(&r).copied().flatten()),
                })
            }
            _ => None,
        };
        for (a, z) in runs {
            let (first, lastn) = (chain.name(*a), chain.name(*z));
            match gaps
                .iter_mut()
                .find(|g| g.first == first && g.last == lastn)
            {
                Some(g) => g.backups.push(b.short_id.clone()),
                None => gaps.push(Gap {
                    first,
                    last: lastn,
                    count: z - a + 1,
                    start_lsn: lsn_of(*a, seg),
                    end_lsn: lsn_of(z + 1, seg),
                    backups: vec![b.short_id.clone()],
                }),
            }
        }
        statuses.push(BackupStatus {
            id: b.id.clone(),
            short_id: b.short_id.clone(),
            timeline: b.timeline,
            start_lsn: format_lsn(b.start_lsn),
            stop_lsn: format_lsn(b.stop_lsn),
            start_wal: segment_name(b.timeline, start, seg),
            stop_wal: segment_name(b.timeline, stop, seg),
            stopped_at: b.stopped_at,
            status,
            timelines: chain.pieces.iter().map(|(t, _)| *t).collect(),
            missing_segments: missing,
            first_missing: runs.first().map(|(a, _)| chain.name(*a)),
            window,
            notes: bnotes,
        });
    }
    gaps.sort_by_key(|g| (parse_lsn(&g.start_lsn), g.first.clone()));

    // The overall window: from the oldest usable backup to the furthest reach.
    let usable: Vec<&Window> = statuses.iter().filter_map(|s| s.window.as_ref()).collect();
    let window = usable.first().map(|oldest| {
        let furthest = usable
            .iter()
            .max_by_key(|w| (parse_lsn(&w.latest_lsn).unwrap_or(0), w.latest_timeline))
            .unwrap_or(oldest);
        Window {
            earliest_lsn: oldest.earliest_lsn.clone(),
            earliest_time: oldest.earliest_time,
            earliest_timeline: oldest.earliest_timeline,
            earliest_backup: oldest.earliest_backup.clone(),
            latest_lsn: furthest.latest_lsn.clone(),
            latest_timeline: furthest.latest_timeline,
            latest_segment: furthest.latest_segment.clone(),
            latest_archived_at: furthest.latest_archived_at,
        }
    });

    // Timelines: what the archive holds of each.
    let mut tlis: BTreeSet<u32> = by_tli.keys().copied().collect();
    tlis.extend(archive.histories.keys().copied());
    let timelines = tlis
        .iter()
        .map(|t| {
            let segs = by_tli.get(t);
            let first = segs.and_then(|m| m.keys().next().copied());
            let last = segs.and_then(|m| m.keys().next_back().copied());
            let count = segs.map(|m| m.len()).unwrap_or(0);
            let parent = archive.histories.get(t).and_then(|h| h.last().copied());
            TimelineInfo {
                timeline: *t,
                parent: parent.map(|(p, _)| p),
                switch_lsn: parent.map(|(_, l)| format_lsn(l)),
                history_file: archive.histories.contains_key(t),
                segments: count,
                first_segment: first.map(|s| segment_name(*t, s, seg)),
                last_segment: last.map(|s| segment_name(*t, s, seg)),
                holes: match (first, last) {
                    (Some(f), Some(l)) => (l - f + 1).saturating_sub(count as u64),
                    _ => 0,
                },
            }
        })
        .collect();

    if statuses.is_empty() {
        notes.push(if archive.segments.is_empty() {
            "the WAL archive is empty and there is no physical base backup: nothing to verify \
             yet"
            .to_string()
        } else {
            "there is no physical base backup (`coffer backup --postgres URL --physical`), so \
             nothing can be recovered from this WAL yet; the archive's extent is shown per \
             timeline"
                .to_string()
        });
    } else if archive.segments.is_empty() {
        notes.push("the WAL archive holds no segment".to_string());
    }
    Report {
        ok: statuses.iter().all(|s| s.status == "ok"),
        system_identifier: archive.system_identifier.clone(),
        segment_size: seg,
        segments: archive.segments.len(),
        history_files: archive.histories.len(),
        partial_files: archive.partial_files,
        backup_files: archive.backup_files,
        window,
        latest_commit_time: None,
        backups: statuses,
        gaps,
        timelines,
        notes,
    }
}

/// Gather the archive's listing, its `.history` files and the base backups, and analyze.
pub fn verify(repo: &Repository) -> Result<Report> {
    let info = archive_info(repo)?;
    let snapshots = repo.load_snapshots()?;
    let mut unreadable = Vec::new();
    // Every base backup, by its source, in snapshot order.
    let mut infos = Vec::new();
    let mut backups = Vec::new();
    for s in &snapshots {
        match base_backups(s) {
            Ok(found) => {
                for i in found {
                    match Backup::of(s, &i) {
                        Some(b) => backups.push(b),
                        None => unreadable.push(s.id.short()),
                    }
                    infos.push(i);
                }
            }
            Err(_) => unreadable.push(s.id.short()),
        }
    }
    let segment_size = info
        .as_ref()
        .map(|i| i.segment_size)
        .or_else(|| infos.first().map(|i| i.wal_segment_size))
        .unwrap_or(16 << 20);
    let archive = load_archive(repo, segment_size, info.map(|i| i.system_identifier))?;
    let mut report = analyze(&archive, &backups);
    if let Some(w) = &report.window {
        let major = infos
            .last()
            .map(|i| i.server_version_num / 10000)
            .unwrap_or(15);
        let end = parse_segment(&w.latest_segment, segment_size).map(|(_, s)| s);
        let reachable: Vec<String> = archive
            .segments
            .iter()
            .filter(|s| s.timeline <= w.latest_timeline && Some(s.segno) <= end)
            .map(|s| segment_name(s.timeline, s.segno, segment_size))
            .collect();
        if repo.keys.is_writer() {
            // The commit times are in the segments' content, which a write-only key
            // cannot open.
            report.notes.push(
                "the latest commit time is read from the segments, which needs the full key".into(),
            );
        } else {
            report.latest_commit_time = newest_commit_time(repo, &reachable, segment_size, major)?;
        }
    }
    for id in unreadable {
        report.notes.push(format!(
            "snapshot {id} is a physical base backup whose record cannot be read; it was not \
             checked (and cannot be restored with --pgdata)"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::super::timeline::{parse_history, Segment};
    use super::*;
    use std::collections::BTreeMap;

    const SEG: u32 = 16 << 20;

    fn archive(segs: &[(u32, u64)], histories: &[(u32, &str)]) -> Archive {
        Archive {
            segment_size: SEG,
            system_identifier: Some("42".into()),
            segments: segs
                .iter()
                .map(|(t, s)| Segment {
                    timeline: *t,
                    segno: *s,
                    pushed: None,
                })
                .collect(),
            histories: histories
                .iter()
                .map(|(t, text)| (*t, parse_history(text)))
                .collect(),
            ..Default::default()
        }
    }

    fn backup(name: &str, tli: u32, start: u64, stop: u64) -> Backup {
        Backup {
            id: format!("{name}{}", "0".repeat(64 - name.len())),
            short_id: name.into(),
            timeline: tli,
            start_lsn: start * SEG as u64 + 0x28,
            stop_lsn: stop * SEG as u64 + 0x100,
            start_segno: start,
            stop_segno: stop,
            stopped_at: DateTime::parse_from_rfc3339(&format!("2024-01-01T00:{start:02}:00Z"))
                .unwrap(),
            system_identifier: "42".into(),
        }
    }

    fn range(tli: u32, r: std::ops::RangeInclusive<u64>) -> Vec<(u32, u64)> {
        r.map(|s| (tli, s)).collect()
    }

    #[test]
    fn contiguous_archive_is_ok_and_gives_the_window() {
        let a = archive(&range(1, 1..=9), &[]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3), backup("bbbb", 1, 5, 6)]);
        assert!(r.ok);
        assert!(r.gaps.is_empty());
        let w = r.window.unwrap();
        assert_eq!(w.earliest_lsn, "0/3000100");
        assert_eq!(w.earliest_backup, format!("aaaa{}", "0".repeat(60)));
        assert_eq!(w.latest_lsn, "0/A000000");
        assert_eq!(w.latest_segment, "000000010000000000000009");
        assert_eq!(r.backups[0].status, "ok");
        assert_eq!(r.backups[0].timelines, [1]);
        assert_eq!(r.timelines[0].holes, 0);
    }

    #[test]
    fn a_missing_segment_is_a_gap_for_the_backups_before_it() {
        let mut segs = range(1, 1..=9);
        segs.retain(|(_, s)| *s != 7);
        let a = archive(&segs, &[]);
        let r = analyze(
            &a,
            &[
                backup("aaaa", 1, 2, 3),
                backup("bbbb", 1, 5, 6),
                backup("cccc", 1, 8, 8),
            ],
        );
        assert!(!r.ok);
        assert_eq!(r.gaps.len(), 1);
        let g = &r.gaps[0];
        assert_eq!(g.first, "000000010000000000000007");
        assert_eq!(g.last, g.first);
        assert_eq!(g.count, 1);
        assert_eq!(
            (g.start_lsn.as_str(), g.end_lsn.as_str()),
            ("0/7000000", "0/8000000")
        );
        assert_eq!(g.backups, ["aaaa", "bbbb"]);
        assert_eq!(r.backups[0].status, "gap");
        assert_eq!(
            r.backups[0].window.as_ref().unwrap().latest_lsn,
            "0/7000000"
        );
        assert_eq!(r.backups[2].status, "ok");
        // The overall window still reaches the newest segment, through the newest backup.
        let w = r.window.unwrap();
        assert_eq!(w.earliest_lsn, "0/3000100");
        assert_eq!(w.latest_lsn, "0/A000000");
        assert_eq!(r.timelines[0].holes, 1);
    }

    #[test]
    fn a_backup_missing_its_own_segments_is_incomplete() {
        let a = archive(&[(1, 2), (1, 4), (1, 5)], &[]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert!(!r.ok);
        assert_eq!(r.backups[0].status, "incomplete");
        assert_eq!(
            r.backups[0].first_missing.as_deref(),
            Some("000000010000000000000003")
        );
        assert!(r.window.is_none());
        // Missing at the very start, and nothing archived at all.
        let a = archive(&[(1, 3)], &[]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert_eq!(r.backups[0].status, "incomplete");
        assert_eq!(r.gaps[0].first, "000000010000000000000002");
        let r = analyze(&archive(&[], &[]), &[backup("aaaa", 1, 2, 3)]);
        assert_eq!(r.backups[0].status, "incomplete");
        assert_eq!(r.gaps[0].count, 2);
        assert!(!r.notes.is_empty());
    }

    #[test]
    fn timelines_are_followed_from_the_switch_point() {
        // Timeline 2 branched from 1 in segment 5; timeline 1 went on (an old primary).
        let mut segs = range(1, 1..=8);
        segs.extend(range(2, 5..=7));
        let a = archive(
            &segs,
            &[(2, "1\t0/50000A0\tno recovery target specified\n")],
        );
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.backups[0].timelines, [1, 2]);
        let w = r.window.as_ref().unwrap();
        assert_eq!(w.latest_timeline, 2);
        assert_eq!(w.latest_segment, "000000020000000000000007");
        assert_eq!(r.timelines[1].parent, Some(1));
        assert_eq!(r.timelines[1].switch_lsn.as_deref(), Some("0/50000A0"));

        // The first segment of timeline 2 is missing: timeline 1's segment 5 does not
        // stand in for it.
        segs.retain(|s| *s != (2, 5));
        let a = archive(&segs, &[(2, "1\t0/50000A0\tx\n")]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert!(!r.ok);
        assert_eq!(r.gaps[0].first, "000000020000000000000005");
        assert_eq!(
            r.backups[0].window.as_ref().unwrap().latest_lsn,
            "0/5000000"
        );

        // A backup taken on timeline 1 after the switch does not follow timeline 2, and is
        // warned that `latest` would pick timeline 2.
        let r = analyze(&a, &[backup("bbbb", 1, 6, 7)]);
        assert!(r.ok);
        assert_eq!(r.backups[0].timelines, [1]);
        assert_eq!(
            r.backups[0].window.as_ref().unwrap().latest_lsn,
            "0/9000000"
        );
        assert!(r.backups[0].notes[0].contains("--target-timeline 1"));

        // Promoted, but nothing of timeline 2 archived yet: not a gap, a note.
        let a = archive(&range(1, 1..=4), &[(2, "1\t0/50000A0\tx\n")]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert!(r.ok);
        assert_eq!(r.backups[0].timelines, [1, 2]);
        assert!(r.backups[0].notes[0].contains("no archived segment yet"));
        assert_eq!(r.window.unwrap().latest_segment, "000000010000000000000004");
    }

    #[test]
    fn chains_of_timelines_and_the_newest_descendant() {
        let h2 = "1\t0/4000000\tx\n";
        let h3 = "1\t0/4000000\tx\n2\t0/6800000\ty\n";
        let h4 = "1\t0/2800000\tz\n"; // branched from 1 before the backup ended
        let hist: BTreeMap<u32, Vec<(u32, u64)>> = [(2, h2), (3, h3), (4, h4)]
            .iter()
            .map(|(t, h)| (*t, parse_history(h)))
            .collect();
        let stop = 3 * SEG as u64 + 0x100;
        assert_eq!(
            timeline_chain(1, stop, &hist),
            [(1, None), (2, Some(0x400_0000)), (3, Some(0x680_0000))]
        );
        assert_eq!(
            timeline_chain(2, 0x500_0000, &hist),
            [(2, None), (3, Some(0x680_0000))]
        );
        assert_eq!(timeline_chain(3, 0x700_0000, &hist), [(3, None)]);
        assert_eq!(
            timeline_chain(1, 0x100_0000, &hist)[..],
            [(1, None), (4, Some(0x280_0000))]
        );

        // Segment 4 starts timeline 2 exactly at a boundary: it is 2's, as is 5; 6 is 3's.
        let mut segs = range(1, 1..=3);
        segs.extend(range(2, 4..=5));
        segs.extend(range(3, 6..=7));
        let a = archive(&segs, &[(2, h2), (3, h3)]);
        let r = analyze(&a, &[backup("aaaa", 1, 2, 3)]);
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.window.unwrap().latest_segment, "000000030000000000000007");
    }

    #[test]
    fn no_backup_reports_the_extent() {
        let mut segs = range(1, 3..=6);
        segs.retain(|s| s.1 != 4);
        let r = analyze(&archive(&segs, &[]), &[]);
        assert!(r.ok);
        assert!(r.window.is_none());
        assert_eq!(
            r.timelines[0].first_segment.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(r.timelines[0].holes, 1);
        assert!(r.notes[0].contains("no physical base backup"));
        let r = analyze(&archive(&[], &[]), &[]);
        assert!(r.ok);
        assert!(r.notes[0].contains("empty"));
    }
}
