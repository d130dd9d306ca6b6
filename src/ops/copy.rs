//! `coffer copy`: snapshots from one repository into another, without reading the sources
//! again.
//!
//! - The destination cuts and names blobs as the origin does: it was created with
//!   `init --like` the origin (the same chunker parameters and blob-id key, its own
//!   encryption key and key slots). A blob then has the same id in both, so only the blobs
//!   the destination lacks are read (each one verified against its id), and sealed again
//!   under the destination's key as they were compressed (no second compression); trees are
//!   the same bytes, so they copy as blobs too. An
//!   unchanged second copy reads the trees and transfers nothing else.
//! - A copied snapshot keeps everything the original says (kind, source, paths, tags, time,
//!   host, the sources' metadata: row counts, LSNs, dump streams) and records the original's
//!   id in `original`; a snapshot whose original the destination already has is skipped.
//! - Each snapshot is written to the destination only after its blobs and their index are
//!   durable there, as a backup's is. An interrupted copy leaves packs and index files that
//!   the next copy reuses: it resumes where the index files end.

use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::id::Id;
use crate::repo::index::MasterIndex;
use crate::repo::lock::Lock;
use crate::repo::pack::BlobType;
use crate::repo::saver::BlobSaver;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Which snapshots to copy: these ids or prefixes (or `latest`), else those of these
/// declared sources, else every one the destination does not have.
#[derive(Default)]
pub struct CopyOptions {
    pub snapshots: Vec<String>,
    pub sources: Vec<String>,
    /// With `snapshots` (a `copy_to` after a backup): also the snapshots of their sources
    /// that an earlier copy missed, those newer than the source's newest copy in the
    /// destination (none when it has no copy of the source). Older ones are never copied
    /// again: the destination's retention may have forgotten them.
    pub catch_up: bool,
}

/// `copy --json`.
#[derive(Serialize, Default)]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub copied: Vec<CopiedSnapshot>,
    /// Snapshots chosen that the destination already had.
    pub skipped: usize,
    /// Blobs read from the origin and stored in the destination, and their plaintext bytes.
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// What they took in the destination (compressed and sealed).
    pub bytes_stored: u64,
    pub duration_secs: f64,
}

#[derive(Serialize)]
pub struct CopiedSnapshot {
    /// The snapshot in the origin, and its copy in the destination.
    pub original: String,
    pub snapshot: String,
    pub source: Option<String>,
    pub time: String,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.copied {
            writeln!(
                f,
                "copied snapshot {} as {} ({}{}): {} blobs, {} new",
                &c.original[..8],
                &c.snapshot[..8],
                c.time,
                c.source
                    .as_deref()
                    .map(|s| format!(", source {s}"))
                    .unwrap_or_default(),
                c.blobs_copied,
                super::mib(c.bytes_copied),
            )?;
        }
        write!(
            f,
            "{} snapshot(s) copied from {} to {}, {} already there; {} read, {} stored, in {:.1} s",
            self.copied.len(),
            self.from,
            self.to,
            self.skipped,
            super::mib(self.bytes_copied),
            super::mib(self.bytes_stored),
            self.duration_secs
        )
    }
}

