//! The index: which pack holds each blob.
//!
//! Index files (`index/<hash>`) are sealed JSON listing packs and their blobs. A backup
//! writes them only after the packs they list are durable; together they form the master
//! index. Several index files may list the same pack (after an interrupted prune); that
//! is harmless. The index can be rebuilt from the pack headers alone (`coffer check`
//! reports packs that no index lists; `prune` removes them).

use super::id::Id;
use super::pack::{BlobType, PackEntry};
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    /// Total size of the pack object in bytes.
    pub size: u64,
    pub blobs: Vec<PackEntry>,
    /// The ephemeral X25519 key the pack's content key was agreed with, when a write-only
    /// key wrote it (`None`: its blobs are sealed under the encryption key).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::crypto::b64opt"
    )]
    pub ephemeral: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
}

/// Where a blob lives.
#[derive(Debug, Clone, Copy)]
pub struct BlobLoc {
    pub pack: u32,
    pub entry: PackEntry,
}

/// Where a blob's entry is: `packs[pack].blobs[entry]`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pack: u32,
    entry: u32,
}

/// The lookup table's hash of a blob id: a folded multiply of its first 16 bytes with a
/// random seed. Ids are already keyed BLAKE3 hashes, uniform to anyone without the id key;
/// one who has it (a writer) can make ids but cannot see the seed, so cannot aim them at one
/// bucket. SipHash, as `HashMap` uses, cost a quarter of the time of opening an index.
struct IdHasher(u64, u64);

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher(rand::random(), rand::random())
    }
}

