//! Sources: what goes into a snapshot.
//!
//! Every source feeds the same [`BlobSaver`](crate::repo::saver::BlobSaver) and contributes
//! nodes to the snapshot's root tree plus a [`SourceInfo`] with its metadata. A snapshot
//! is committed only after the source reported success and every pack and index file is
//! durable ([`commit`]); a failing source returns an error and no snapshot exists.

pub mod files;
pub mod postgres;
pub mod stream;

use crate::backend::FileKind;
use crate::error::{Error, ErrorKind};
use crate::repo::id::Id;
use crate::repo::index::MasterIndex;
use crate::repo::saver::BlobSaver;
use crate::repo::snapshot::{Snapshot, SourceInfo, Summary};
use crate::repo::{pack::BlobType, tree::Tree, Repository};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use std::sync::Arc;

/// Options every kind of backup shares.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    pub tags: Vec<String>,
    /// Snapshot time (for imports and tests); now when unset.
    pub time: Option<DateTime<FixedOffset>>,
    pub hostname: Option<String>,
}

/// A backup in progress: the saver plus the running summary.
pub struct Session {
    pub repo: Arc<Repository>,
    pub index: Arc<MasterIndex>,
    pub saver: BlobSaver,
    pub summary: Summary,
    pub started: std::time::Instant,
}

impl Session {
    pub fn start(repo: Arc<Repository>) -> Result<Session> {
        let index = Arc::new(repo.load_index()?);
        Ok(Session {
            saver: BlobSaver::new(repo.clone(), index.clone(), true),
            repo,
            index,
            summary: Summary::default(),
            started: std::time::Instant::now(),
        })
    }

    /// Store a tree blob; returns its id.
    pub fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.sort();
        let json = serde_json::to_vec(&tree)?;
        if json.len() > crate::repo::tree::MAX_TREE_BYTES {
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "a directory has too many entries to store ({} entries, {} MiB as a tree; at most {} MiB)",
                    tree.nodes.len(),
                    json.len() >> 20,
                    crate::repo::tree::MAX_TREE_BYTES >> 20
                ),
            )
            .into());
        }
        Ok(self.saver.save(BlobType::Tree, json)?.0)
    }
}

/// What a finished source hands to [`commit`].
pub struct Finished {
    pub kind: String,
    pub paths: Vec<String>,
    pub tree: Id,
    pub size: u64,
    pub parent: Option<Id>,
    pub excludes: Vec<String>,
    pub sources: Vec<SourceInfo>,
    /// The format features a reader needs (see [`crate::repo::features`]).
    pub requires: crate::repo::features::Features,
}

/// Flush all data and index, then write the snapshot. The snapshot is the last write.
pub fn commit(mut session: Session, f: Finished, opts: &CommonOptions) -> Result<Snapshot> {
    let stats = session.saver.stats.clone();
    session.saver.finish()?;
    use std::sync::atomic::Ordering::Relaxed;
    session.summary.blobs_added = stats.blobs_added.load(Relaxed);
    session.summary.bytes_added = stats.bytes_added.load(Relaxed);
    session.summary.bytes_stored = stats.bytes_stored.load(Relaxed);
    session.summary.duration_secs = session.started.elapsed().as_secs_f64();
    let mut snap = Snapshot {
        id: Id::default(),
        time: opts
            .time
            .unwrap_or_else(|| chrono::Local::now().fixed_offset()),
        hostname: opts.hostname.clone().unwrap_or_else(crate::repo::hostname),
        username: crate::repo::username(),
        tags: opts.tags.clone(),
        paths: f.paths,
        kind: f.kind,
        tree: f.tree,
        parent: f.parent,
        size: f.size,
        excludes: f.excludes,
        sources: f.sources,
        summary: session.summary,
        program_version: format!("coffer {}", env!("CARGO_PKG_VERSION")),
        requires: f.requires,
    };
    crate::repo::lock::ensure_held(&session.repo)?;
    snap.id = session.repo.save_json(FileKind::Snapshot, &snap)?;
    Ok(snap)
}
