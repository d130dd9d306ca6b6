//! Sources: what goes into a snapshot.
//!
//! Every kind of backup implements [`Source`]: it feeds the same
//! [`BlobSaver`](crate::repo::saver::BlobSaver) and contributes nodes to the snapshot's
//! root tree plus a [`SourceInfo`] with its typed [`Metadata`]. [`run`] runs any source; it
//! commits a snapshot only after the source reported success and every pack and index file
//! is durable. A failing source returns an error and no snapshot exists.

pub mod command;
pub mod files;
pub mod postgres;
pub mod redis;
pub mod stream;

use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::features::Features;
use crate::repo::id::Id;
use crate::repo::index::MasterIndex;
use crate::repo::saver::BlobSaver;
use crate::repo::snapshot::{Kind, Snapshot, SourceInfo, Summary};
use crate::repo::tree::{Node, Tree};
use crate::repo::tree_cache::TreeCache;
use crate::repo::{pack::BlobType, Repository};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// `%XX`-decode one part of a URL; None when an escape is bad or the result is not UTF-8.
/// Callers say which URL is wrong without showing the part: it may be a password.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(
                s.get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Options every kind of backup shares.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    pub tags: Vec<String>,
    /// Snapshot time (for imports and tests); now when unset.
    pub time: Option<DateTime<FixedOffset>>,
    pub hostname: Option<String>,
    /// The declared source this backup is of (recorded as the snapshot's `source`).
    pub source: Option<String>,
    /// The stack run it belongs to (recorded as the snapshot's `run`).
    pub run: Option<String>,
}

/// A backup in progress: the saver plus the running summary.
pub struct Session {
    pub repo: Arc<Repository>,
    pub index: Arc<MasterIndex>,
    pub saver: BlobSaver,
    pub summary: Summary,
    pub started: std::time::Instant,
    /// With a writer key, which cannot open the repository's trees: the trees of earlier
    /// backups on this host, and the ones this session stores.
    cache: Option<TreeCache>,
}

impl Session {
    pub fn start(repo: Arc<Repository>) -> Result<Session> {
        let index = Arc::new(repo.load_index()?);
        Ok(Session {
            saver: BlobSaver::new(repo.clone(), index.clone(), true)?,
            cache: None,
            repo,
            index,
            summary: Summary::default(),
            started: std::time::Instant::now(),
        })
    }

    /// Keep this session's trees for the next backup of the same source (the sources that
    /// skip unchanged files against a parent call it first): only with a writer key, which
    /// keeps them in the local tree cache.
    pub(crate) fn cache_trees(&mut self) {
        if self.repo.keys.is_writer() && self.cache.is_none() {
            self.cache = Some(TreeCache::start(&self.repo));
        }
    }

    /// A tree of a parent snapshot: from the repository, or with a writer key from the local
    /// cache (`None` when the cache does not have it).
    pub fn load_tree(&self, id: &Id) -> Result<Option<Tree>> {
        if !self.repo.keys.is_writer() {
            return Ok(Some(self.repo.load_tree(&self.index, id)?));
        }
        Ok(self.cache.as_ref().and_then(|c| c.get(id, &self.repo.keys)))
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
        match &mut self.cache {
            Some(c) => {
                let id = self.saver.save(BlobType::Tree, json.clone())?.0;
                c.add(&id, &json);
                Ok(id)
            }
            None => Ok(self.saver.save(BlobType::Tree, json)?.0),
        }
    }
}

/// A kind of backup: it feeds a [`Session`] and says what it stored. [`run`] runs any
/// source and does everything the kinds share, once: it starts the session, lets the
/// source save, stores the snapshot's root tree from the source's nodes, waits until every
/// pack and index file is durable, checks the lock, and writes the snapshot with its kind,
/// tags, host, user and time, the summary (the source counts its files in
/// `session.summary`; `run` adds the blobs, bytes and duration) and the source entries. A
/// source that fails (a producer's non-zero exit or signal, a short or foreign stream, a
/// cut connection, a read error) returns an error from [`Source::save`], and then no
/// snapshot is written: `run` returns before committing.
///
/// # Adding a source
///
/// 1. One new module, `src/sources/NAME.rs` (declared with `pub mod NAME;` here), holding:
///    - its options, and a constructor that checks them and does everything that can fail
///      before data is stored (connecting, finding programs, finding the parent
///      snapshot); it returns a value that implements `Source`;
///    - `impl Source`: [`Source::kind`], the snapshot kind it writes, and [`Source::save`],
///      which reads the data into the session ([`stream::save_stream`] for a byte stream,
///      or the file archiver [`files::Archiver`]), counts what it stored in
///      `session.summary`, fails with [`ErrorKind::Source`] when the data is not whole, and
///      returns a [`Saved`]: its nodes of the root tree, its paths and size, and one
///      [`SourceInfo`] per source made with [`Metadata::entry`];
///    - its metadata type: a `Serialize + Deserialize` struct implementing [`Metadata`]
///      (its `KIND`), which every reader decodes with [`Metadata::of`] or [`sources_of`];
///    - `pub fn backup_NAME(repo, opts, progress) -> Result<Snapshot>`: the constructor,
///      then [`run`].
/// 2. One registration: the kind's name in the `kinds!` table of `src/repo/snapshot.rs`
///    (a format feature in `src/repo/features.rs` too, if older coffers must refuse its
///    snapshots), and the kind in docs/FORMAT.md's snapshot section.
///
/// Nothing is copied: committing, tags, host, time, summaries and the "failed source, no
/// snapshot" rule stay in [`run`]; the CLI calls `backup_NAME` and prints.
pub trait Source {
    /// The kind of the snapshot it writes.
    fn kind(&self) -> Kind;
    /// Store the data through `session`; an error means the source failed, and no
    /// snapshot is written.
    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved>;
}

