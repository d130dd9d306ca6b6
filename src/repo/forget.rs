//! Retention policy, with restic's documented semantics.
//!
//! Snapshots are grouped (by default by host and paths) and, within a group, walked newest
//! first. Each `--keep-*` rule has a counter and a bucket function (the snapshot's position
//! for `last`; its hour, calendar day, ISO week, month or year otherwise, in the time zone
//! it was recorded in). A snapshot is kept by a rule when it falls in a new bucket and the
//! rule still has count left; a snapshot is kept if any rule keeps it. `--keep-within D`
//! keeps every snapshot within D of the group's newest snapshot. A count of -1 means
//! "unlimited".

use super::lock::ExclusiveLock;
use super::snapshot::Snapshot;
use crate::backend::FileKind;
use anyhow::{bail, Result};
use chrono::{DateTime, Datelike, FixedOffset, Months, Timelike};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub last: i64,
    pub hourly: i64,
    pub daily: i64,
    pub weekly: i64,
    pub monthly: i64,
    pub yearly: i64,
    pub within: Option<Within>,
    /// Snapshots with any of these tags are always kept.
    pub keep_tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// A restic-style duration: `1y2m3d4h` (years, months, days, hours).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl std::str::FromStr for Within {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Within> {
        let mut w = Within::default();
        let mut num = String::new();
        if s.is_empty() {
            bail!("empty duration");
        }
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid duration {s:?}: expected e.g. 1y2m3d4h"))?;
            num.clear();
            match c {
                'y' => w.years += n,
                'm' => w.months += n,
                'd' => w.days += n,
                'h' => w.hours += n,
                _ => bail!("invalid duration {s:?}: units are y, m, d, h"),
            }
        }
        if !num.is_empty() {
            bail!("invalid duration {s:?}: a number needs a unit (y, m, d, h)");
        }
        Ok(w)
    }
}

impl Within {
    fn subtract_from(&self, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let t = t
            .checked_sub_months(Months::new(self.years * 12 + self.months))
            .unwrap_or(t);
        t - chrono::Duration::days(self.days as i64) - chrono::Duration::hours(self.hours as i64)
    }
}

type Bucker = fn(&DateTime<FixedOffset>, usize) -> i64;

fn b_last(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}
fn b_hour(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 1_000_000 + t.month() as i64 * 10_000 + t.day() as i64 * 100 + t.hour() as i64
}
fn b_day(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64
}
fn b_week(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    w.year() as i64 * 100 + w.week() as i64
}
fn b_month(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 100 + t.month() as i64
}
fn b_year(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64
}

/// Why a snapshot is kept.
#[derive(Debug, Clone)]
pub struct Decision {
    pub snapshot: Snapshot,
    pub keep: bool,
    pub reasons: Vec<&'static str>,
}

/// Apply the policy to one group; returns decisions newest first.
pub fn apply(mut list: Vec<Snapshot>, p: &Policy) -> Vec<Decision> {
    list.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
    let mut buckets: Vec<(&'static str, i64, Bucker, i64)> = vec![
        ("last", p.last, b_last, -1),
        ("hourly", p.hourly, b_hour, -1),
        ("daily", p.daily, b_day, -1),
        ("weekly", p.weekly, b_week, -1),
        ("monthly", p.monthly, b_month, -1),
        ("yearly", p.yearly, b_year, -1),
    ];
    let newest = list.first().map(|s| s.time);
    let mut out = Vec::new();
    for (nr, s) in list.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if p.keep_tags.iter().any(|t| s.has_tag(t)) {
            reasons.push("tag");
        }
        for b in buckets.iter_mut() {
            if b.1 > 0 || b.1 == -1 {
                let v = (b.2)(&s.time, nr);
                if v != b.3 {
                    reasons.push(b.0);
                    b.3 = v;
                    if b.1 > 0 {
                        b.1 -= 1;
                    }
                }
            }
        }
        if let (Some(w), Some(n)) = (p.within, newest) {
            if s.time > w.subtract_from(n) {
                reasons.push("within");
            }
        }
        out.push(Decision {
            keep: !reasons.is_empty(),
            snapshot: s,
            reasons,
        });
    }
    out
}

/// Group snapshots by the given keys (`host`, `paths`, `tags`, `source`).
pub fn group(list: Vec<Snapshot>, keys: &[String]) -> Result<BTreeMap<String, Vec<Snapshot>>> {
    for k in keys {
        if !["host", "paths", "tags", "source"].contains(&k.as_str()) {
            bail!("unknown group-by key {k:?}: use host, paths, tags, source");
        }
    }
    let mut out: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
    for s in list {
        let mut parts = Vec::new();
        for k in keys {
            match k.as_str() {
                "host" => parts.push(format!("host {}", s.hostname)),
                "paths" => parts.push(format!("paths [{}]", s.paths.join(", "))),
                "source" => parts.push(format!("source {}", s.source.as_deref().unwrap_or("-"))),
                _ => {
                    let mut t = s.tags.clone();
                    t.sort();
                    parts.push(format!("tags [{}]", t.join(", ")))
                }
            }
        }
        out.entry(parts.join(", ")).or_default().push(s);
    }
    Ok(out)
}