/// Copy snapshots from `from` to `to` (named `from_name` and `to_name` in the report).
pub fn copy(
    from: &Arc<Repository>,
    to: &Arc<Repository>,
    names: (&str, &str),
    opts: &CopyOptions,
    progress: &Progress,
) -> Result<CopyReport> {
    from.require_full(&format!("copy from {}", names.0))?;
    let t0 = Instant::now();
    if from.config.id == to.config.id {
        return Err(Error::usage(format!(
            "{} and {} are the same repository",
            names.0, names.1
        ))
        .into());
    }
    if !to.is_like(from) {
        return Err(Error::usage(format!(
            "repository {} does not cut and name blobs as {} does, so a copy could not \
             deduplicate: create the destination with `coffer --repo NAME init --like NAME` \
             (here: like {})",
            names.1, names.0, names.0
        ))
        .into());
    }
    let _from_lock = Lock::shared(from, "copy")?;
    let _to_lock = Lock::shared(to, "copy")?;
    let there = to.load_snapshots()?;
    let mut chosen = choose(from, &there, opts)?;
    chosen.sort_by_key(|s| s.time);
    let have: HashSet<Id> = there
        .iter()
        .flat_map(|s| [Some(s.id), s.original])
        .flatten()
        .collect();
    let mut report = CopyReport {
        from: names.0.to_string(),
        to: names.1.to_string(),
        ..Default::default()
    };
    let (todo, there): (Vec<Snapshot>, Vec<Snapshot>) = chosen
        .into_iter()
        .partition(|s| !have.contains(&s.original.unwrap_or(s.id)));
    report.skipped = there.len();
    if todo.is_empty() {
        report.duration_secs = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    let from_index = from.load_index()?;
    let mut to_index = Arc::new(to.load_index()?);
    for (i, snap) in todo.iter().enumerate() {
        crate::cancel::check()?;
        snap.check_features()?;
        progress.set_message(format!(
            "copying snapshot {} ({} of {})",
            snap.id.short(),
            i + 1,
            todo.len()
        ));
        let (copied, index) = copy_one(from, &from_index, to, to_index, snap, progress)?;
        to_index = index;
        report.blobs_copied += copied.blobs_copied;
        report.bytes_copied += copied.bytes_copied;
        report.bytes_stored += copied.bytes_stored;
        report.copied.push(copied.snapshot);
    }
    report.duration_secs = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The snapshots `opts` selects in `from`, given what the destination holds (`there`).
fn choose(from: &Repository, there: &[Snapshot], opts: &CopyOptions) -> Result<Vec<Snapshot>> {
    let all = from.load_snapshots()?;
    if !opts.snapshots.is_empty() {
        let mut picked = opts
            .snapshots
            .iter()
            .map(|spec| crate::repo::pick_snapshot(&all, spec))
            .collect::<Result<Vec<_>>>()?;
        if opts.catch_up {
            let newest_copy = |source: &str| {
                there
                    .iter()
                    .filter(|s| s.source.as_deref() == Some(source))
                    .map(|s| s.time)
                    .max()
            };
            let sources: HashSet<&str> =
                picked.iter().filter_map(|p| p.source.as_deref()).collect();
            let mut missed: Vec<Snapshot> = all
                .iter()
                .filter(|s| !picked.iter().any(|p| p.id == s.id))
                .filter(|s| {
                    let source = s.source.as_deref().filter(|n| sources.contains(n));
                    source.and_then(newest_copy).is_some_and(|t| s.time > t)
                })
                .cloned()
                .collect();
            picked.append(&mut missed);
        }
        return Ok(picked);
    }
    if !opts.sources.is_empty() {
        let picked: Vec<Snapshot> = all
            .into_iter()
            .filter(|s| s.source.as_ref().is_some_and(|n| opts.sources.contains(n)))
            .collect();
        if picked.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no snapshot of source {} to copy", opts.sources.join(", ")),
            )
            .into());
        }
        return Ok(picked);
    }
    Ok(all)
}

struct Copied {
    snapshot: CopiedSnapshot,
    blobs_copied: u64,
    bytes_copied: u64,
    bytes_stored: u64,
}

