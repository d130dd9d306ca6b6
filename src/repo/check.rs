//! `coffer check`: verify the repository's structure and, optionally, its data.
//!
//! Without reading data: every index file and snapshot decrypts and matches its name,
//! every indexed pack exists with the recorded size, every tree of every snapshot loads,
//! and every blob a snapshot needs is in the index. With `--read-data` (or a random
//! subset of packs), each pack is downloaded, its hash compared with its name, and every
//! blob decrypted and re-hashed. Damaged packs are named with the snapshots that need them.

use super::id::Id;
use super::index::{IndexFile, MasterIndex};
use super::pack::parse_pack;
use super::tree::NodeKind;
use super::{snapshot::Snapshot, Repository};
use crate::backend::FileKind;
use crate::progress::Progress;
use anyhow::Result;
use rand::seq::SliceRandom;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A fraction of packs in (0, 1].
    Subset(f64),
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    /// Damaged or missing packs, with what is wrong.
    pub damaged_packs: BTreeMap<Id, String>,
    /// For each damaged pack, the snapshots that need it.
    pub affected: BTreeMap<Id, Vec<Id>>,
    /// Snapshots that cannot be fully restored for reasons other than a pack (missing blobs).
    pub broken_snapshots: BTreeSet<Id>,
    pub snapshots: usize,
    pub packs: usize,
    pub packs_read: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.damaged_packs.is_empty()
    }
}

pub fn check(repo: &Repository, read: ReadData, progress: &Progress) -> Result<CheckReport> {
    // Every check reads the snapshots' trees.
    repo.require_full("check")?;
    // The repository's own copies are what is judged, never this host's cache of them.
    let _uncached = repo.bypass_cache();
    let mut r = CheckReport::default();
    let listed: HashMap<String, u64> = repo
        .backend
        .list(FileKind::Pack)?
        .into_iter()
        .map(|l| (l.name, l.size))
        .collect();

    progress.log("loading index");
    let names: Vec<Id> = repo
        .backend
        .list(FileKind::Index)?
        .iter()
        .filter_map(|f| f.name.parse().ok())
        .collect();
    let mut files = Vec::with_capacity(names.len());
    repo.in_order(
        names.len(),
        |i| repo.load_json::<IndexFile>(FileKind::Index, &names[i].to_hex()),
        |i, loaded| {
            match loaded {
                Ok(file) => files.push((names[i], file)),
                Err(e) => r
                    .errors
                    .push(format!("index file {}: {e:#}", names[i].short())),
            }
            Ok(())
        },
    )?;
    let mut index = MasterIndex::default();
    index.add_files(files);
    r.packs = index.packs.len();

    for p in &index.packs {
        match listed.get(&p.id.to_hex()) {
            None => {
                r.damaged_packs.insert(p.id, "missing from storage".into());
            }
            Some(&size) if size != p.size => {
                r.damaged_packs.insert(
                    p.id,
                    format!("size is {size} bytes, the index says {}", p.size),
                );
            }
            _ => {}
        }
    }
    let unindexed = listed
        .keys()
        .filter(|n| {
            n.parse::<Id>()
                .map(|id| !index.has_pack(&id))
                .unwrap_or(false)
        })
        .count();
    if unindexed > 0 {
        let w = format!(
            "{unindexed} pack(s) are not in any index: left by an interrupted backup or written by \
             one in progress; `coffer prune` removes them"
        );
        progress.warn(&w);
        r.warnings.push(w);
    }

    progress.log("checking snapshots");
    let snaps = repo.load_snapshots_lenient(&mut r.errors)?;
    // What this coffer cannot read it cannot check either: a newer format is not damage.
    for s in &snaps {
        s.check_features()?;
    }
    r.snapshots = snaps.len();
    // What each tree read says, kept small ([`Checked`]): snapshots share most of their trees.
    let mut trees: HashMap<Id, std::sync::Arc<Checked>> = HashMap::new();
    let mut snap_packs: Vec<(Id, HashSet<u32>)> = Vec::new();
    for s in &snaps {
        let mut packs = HashSet::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(s.tree, String::new())];
        while let Some((tid, path)) = stack.pop() {
            if !seen.insert(tid) {
                continue;
            }
            match index.get(&tid) {
                Some(loc) => {
                    packs.insert(loc.pack);
                }
                None => {
                    r.errors.push(format!(
                        "snapshot {}: tree {} of {} is not in the index",
                        s.id.short(),
                        tid.short(),
                        if path.is_empty() { "/" } else { &path }
                    ));
                    r.broken_snapshots.insert(s.id);
                    continue;
                }
            }
            let tree = match trees.get(&tid) {
                Some(t) => t.clone(),
                None => match repo.load_tree(&index, &tid) {
                    Ok(t) => {
                        let t = std::sync::Arc::new(Checked::of(&t, &index));
                        trees.insert(tid, t.clone());
                        t
                    }
                    Err(e) if crate::error::kind_of(&e) == crate::error::ErrorKind::NeedsNewer => {
                        return Err(e.context(format!("snapshot {}", s.id.short())))
                    }
                    Err(e) => {
                        let loc = index.get(&tid).unwrap();
                        r.damaged_packs
                            .entry(index.pack_id(&loc))
                            .or_insert_with(|| format!("tree {} unreadable: {e:#}", tid.short()));
                        packs.insert(loc.pack);
                        continue;
                    }
                },
            };
            packs.extend(tree.packs.iter().copied());
            for (name, c) in tree.missing.iter() {
                r.errors.push(format!(
                    "snapshot {}: data blob {} of {path}/{name} is not in the index",
                    s.id.short(),
                    c.short()
                ));
                r.broken_snapshots.insert(s.id);
            }
            for (sub, name) in tree.subtrees.iter() {
                stack.push((*sub, format!("{path}/{name}")));
            }
        }
        snap_packs.push((s.id, packs));
    }

    if read != ReadData::None {
        let mut chosen: Vec<usize> = (0..index.packs.len())
            .filter(|i| !r.damaged_packs.contains_key(&index.packs[*i].id))
            .collect();
        if let ReadData::Subset(f) = read {
            chosen.shuffle(&mut rand::thread_rng());
            let n = ((chosen.len() as f64) * f).ceil() as usize;
            chosen.truncate(n.max(1).min(chosen.len()));
        }
        r.packs_read = chosen.len();
        progress.log(&format!("reading {} pack(s)", chosen.len()));
        let damaged = Mutex::new(Vec::new());
        let next = Mutex::new(chosen.into_iter());
        let threads = repo.backend.concurrency().max(2);
        std::thread::scope(|sc| {
            for _ in 0..threads {
                sc.spawn(|| loop {
                    let Some(i) = next.lock().unwrap().next() else {
                        break;
                    };
                    let p = &index.packs[i];
                    if let Err(msg) = verify_pack(repo, p) {
                        damaged.lock().unwrap().push((p.id, msg));
                    }
                });
            }
        });
        for (id, msg) in damaged.into_inner().unwrap() {
            r.damaged_packs.insert(id, msg);
        }
    }

    let pos: HashMap<Id, u32> = index
        .packs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id, i as u32))
        .collect();
    for pack in r.damaged_packs.keys() {
        let users: Vec<Id> = match pos.get(pack) {
            Some(i) => snap_packs
                .iter()
                .filter(|(_, ps)| ps.contains(i))
                .map(|(s, _)| *s)
                .collect(),
            None => Vec::new(),
        };
        r.affected.insert(*pack, users);
    }
    Ok(r)
}