/// What a source stored, for [`run`] to commit.
pub struct Saved {
    /// Its entries in the snapshot's root tree.
    pub nodes: Vec<Node>,
    pub paths: Vec<String>,
    /// Bytes of the files and streams it stored.
    pub size: u64,
    /// The earlier snapshot it skipped unchanged files against.
    pub parent: Option<Id>,
    pub excludes: Vec<String>,
    pub sources: Vec<SourceInfo>,
    /// The format features a reader needs (see [`crate::repo::features`]).
    pub requires: Features,
}

/// Run a source into a new snapshot (see [`Source`]). The snapshot is the last write:
/// it is written once the source succeeded and all data and index are flushed.
pub fn run<S: Source>(
    repo: Arc<Repository>,
    source: S,
    opts: &CommonOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let kind = source.kind();
    let mut session = Session::start(repo)?;
    let saved = Box::new(source).save(&mut session, progress)?;
    let tree = session.save_tree(Tree { nodes: saved.nodes })?;
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
        paths: saved.paths,
        kind,
        tree,
        parent: saved.parent,
        size: saved.size,
        excludes: saved.excludes,
        sources: saved.sources,
        summary: session.summary,
        program_version: format!("coffer {}", env!("CARGO_PKG_VERSION")),
        requires: saved.requires,
        source: opts.source.clone(),
        run: opts.run.clone(),
        original: None,
        sealed: None,
        stored_as: None,
    };
    crate::repo::lock::ensure_held(&session.repo)?;
    crate::cancel::check()?;
    snap.id = session.repo.save_snapshot(&snap)?;
    if let Some(cache) = session.cache.take() {
        if let Err(e) = cache.persist(&snap.tree) {
            progress.log(&format!(
                "warning: the local tree cache is not updated ({e}): the next backup with this \
                 write-only key reads every file again"
            ));
        }
    }
    Ok(snap)
}

/// The typed metadata of one kind of source, stored as the `metadata` of its
/// [`SourceInfo`]. Writers make entries with [`Metadata::entry`]; readers decode with
/// [`Metadata::of`] or [`sources_of`], where metadata that does not decode is an
/// integrity error naming the snapshot, never skipped.
pub trait Metadata: Serialize + DeserializeOwned {
    /// The kind of the sources that carry it.
    const KIND: Kind;

    /// What a record must hold beyond its shape to be read (e.g. a base backup's segment
    /// size); the reason when it does not.
    fn validate(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The snapshot entry of a source with this metadata.
    fn entry(&self, name: &str, path: &str) -> Result<SourceInfo> {
        Ok(SourceInfo {
            kind: Self::KIND,
            name: name.to_string(),
            path: path.to_string(),
            metadata: serde_json::to_value(self)?,
        })
    }

    /// The metadata of `src` (a source of this kind in `snap`).
    fn of(snap: &Snapshot, src: &SourceInfo) -> Result<Self> {
        debug_assert_eq!(src.kind, Self::KIND);
        serde_json::from_value::<Self>(src.metadata.clone())
            .map_err(|e| e.to_string())
            .and_then(|m| m.validate().map(|()| m))
            .map_err(|e| {
                Error::integrity(format!(
                    "snapshot {}: the metadata of its {} source {:?} is unreadable: {e}",
                    snap.id.short(),
                    src.kind,
                    src.name
                ))
                .into()
            })
    }
}

/// Every source of `M`'s kind in a snapshot, with its metadata decoded.
pub fn sources_of<M: Metadata>(snap: &Snapshot) -> Result<Vec<(&SourceInfo, M)>> {
    snap.sources
        .iter()
        .filter(|s| s.kind == M::KIND)
        .map(|s| Ok((s, M::of(snap, s)?)))
        .collect()
}