/// Remove the snapshots, under the exclusive lock. Returns how many were removed.
pub fn remove(lock: &ExclusiveLock, snapshots: &[Snapshot]) -> Result<usize> {
    lock.ensure_held()?;
    for s in snapshots {
        lock.repo()
            .remove_object(FileKind::Snapshot, &s.id.to_hex())?;
    }
    Ok(snapshots.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::id::Id;

    fn snap(t: &str) -> Snapshot {
        Snapshot {
            id: Id::random(),
            time: DateTime::parse_from_rfc3339(t).unwrap(),
            hostname: "h".into(),
            username: "u".into(),
            tags: vec![],
            paths: vec!["/x".into()],
            kind: crate::repo::snapshot::Kind::Files,
            tree: Id::default(),
            parent: None,
            size: 0,
            excludes: vec![],
            sources: vec![],
            summary: Default::default(),
            program_version: "t".into(),
            requires: Default::default(),
            source: None,
            run: None,
            original: None,
            sealed: None,
            stored_as: None,
        }
    }

    fn kept(list: Vec<Snapshot>, p: &Policy) -> Vec<String> {
        let mut v: Vec<String> = apply(list, p)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.snapshot.time.to_rfc3339())
            .collect();
        v.sort();
        v
    }

    fn series() -> Vec<Snapshot> {
        // Two snapshots a day for 20 days in January 2024, at 02:00 and 14:00.
        let mut v = Vec::new();
        for d in 1..=20 {
            v.push(snap(&format!("2024-01-{d:02}T02:00:00+00:00")));
            v.push(snap(&format!("2024-01-{d:02}T14:00:00+00:00")));
        }
        v
    }

    #[test]
    fn keep_last_and_daily() {
        let p = Policy {
            last: 3,
            ..Default::default()
        };
        assert_eq!(kept(series(), &p).len(), 3);
        let p = Policy {
            daily: 5,
            ..Default::default()
        };
        let k = kept(series(), &p);
        assert_eq!(k.len(), 5);
        // The newest of each day is the one kept.
        assert!(k.iter().all(|t| t.contains("T14:00")));
        assert!(k[0].starts_with("2024-01-16"));
    }

    #[test]
    fn rules_combine_as_union() {
        let p = Policy {
            last: 2,
            daily: 3,
            ..Default::default()
        };
        // last 2 = 20th 14:00 and 02:00; daily 3 = 20th, 19th, 18th (14:00).
        assert_eq!(kept(series(), &p).len(), 4);
    }

    #[test]
    fn weekly_uses_iso_weeks() {
        // 2024-01-01 is a Monday: weeks 1, 2, 3 (up to 21st).
        let p = Policy {
            weekly: 10,
            ..Default::default()
        };
        let k = kept(series(), &p);
        assert_eq!(
            k,
            vec![
                "2024-01-07T14:00:00+00:00",
                "2024-01-14T14:00:00+00:00",
                "2024-01-20T14:00:00+00:00"
            ]
        );
    }

    #[test]
    fn monthly_yearly_unlimited() {
        let mut v = series();
        v.push(snap("2023-12-31T10:00:00+00:00"));
        v.push(snap("2022-06-01T10:00:00+00:00"));
        let p = Policy {
            monthly: -1,
            ..Default::default()
        };
        assert_eq!(kept(v.clone(), &p).len(), 3);
        let p = Policy {
            yearly: 2,
            ..Default::default()
        };
        assert_eq!(
            kept(v, &p),
            vec!["2023-12-31T10:00:00+00:00", "2024-01-20T14:00:00+00:00"]
        );
    }

    #[test]
    fn within_is_relative_to_newest() {
        let p = Policy {
            within: Some("2d".parse().unwrap()),
            ..Default::default()
        };
        // Newest is 20th 14:00; within 2 days: after 18th 14:00 → 19th 02:00, 19th 14:00, 20th ×2.
        assert_eq!(kept(series(), &p).len(), 4);
        assert!("5x".parse::<Within>().is_err());
        assert!("5".parse::<Within>().is_err());
        assert_eq!(
            "1y2m3d4h".parse::<Within>().unwrap(),
            Within {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
    }

    #[test]
    fn tags_keep() {
        let mut v = series();
        v[0].tags.push("keep".into());
        let p = Policy {
            last: 1,
            keep_tags: vec!["keep".into()],
            ..Default::default()
        };
        assert_eq!(kept(v, &p).len(), 2);
    }
}