impl IdHasher {
    fn hash_one(&self, id: &Id) -> u64 {
        let a = u64::from_le_bytes(id.0[..8].try_into().unwrap()) ^ self.0;
        let b = u64::from_le_bytes(id.0[8..16].try_into().unwrap()) ^ self.1;
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

/// All index files loaded together. Each blob's entry is held once, in its pack's list; the
/// lookup table holds 8 bytes per blob (which entry), so the whole index takes about 60
/// bytes per blob (docs/BENCHMARKS.md).
#[derive(Default)]
pub struct MasterIndex {
    pub packs: Vec<IndexPack>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashTable<Slot>,
    /// Seeds the table's hash per index: ids come from the repository, and a writer key
    /// could pick ids that collide under a hash it knows.
    hasher: IdHasher,
    /// The index files this was loaded from.
    pub files: Vec<Id>,
}

/// Insert the blobs of `packs[from..]` into `table`; a blob already there keeps its location.
fn insert_blobs(packs: &[IndexPack], from: usize, hasher: &IdHasher, table: &mut HashTable<Slot>) {
    let id_of = |s: &Slot| &packs[s.pack as usize].blobs[s.entry as usize].id;
    for (pos, p) in packs.iter().enumerate().skip(from) {
        for (i, e) in p.blobs.iter().enumerate() {
            let h = hasher.hash_one(&e.id);
            if let Entry::Vacant(v) =
                table.entry(h, |s| *id_of(s) == e.id, |s| hasher.hash_one(id_of(s)))
            {
                v.insert(Slot {
                    pack: pos as u32,
                    entry: i as u32,
                });
            }
        }
    }
}

impl MasterIndex {
    /// Add index files, in order.
    pub fn add_files(&mut self, files: Vec<(Id, IndexFile)>) {
        let from = self.packs.len();
        for (id, file) in files {
            self.files.push(id);
            for mut p in file.packs {
                if self.pack_pos.contains_key(&p.id) {
                    continue;
                }
                self.pack_pos.insert(p.id, self.packs.len() as u32);
                p.blobs.shrink_to_fit();
                self.packs.push(p);
            }
        }
        // Sized once: growing the table rehashes every blob in it, reaching into the packs'
        // lists for each id, which costs as much as the inserts.
        self.reserve_blobs(self.packs[from..].iter().map(|p| p.blobs.len()).sum());
        insert_blobs(&self.packs, from, &self.hasher, &mut self.blobs);
    }

    /// Make room for `n` more blobs at once (a table that grows rehashes every blob in it).
    pub fn reserve_blobs(&mut self, n: usize) {
        let (packs, hasher) = (&self.packs, &self.hasher);
        self.blobs.reserve(n, |s| {
            hasher.hash_one(&packs[s.pack as usize].blobs[s.entry as usize].id)
        });
    }

    pub fn add_file(&mut self, id: Id, file: IndexFile) {
        self.add_files(vec![(id, file)]);
    }

    /// Add a pack's blobs; a blob that an earlier pack holds keeps that location.
    pub fn add_pack(&mut self, p: IndexPack) {
        if self.pack_pos.contains_key(&p.id) {
            return;
        }
        let from = self.packs.len();
        self.pack_pos.insert(p.id, from as u32);
        self.packs.push(p);
        self.packs[from].blobs.shrink_to_fit();
        insert_blobs(&self.packs, from, &self.hasher, &mut self.blobs);
    }

    fn slot(&self, id: &Id) -> Option<&Slot> {
        let packs = &self.packs;
        self.blobs.find(self.hasher.hash_one(id), |s| {
            packs[s.pack as usize].blobs[s.entry as usize].id == *id
        })
    }

    pub fn get(&self, id: &Id) -> Option<BlobLoc> {
        self.slot(id).map(|s| BlobLoc {
            pack: s.pack,
            entry: self.packs[s.pack as usize].blobs[s.entry as usize],
        })
    }
    pub fn has(&self, id: &Id) -> bool {
        self.slot(id).is_some()
    }
    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }
    pub fn pack_id(&self, loc: &BlobLoc) -> Id {
        self.packs[loc.pack as usize].id
    }
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
    pub fn blob_type(&self, id: &Id) -> Option<BlobType> {
        self.get(id).map(|l| l.entry.tpe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: usize) -> IndexPack {
        IndexPack {
            id: Id::random(),
            size: 0,
            blobs: (0..n)
                .map(|i| PackEntry {
                    id: Id::random(),
                    tpe: if i % 2 == 0 {
                        BlobType::Data
                    } else {
                        BlobType::Tree
                    },
                    offset: i as u32 * 10,
                    length: 10,
                    raw_length: i as u32,
                })
                .collect(),
            ephemeral: None,
        }
    }

    #[test]
    fn every_blob_is_found_where_its_first_pack_has_it() {
        let mut mi = MasterIndex::default();
        let packs: Vec<IndexPack> = (0..50).map(|_| pack(2_000)).collect();
        for p in &packs {
            mi.add_pack(p.clone());
        }
        // The same pack again changes nothing; a later pack holding a blob again does not
        // move it.
        mi.add_pack(packs[3].clone());
        let mut again = pack(1);
        again.blobs[0] = packs[7].blobs[5];
        again.blobs[0].offset = 999_999;
        mi.add_pack(again.clone());
        assert_eq!(mi.blob_count(), 50 * 2_000);
        assert_eq!(mi.packs.len(), 51);
        for (i, p) in packs.iter().enumerate() {
            for e in &p.blobs {
                let loc = mi.get(&e.id).unwrap();
                assert_eq!(loc.pack as usize, i);
                assert_eq!(mi.pack_id(&loc), p.id);
                assert_eq!(
                    (loc.entry.offset, loc.entry.raw_length),
                    (e.offset, e.raw_length)
                );
                assert_eq!(mi.blob_type(&e.id), Some(e.tpe));
            }
        }
        assert!(mi.has_pack(&again.id) && !mi.has_pack(&Id::random()));

        // Loaded as files, the same blobs are found in the same places.
        let mut files: Vec<(Id, IndexFile)> = packs
            .chunks(7)
            .map(|c| (Id::random(), IndexFile { packs: c.to_vec() }))
            .collect();
        files.push((
            Id::random(),
            IndexFile {
                packs: vec![packs[3].clone(), again.clone()],
            },
        ));
        let mut merged = MasterIndex::default();
        merged.add_files(files);
        assert_eq!(merged.blob_count(), 50 * 2_000);
        assert_eq!(merged.packs.len(), 51);
        assert_eq!(merged.files.len(), 9);
        for (i, p) in packs.iter().enumerate() {
            for e in &p.blobs {
                assert_eq!(merged.get(&e.id).unwrap().pack as usize, i);
            }
        }
        for _ in 0..1_000 {
            let id = Id::random();
            assert!(!mi.has(&id) && mi.get(&id).is_none());
        }
    }
}
