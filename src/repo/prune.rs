//! `coffer prune`: remove data no snapshot needs.
//!
//! Runs under an exclusive lock (no backup can run meanwhile). Order of writes:
//! 1. copy the still-used blobs of mostly-unused packs into new packs (durable);
//! 2. write a new index covering every pack that stays and the new ones;
//! 3. delete the old index files;
//! 4. delete packs that are unused, repacked, or in no index (left by interrupted runs).
//!
//! A crash after step 2 leaves duplicate index entries (harmless); after step 3, packs in
//! no index, which the next prune deletes. No step deletes anything a snapshot needs.

use super::id::Id;
use super::index::{IndexFile, IndexPack, MasterIndex};
use super::lock::ExclusiveLock;
use super::pack::parse_pack;
use super::saver::BlobSaver;
use super::tree::NodeKind;
use super::Repository;
use crate::backend::FileKind;
use crate::error::Error;
use crate::progress::Progress;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::sync::Arc;

/// Repack a pack when more than this fraction of its blobs' bytes is unused (the pack's
/// header is not counted: it is overhead every pack has, not space prune could free).
pub const DEFAULT_MAX_UNUSED: f64 = 0.10;
const BLOBS_PER_INDEX_FILE: usize = 100_000;

#[derive(Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub packs_total: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_unindexed: usize,
    pub packs_written: usize,
    pub bytes_before: u64,
    pub bytes_deleted: u64,
    pub blobs_used: usize,
    pub blobs_unused: usize,
}

/// Collect every blob (trees and data) any snapshot needs. Fails on any snapshot that
/// cannot be read or that needs a feature this coffer does not know (it might use blobs in
/// ways this coffer cannot see).
pub fn used_blobs(repo: &Repository, index: &MasterIndex) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    for s in repo.load_snapshots_strict()? {
        let mut stack = vec![s.tree];
        while let Some(t) = stack.pop() {
            if !used.insert(t) {
                continue;
            }
            let tree = repo.load_tree(index, &t).with_context(|| {
                format!(
                    "snapshot {} cannot be read; prune stops so nothing is lost (run `coffer check`)",
                    s.id.short()
                )
            })?;
            for n in &tree.nodes {
                if let Some(sub) = n.subtree {
                    stack.push(sub);
                }
                if matches!(n.kind, NodeKind::File | NodeKind::Stream) {
                    for c in &n.content {
                        if !index.has(c) {
                            return Err(Error::integrity(format!(
                                "snapshot {} needs blob {} which is in no index; prune stops (run `coffer check`)",
                                s.id.short(),
                                c.short()
                            ))
                            .into());
                        }
                        used.insert(*c);
                    }
                }
            }
        }
    }
    Ok(used)
}