/// Copy one snapshot's missing blobs, then (once they and their index are durable) the
/// snapshot itself. Returns what it did and the destination's index with its new blobs.
fn copy_one(
    from: &Arc<Repository>,
    from_index: &MasterIndex,
    to: &Arc<Repository>,
    to_index: Arc<MasterIndex>,
    snap: &Snapshot,
    progress: &Progress,
) -> Result<(Copied, Arc<MasterIndex>)> {
    // Every tree of the snapshot, read from the origin (they name the data blobs). A tree
    // the destination has is still walked: its children may be in packs an interrupted
    // copy never indexed.
    let mut trees: Vec<(Id, Vec<u8>)> = Vec::new();
    let mut data: Vec<Id> = Vec::new();
    let (mut seen, mut stack) = (HashSet::new(), vec![snap.tree]);
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        // Read once: parsed here, and stored as it is when the destination lacks it.
        let raw = from.read_tree_blob(from_index, &id)?;
        let t = crate::repo::tree::decode(&raw, &id)?;
        for n in &t.nodes {
            for c in &n.content {
                if !to_index.has(c) && seen.insert(*c) {
                    data.push(*c);
                }
            }
            stack.extend(n.subtree);
        }
        if !to_index.has(&id) {
            trees.push((id, raw));
        }
    }
    // Read in pack order, a few at a time (storage latency overlaps), store as they come.
    data.sort_by_key(|id| {
        from_index
            .get(id)
            .map(|l| (from_index.pack_id(&l), l.entry.offset))
    });
    let mut saver = BlobSaver::new(to.clone(), to_index.clone(), true)?;
    let sealer = saver.sealer().clone();
    let sealer = &sealer;
    let readers = from.backend.concurrency().clamp(1, 8);
    let (work_tx, work_rx) = crossbeam_channel::unbounded::<Id>();
    // Each blob is verified in the origin, then sealed for the destination as it was
    // encoded (the origin's compression kept: no second compression).
    type Resealed = Result<(Vec<u8>, u32)>;
    let (done_tx, done_rx) = crossbeam_channel::bounded::<(Id, Resealed)>(readers * 2);
    for id in &data {
        work_tx.send(*id).expect("the receiver is alive");
    }
    drop(work_tx);
    let (mut blobs, mut bytes) = (0u64, 0u64);
    std::thread::scope(|sc| -> Result<()> {
        for _ in 0..readers {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            sc.spawn(move || {
                for id in rx.iter() {
                    let r = from
                        .read_blob_encoded(from_index, &id)
                        .map(|(encoded, raw)| (sealer.seal(&encoded), raw));
                    if tx.send((id, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Dropped on return: readers blocked on a full channel end with it.
        let done_rx = done_rx;
        let stop = || while work_rx.try_recv().is_ok() {};
        for (id, blob) in done_rx.iter() {
            let (sealed, raw) = match blob.and_then(|b| crate::cancel::check().map(|()| b)) {
                Ok(b) => b,
                Err(e) => {
                    stop();
                    return Err(e);
                }
            };
            bytes += raw as u64;
            blobs += 1;
            progress.inc(raw as u64);
            // The id is the destination's too: it names blobs as the origin does (checked
            // before the copy began).
            saver.save_sealed(BlobType::Data, id, raw, sealed)?;
        }
        Ok(())
    })?;
    for (id, raw) in trees {
        bytes += raw.len() as u64;
        blobs += 1;
        let (stored_as, _) = saver.save(BlobType::Tree, raw)?;
        if stored_as != id {
            return Err(Error::integrity(format!(
                "tree {} got another id in the destination",
                id.short()
            ))
            .into());
        }
    }
    let stats = saver.stats.clone();
    let packs = saver.finish()?;
    // The saver is gone: the index is ours again (else read it anew, packs included).
    let index = match Arc::try_unwrap(to_index) {
        Ok(mut index) => {
            for p in packs {
                index.add_pack(p);
            }
            index
        }
        Err(_) => to.load_index()?,
    };
    let mut copy = snap.clone();
    copy.original = Some(snap.original.unwrap_or(snap.id));
    // The parent is a snapshot of the origin; the copy stands alone.
    copy.parent = None;
    copy.stored_as = None;
    crate::repo::lock::ensure_held(to)?;
    crate::cancel::check()?;
    let id = to.save_snapshot(&copy)?;
    Ok((
        Copied {
            snapshot: CopiedSnapshot {
                original: snap.id.to_hex(),
                snapshot: id.to_hex(),
                source: snap.source.clone(),
                time: snap.time.to_rfc3339(),
                blobs_copied: blobs,
                bytes_copied: bytes,
            },
            blobs_copied: blobs,
            bytes_copied: bytes,
            bytes_stored: stats.bytes_stored.load(Relaxed),
        },
        Arc::new(index),
    ))
}
