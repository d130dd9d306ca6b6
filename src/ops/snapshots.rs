//! `snapshots`: the snapshots, oldest first.

use super::mib;
use crate::repo::features::Features;
use crate::repo::snapshot::{SourceInfo, Summary};
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// One snapshot (`snapshots --json` prints an array of these).
#[derive(Serialize)]
pub struct SnapshotEntry {
    pub id: String,
    pub short_id: String,
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub hostname: String,
    pub username: String,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub kind: String,
    pub size: u64,
    pub tree: String,
    pub parent: Option<String>,
    pub sources: Vec<SourceInfo>,
    pub summary: Summary,
    pub requires: Features,
    /// The declared source it backs up (`[sources.NAME]`), if any.
    pub source: Option<String>,
    /// The stack run it was made by, if any.
    pub run: Option<String>,
    /// For a copy: the id of the snapshot it was copied from.
    pub original: Option<String>,
}

/// The snapshots that have every one of `tags` and, when `sources` is not empty, back up
/// one of those declared sources.
pub fn snapshots(
    repo: &Repository,
    tags: &[String],
    sources: &[String],
) -> Result<Vec<SnapshotEntry>> {
    Ok(repo
        .load_snapshots()?
        .into_iter()
        .filter(|s| tags.iter().all(|t| s.has_tag(t)))
        .filter(|s| sources.is_empty() || s.source.as_ref().is_some_and(|n| sources.contains(n)))
        .map(|s| SnapshotEntry {
            id: s.id.to_hex(),
            short_id: s.id.short(),
            time: s.time,
            hostname: s.hostname,
            username: s.username,
            tags: s.tags,
            paths: s.paths,
            kind: s.kind.to_string(),
            size: s.size,
            tree: s.tree.to_hex(),
            parent: s.parent.map(|p| p.to_hex()),
            sources: s.sources,
            summary: s.summary,
            requires: s.requires,
            source: s.source,
            run: s.run,
            original: s.original.map(|o| o.to_hex()),
        })
        .collect())
}

/// The table `snapshots` prints.
pub struct Table<'a>(pub &'a [SnapshotEntry]);

impl std::fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<10} {:<20} {:<16} {:<12} {:<17} {:>11}  {:<16} paths",
            "id", "time", "host", "source", "kind", "size", "tags"
        )?;
        for s in self.0 {
            writeln!(
                f,
                "{:<10} {:<20} {:<16} {:<12} {:<17} {:>11}  {:<16} {}",
                s.short_id,
                s.time.format("%Y-%m-%d %H:%M:%S"),
                s.hostname,
                s.source.as_deref().unwrap_or("-"),
                s.kind,
                mib(s.size),
                s.tags.join(","),
                s.paths.join(" ")
            )?;
        }
        writeln!(f, "{} snapshot(s)", self.0.len())
    }
}