/// Whether prune deletes.
pub enum Run<'a> {
    /// Report what would be freed; deletes nothing, so needs no lock.
    DryRun(&'a Arc<Repository>),
    /// Delete, in the repository of the exclusive lock held.
    Delete(&'a ExclusiveLock),
}

pub fn prune(run: Run<'_>, max_unused: f64, progress: &Progress) -> Result<PruneReport> {
    let (repo, lock) = match run {
        Run::DryRun(repo) => (repo, None),
        Run::Delete(lock) => (lock.repo(), Some(lock)),
    };
    // Repacking opens blobs, and finding what is used reads every tree.
    repo.require_full("prune")?;
    let mut r = PruneReport::default();
    progress.log("loading index");
    let index = repo.load_index()?;
    progress.log("finding used data");
    let used = used_blobs(repo, &index)?;

    let mut keep: Vec<&IndexPack> = Vec::new();
    let mut repack: Vec<&IndexPack> = Vec::new();
    let mut delete: Vec<Id> = Vec::new();
    for (i, p) in index.packs.iter().enumerate() {
        r.packs_total += 1;
        r.bytes_before += p.size;
        let mut used_bytes = 0u64;
        let mut unused_bytes = 0u64;
        for b in &p.blobs {
            // A blob counts as used only at its canonical location (duplicates elsewhere are not).
            let canonical = index
                .get(&b.id)
                .map(|l| l.pack as usize == i)
                .unwrap_or(false);
            if canonical && used.contains(&b.id) {
                used_bytes += b.length as u64;
                r.blobs_used += 1;
            } else {
                unused_bytes += b.length as u64;
                r.blobs_unused += 1;
            }
        }
        // Only blob bytes count. Counting `size - used` would count the header (tens of
        // bytes a blob) as unused: a pack of small blobs would look half unused, be rewritten
        // on every prune, and its replacement would look the same the next time.
        if used_bytes == 0 {
            delete.push(p.id);
            r.bytes_deleted += p.size;
        } else if unused_bytes as f64 > (used_bytes + unused_bytes) as f64 * max_unused {
            repack.push(p);
        } else {
            keep.push(p);
        }
    }
    let unindexed: Vec<(Id, u64)> = repo
        .backend
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|l| l.name.parse::<Id>().ok().map(|id| (id, l.size)))
        .filter(|(id, _)| !index.has_pack(id))
        .collect();
    r.packs_unindexed = unindexed.len();
    r.bytes_deleted += unindexed.iter().map(|(_, s)| s).sum::<u64>();
    r.packs_deleted = delete.len();
    r.packs_repacked = repack.len();
    let Some(lock) = lock else {
        r.bytes_deleted += repack.iter().map(|p| p.size).sum::<u64>();
        return Ok(r);
    };
    let partial = repo.backend.remove_partial()?;
    if partial > 0 {
        progress.log(&format!(
            "removed {partial} partial file(s) left by interrupted writes"
        ));
    }
    if delete.is_empty() && repack.is_empty() && unindexed.is_empty() {
        return Ok(r);
    }

    // 1. Repack.
    let mut new_packs = Vec::new();
    if !repack.is_empty() {
        progress.log(&format!("repacking {} pack(s)", repack.len()));
        let mut saver = BlobSaver::new(repo.clone(), Arc::new(MasterIndex::default()), false)?;
        for p in &repack {
            let bytes = repo.backend.read(FileKind::Pack, &p.id.to_hex())?;
            if Id::of_bytes(&bytes) != p.id {
                return Err(Error::integrity(format!(
                    "pack {} is damaged (contents do not match its name); prune stops",
                    p.id
                ))
                .into());
            }
            let pos = index.packs.iter().position(|x| x.id == p.id).unwrap() as u32;
            let header = parse_pack(&repo.keys, &bytes)?;
            let key = repo.content_key(header.ephemeral.as_ref())?;
            // A writer's blobs are sealed under a content key of their own: prune (a full
            // key) seals them again under its saver's; others move as they are.
            let reseal = header.ephemeral.is_some();
            for e in header.entries {
                let canonical = index.get(&e.id).map(|l| l.pack == pos).unwrap_or(false);
                if !canonical || !used.contains(&e.id) {
                    continue;
                }
                let mut sealed = bytes[e.offset as usize..(e.offset + e.length) as usize].to_vec();
                // Opened and verified once either way; a writer's blob is sealed again.
                let encoded = repo
                    .open_blob_encoded(&key, &sealed, &e.id, e.raw_length)
                    .with_context(|| format!("pack {} is damaged; prune stops", p.id))?;
                if reseal {
                    sealed = saver.sealer().seal(&encoded);
                }
                saver.save_sealed(e.tpe, e.id, e.raw_length, sealed)?;
            }
            r.bytes_deleted += p.size;
        }
        new_packs = saver.finish()?;
        r.packs_written = new_packs.len();
    }

    // 2. New index over everything that stays.
    progress.log("writing index");
    let mut all: Vec<IndexPack> = keep.into_iter().cloned().collect();
    all.extend(new_packs);
    let mut file = IndexFile::default();
    let mut blobs = 0;
    for p in all {
        blobs += p.blobs.len();
        file.packs.push(p);
        if blobs >= BLOBS_PER_INDEX_FILE {
            repo.save_index(&file)?;
            file = IndexFile::default();
            blobs = 0;
        }
    }
    if !file.packs.is_empty() {
        repo.save_index(&file)?;
    }

    // 3. Old index files.
    for f in &index.files {
        repo.remove_object(FileKind::Index, &f.to_hex())?;
    }

    // 4. Packs.
    progress.log("deleting unused packs");
    lock.ensure_held()?;
    for id in delete
        .iter()
        .chain(repack.iter().map(|p| &p.id))
        .chain(unindexed.iter().map(|(id, _)| id))
    {
        repo.backend.remove(FileKind::Pack, &id.to_hex())?;
    }
    Ok(r)
}
