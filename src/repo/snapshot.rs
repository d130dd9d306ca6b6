//! Snapshots: the manifest that makes a backup visible.
//!
//! A snapshot is written last, after every pack and index file it depends on is durable.
//! Its name is the BLAKE3 hash of its stored bytes.

use super::features::Features;
use super::id::Id;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// One source that contributed to a snapshot (a directory tree, a stream, later a
/// database), with free-form metadata (LSNs, row counts, versions…).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    pub kind: String,
    pub name: String,
    /// Where the source's data sits in the snapshot's tree.
    pub path: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub blobs_added: u64,
    /// Plaintext bytes of blobs not already in the repository.
    pub bytes_added: u64,
    /// Bytes written to storage for those blobs (compressed and sealed).
    pub bytes_stored: u64,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The storage name; not part of the stored JSON.
    #[serde(skip)]
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    /// `files`, `stream`; later `postgres`, `stack`…
    pub kind: String,
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Total bytes of the files and streams in the snapshot.
    pub size: u64,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub sources: Vec<SourceInfo>,
    #[serde(default)]
    pub summary: Summary,
    pub program_version: String,
    /// The format features a reader must know to read this snapshot (see
    /// [`features`](super::features)); none in snapshots that use only the base format.
    #[serde(default, skip_serializing_if = "Features::is_empty")]
    pub requires: Features,
}

impl Snapshot {
    pub fn has_tag(&self, t: &str) -> bool {
        self.tags.iter().any(|x| x == t)
    }

    /// Fail (exit 2) when this snapshot needs a feature this coffer does not know.
    pub fn check_features(&self) -> Result<()> {
        self.requires
            .check(&format!("snapshot {}", self.id.short()))
    }
}