/// What `check` keeps of a tree it has read, for the other snapshots that hold it: the packs
/// of its files' content, the content blobs missing from the index, and its subtrees. About a
/// hundred bytes per directory instead of the whole tree (names, metadata, every content id).
struct Checked {
    packs: Box<[u32]>,
    /// (entry name, blob id)
    missing: Box<[(String, Id)]>,
    /// (subtree id, entry name)
    subtrees: Box<[(Id, String)]>,
}

impl Checked {
    fn of(tree: &super::tree::Tree, index: &super::index::MasterIndex) -> Checked {
        let mut packs = BTreeSet::new();
        let mut missing = Vec::new();
        let mut subtrees = Vec::new();
        for n in &tree.nodes {
            if let Some(sub) = n.subtree {
                subtrees.push((sub, n.name.display()));
            }
            if matches!(n.kind, NodeKind::File | NodeKind::Stream) {
                for c in &n.content {
                    match index.get(c) {
                        Some(loc) => {
                            packs.insert(loc.pack);
                        }
                        None => missing.push((n.name.display(), *c)),
                    }
                }
            }
        }
        Checked {
            packs: packs.into_iter().collect(),
            missing: missing.into(),
            subtrees: subtrees.into(),
        }
    }
}

fn verify_pack(repo: &Repository, p: &super::index::IndexPack) -> std::result::Result<(), String> {
    let bytes = repo
        .backend
        .read(FileKind::Pack, &p.id.to_hex())
        .map_err(|e| format!("cannot read: {e:#}"))?;
    if Id::of_bytes(&bytes) != p.id {
        return Err("contents do not match the pack's name (bytes changed in storage)".into());
    }
    let header = parse_pack(&repo.keys, &bytes).map_err(|e| format!("{e:#}"))?;
    if header.ephemeral != p.ephemeral {
        return Err("the pack's header and the index name different content keys".into());
    }
    let key = repo
        .content_key(header.ephemeral.as_ref())
        .map_err(|e| format!("{e:#}"))?;
    let by_id: HashMap<Id, _> = header.entries.iter().map(|e| (e.id, *e)).collect();
    for b in &p.blobs {
        match by_id.get(&b.id) {
            Some(e) if e == b => {}
            _ => return Err(format!("blob {} is not where the index says", b.id.short())),
        }
        let sealed = &bytes[b.offset as usize..(b.offset + b.length) as usize];
        repo.open_blob(&key, sealed, &b.id, b.raw_length)
            .map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

impl Repository {
    /// Load snapshots, recording unreadable ones as errors instead of failing.
    pub fn load_snapshots_lenient(&self, errors: &mut Vec<String>) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        let listed = self.backend.list(FileKind::Snapshot)?;
        let ids: Vec<Id> = listed.iter().filter_map(|f| f.name.parse().ok()).collect();
        self.in_order(
            ids.len(),
            |i| self.load_json::<Snapshot>(FileKind::Snapshot, &ids[i].to_hex()),
            |i, loaded| {
                let id = ids[i];
                match loaded {
                    Ok(mut s) => {
                        s.id = id;
                        match s.open_part(&self.keys) {
                            Ok(()) => out.push(s),
                            Err(e) => errors.push(format!("snapshot {}: {e:#}", id.short())),
                        }
                    }
                    Err(e) if crate::backend::is_not_found(&e) => {} // removed meanwhile
                    Err(e) if crate::error::kind_of(&e) == crate::error::ErrorKind::Integrity => {
                        errors.push(format!("snapshot {}: {e:#}", id.short()))
                    }
                    Err(e) => return Err(e),
                }
                Ok(())
            },
        )?;
        if let Some(c) = self.cache() {
            c.retain(
                super::cache::Kind::Snapshot,
                &listed.iter().map(|f| f.name.as_str()).collect(),
            );
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::backup::{backup, Source};
    use crate::repo::index::IndexFile;
    use std::sync::Arc;

    #[test]
    fn a_missing_data_blob_breaks_every_snapshot_that_shares_its_tree() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/lost"), b"the blob that goes missing").unwrap();
        std::fs::write(data.join("kept"), b"still there").unwrap();
        let repo = Arc::new(crate::repo::test_repository(t.path()));
        let snap = |_| {
            let source = Source::Files {
                paths: vec![data.clone()],
                excludes: Vec::new(),
                one_file_system: false,
            };
            backup(&repo, source, Default::default(), &Progress::hidden()).unwrap()
        };
        let snaps: Vec<_> = (0..2).map(snap).collect();
        let ok = check(&repo, ReadData::All, &Progress::hidden()).unwrap();
        assert!(ok.ok(), "{ok:?}");

        // Drop the blob of `sub/lost` from the index.
        let lost = repo.keys.blob_id(b"the blob that goes missing");
        for f in repo.backend.list(FileKind::Index).unwrap() {
            let mut file: IndexFile = repo.load_json(FileKind::Index, &f.name).unwrap();
            for p in &mut file.packs {
                p.blobs.retain(|e| e.id != lost);
            }
            repo.save_json(FileKind::Index, &file).unwrap();
            repo.backend.remove(FileKind::Index, &f.name).unwrap();
        }
        let r = check(&repo, ReadData::None, &Progress::hidden()).unwrap();
        assert!(!r.ok());
        let want: BTreeSet<Id> = snaps.iter().map(|s| s.id.parse().unwrap()).collect();
        assert_eq!(r.broken_snapshots, want);
        // Once per snapshot, with its path, though the second reads the tree from memory.
        let about: Vec<&String> = r
            .errors
            .iter()
            .filter(|e| e.contains(&lost.short()))
            .collect();
        assert_eq!(about.len(), 2, "{:?}", r.errors);
        for (e, s) in about.iter().zip(&snaps) {
            assert!(e.contains(&s.id[..8]), "{e}");
            assert!(
                e.ends_with(&format!("{}/sub/lost is not in the index", data.display())),
                "{e}"
            );
        }
    }
}
