//! The index: which pack holds each blob.
//!
//! Index files (`index/<hash>`) are sealed JSON listing packs and their blobs. A backup
//! writes them only after the packs they list are durable; together they form the master
//! index. Several index files may list the same pack (after an interrupted prune); that
//! is harmless. The index can be rebuilt from the pack headers alone (`coffer check`
//! reports packs that no index lists; `prune` removes them).

use super::id::Id;
use super::pack::{BlobType, PackEntry};
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

/// All index files loaded together.
#[derive(Default)]
pub struct MasterIndex {
    pub packs: Vec<IndexPack>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashMap<Id, BlobLoc>,
    /// The index files this was loaded from.
    pub files: Vec<Id>,
}

impl MasterIndex {
    pub fn add_file(&mut self, id: Id, file: IndexFile) {
        self.files.push(id);
        for p in file.packs {
            self.add_pack(p);
        }
    }

    pub fn add_pack(&mut self, p: IndexPack) {
        if self.pack_pos.contains_key(&p.id) {
            return;
        }
        let pos = self.packs.len() as u32;
        self.pack_pos.insert(p.id, pos);
        for e in &p.blobs {
            self.blobs.entry(e.id).or_insert(BlobLoc {
                pack: pos,
                entry: *e,
            });
        }
        self.packs.push(p);
    }

    pub fn get(&self, id: &Id) -> Option<BlobLoc> {
        self.blobs.get(id).copied()
    }
    pub fn has(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
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
        self.blobs.get(id).map(|l| l.entry.tpe)
    }
}
