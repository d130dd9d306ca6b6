//! A verify-only read of one snapshot: every tree loaded and every data blob of every
//! file and stream read from its pack, authenticated, decompressed and re-hashed against
//! its id, exactly as a restore would before writing it, but without writing anything.
//!
//! `restore --stack` runs this for every chosen snapshot before it touches any target, so
//! that damage anywhere stops the whole recovery before it starts. (`check --read-data`
//! reads whole packs of the whole repository; this reads only what one snapshot needs.)

use super::crypto::compress;
use super::id::Id;
use super::index::{BlobLoc, MasterIndex};
use super::snapshot::Snapshot;
use super::tree::NodeKind;
use super::Repository;
use crate::backend::FileKind;
use crate::error::Error;
use crate::progress::Progress;
use anyhow::Result;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What a verify pass read.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Verified {
    /// Regular files and streams in the snapshot.
    pub files: u64,
    /// Their bytes (every one of them covered by a verified blob).
    pub bytes: u64,
    /// Distinct data blobs read and verified (content digests checked).
    pub blobs: u64,
    /// Trees loaded and verified.
    pub trees: u64,
}

/// Read and verify every tree and data blob of `snap` (see the module's documentation).
/// Damage is an integrity error (exit 3) naming the file and the blob; a blob the index
/// lacks, too.
pub fn verify_snapshot(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    progress: &Progress,
) -> Result<Verified> {
    let mut v = Verified::default();
    // The blobs and, for messages, one file each is part of.
    let mut blobs: HashMap<Id, (BlobLoc, String)> = HashMap::new();
    let mut seen_trees = HashSet::new();
    let mut stack = vec![(snap.tree, String::new())];
    while let Some((tid, path)) = stack.pop() {
        if !seen_trees.insert(tid) {
            continue;
        }
        let tree = repo.load_tree(index, &tid).map_err(|e| {
            e.context(format!(
                "snapshot {}: the tree of {} cannot be read",
                snap.id.short(),
                if path.is_empty() { "/" } else { &path }
            ))
        })?;
        v.trees += 1;
        for n in &tree.nodes {
            let p = format!("{path}/{}", n.name.display());
            if let Some(sub) = n.subtree {
                stack.push((sub, p.clone()));
            }
            if matches!(n.kind, NodeKind::File | NodeKind::Stream) {
                v.files += 1;
                v.bytes += n.size;
                let mut sum = 0u64;
                for c in &n.content {
                    let loc = index.get(c).ok_or_else(|| {
                        Error::integrity(format!(
                            "snapshot {}: chunk {} of {p} is not in the index (repository damaged)",
                            snap.id.short(),
                            c.short()
                        ))
                    })?;
                    sum += loc.entry.raw_length as u64;
                    blobs.entry(*c).or_insert_with(|| (loc, p.clone()));
                }
                if sum != n.size {
                    return Err(Error::integrity(format!(
                        "snapshot {}: the chunks of {p} add up to {sum} bytes, the snapshot records {}",
                        snap.id.short(),
                        n.size
                    ))
                    .into());
                }
            }
        }
    }
    v.blobs = blobs.len() as u64;
    progress.set_total(blobs.values().map(|(l, _)| l.entry.raw_length as u64).sum());

    // By pack, in runs read with one request each (as restore does).
    let mut by_pack: HashMap<u32, Vec<(BlobLoc, String)>> = HashMap::new();
    for (_, (loc, p)) in blobs {
        by_pack.entry(loc.pack).or_default().push((loc, p));
    }
    let work = super::restore::pack_runs(by_pack);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let threads = repo.backend.concurrency().max(
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    );
    std::thread::scope(|sc| {
        for _ in 0..threads.min(work.len().max(1)) {
            sc.spawn(|| {
                let mut buf = Vec::new();
                let mut decoder = compress::Decoder::default();
                loop {
                    if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack, list)) = work.get(i) else {
                        break;
                    };
                    if let Err(e) =
                        verify_run(repo, index, snap, *pack, list, &mut buf, &mut decoder)
                    {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    progress.inc(list.iter().map(|(l, _)| l.entry.raw_length as u64).sum());
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(v)
}

/// One run of blobs from one pack: read with one request, each blob opened and checked.
fn verify_run(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    pack: u32,
    list: &[(BlobLoc, String)],
    buf: &mut Vec<u8>,
    decoder: &mut compress::Decoder,
) -> Result<()> {
    let pack_id = index.packs[pack as usize].id;
    let start = list.iter().map(|(l, _)| l.entry.offset as u64).min();
    let end = list
        .iter()
        .map(|(l, _)| l.entry.offset as u64 + l.entry.length as u64)
        .max();
    let (Some(start), Some(end)) = (start, end) else {
        return Ok(());
    };
    let len = (end - start) as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let span = &mut buf[..len];
    let key = repo.content_key(index.packs[pack as usize].ephemeral.as_ref())?;
    repo.backend
        .read_range_into(FileKind::Pack, &pack_id.to_hex(), start, span)
        .map_err(|e| {
            e.context(format!(
                "snapshot {}: cannot read pack {}",
                snap.id.short(),
                pack_id.short()
            ))
        })?;
    for (loc, path) in list {
        let s = (loc.entry.offset as u64 - start) as usize;
        let sealed = &mut span[s..s + loc.entry.length as usize];
        repo.open_blob_in_place(&key, sealed, &loc.entry.id, loc.entry.raw_length, decoder)
            .map_err(|e| {
                e.context(format!(
                    "snapshot {}: {path} is damaged (pack {})",
                    snap.id.short(),
                    pack_id.short()
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{kind_of, ErrorKind};

    #[test]
    fn reads_every_blob_and_finds_damage() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let big: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(data.join("big"), &big).unwrap();
        std::fs::write(data.join("small"), b"hello").unwrap();
        std::fs::write(data.join("same"), b"hello").unwrap();
        let repo = std::sync::Arc::new(crate::repo::test_repository(d.path()));
        let r = crate::ops::backup::backup(
            &repo,
            crate::ops::backup::Source::Files {
                paths: vec![data.clone()],
                excludes: vec![],
                one_file_system: false,
            },
            crate::sources::CommonOptions::default(),
            &Progress::hidden(),
        )
        .unwrap();
        let snap = repo.find_snapshot(&r.id).unwrap();
        let index = repo.load_index().unwrap();
        let v = verify_snapshot(&repo, &index, &snap, &Progress::hidden()).unwrap();
        assert_eq!(v.files, 3);
        assert_eq!(v.bytes, big.len() as u64 + 10);
        assert!(v.blobs >= 2, "{v:?}");
        assert!(v.trees >= 2, "{v:?}");

        // Flip one byte of one data blob of "big" in its pack: the pass fails as damage,
        // naming the file.
        let node = crate::repo::restore::find_node(
            &repo,
            &index,
            &snap,
            &format!("{}/big", data.display()),
        )
        .unwrap();
        let loc = index.get(&node.content[node.content.len() / 2]).unwrap();
        let hex = index.pack_id(&loc).to_hex();
        let pack = d.path().join("repo/data").join(&hex[..2]).join(&hex);
        let mut b = std::fs::read(&pack).unwrap();
        b[loc.entry.offset as usize + 40] ^= 0x55;
        std::fs::write(&pack, b).unwrap();
        let e = verify_snapshot(&repo, &index, &snap, &Progress::hidden()).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Integrity, "{e:#}");
        assert!(format!("{e:#}").contains("/big is damaged"), "{e:#}");
    }
}
