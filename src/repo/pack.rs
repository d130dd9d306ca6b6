//! Pack files: many sealed blobs in one immutable object.
//!
//! ```text
//! blob_1 || blob_2 || … || blob_n || sealed_header || header_len (u32 LE)
//! ```
//! Each blob is `seal(payload || compression flag)`. The header plaintext is, per blob,
//! `type (u8) || sealed length (u32 LE) || raw length (u32 LE) || id (32 bytes)`; offsets
//! follow from the order. A pack is named by the BLAKE3 hash of all its bytes, so storage
//! corruption is detectable without the key, and the index can be rebuilt from the packs.

use super::crypto::MasterKey;
use super::id::Id;
use crate::backend::{Backend, FileKind, Spool};
use crate::error::Error;
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

impl BlobType {
    fn byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }
    fn from_byte(b: u8) -> Result<Self, Error> {
        match b {
            0 => Ok(BlobType::Data),
            1 => Ok(BlobType::Tree),
            _ => Err(Error::integrity(format!(
                "unknown blob type {b} in pack header"
            ))),
        }
    }
}

/// One blob's place in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: Id,
    #[serde(rename = "type")]
    pub tpe: BlobType,
    pub offset: u32,
    /// Sealed length in the pack.
    pub length: u32,
    /// Plaintext length of the blob.
    pub raw_length: u32,
}

const ENTRY_LEN: usize = 1 + 4 + 4 + 32;
/// Maximum size of a pack header we are willing to read.
const MAX_HEADER: usize = 64 << 20;

/// Accumulates sealed blobs into one pack: either kept as separate buffers and written out
/// in sequence at the end (never copied into one contiguous buffer), or appended to a
/// [`Spool`] as they come (local storage), so the pack holds no memory.
#[derive(Default)]
pub struct PackWriter {
    parts: Vec<Vec<u8>>,
    spool: Option<Box<dyn Spool>>,
    hasher: blake3::Hasher,
    len: usize,
    entries: Vec<PackEntry>,
}

/// Where a finished pack's bytes are.
pub enum PackBody {
    /// In memory, in order.
    Parts(Vec<Vec<u8>>),
    /// Written to storage under a temporary name; committing names it.
    Spooled(Box<dyn Spool>),
}

/// A finished pack: its name, bytes, total length, and its blobs.
pub struct FinishedPack {
    id: Id,
    pub body: PackBody,
    pub len: usize,
    pub entries: Vec<PackEntry>,
}

impl FinishedPack {
    /// The pack's name: BLAKE3 of all its bytes.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Store the pack under its name.
    pub fn store(self, backend: &dyn Backend) -> Result<()> {
        let name = self.id.to_hex();
        match self.body {
            PackBody::Parts(parts) => backend.write_parts(FileKind::Pack, &name, parts),
            PackBody::Spooled(spool) => spool.commit(FileKind::Pack, &name),
        }
    }
}

impl PackWriter {
    /// A pack written to `spool` as it grows (`None`: kept in memory).
    pub fn new(spool: Option<Box<dyn Spool>>) -> Self {
        PackWriter {
            spool,
            ..Default::default()
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn add(&mut self, tpe: BlobType, id: Id, raw_length: u32, sealed: Vec<u8>) -> Result<()> {
        self.entries.push(PackEntry {
            id,
            tpe,
            offset: self.len as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        self.len += sealed.len();
        self.push(sealed)
    }

    fn push(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.hasher.update(&bytes);
        match &mut self.spool {
            Some(s) => s.append(&bytes),
            None => {
                self.parts.push(bytes);
                Ok(())
            }
        }
    }

    /// Append the sealed header and its length.
    pub fn finish(mut self, key: &MasterKey) -> Result<FinishedPack> {
        let mut header = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            header.push(e.tpe.byte());
            header.extend_from_slice(&e.length.to_le_bytes());
            header.extend_from_slice(&e.raw_length.to_le_bytes());
            header.extend_from_slice(&e.id.0);
        }
        let mut trailer = key.seal(&header);
        let hlen = trailer.len() as u32;
        trailer.extend_from_slice(&hlen.to_le_bytes());
        self.len += trailer.len();
        self.push(trailer)?;
        Ok(FinishedPack {
            id: Id(*self.hasher.finalize().as_bytes()),
            body: match self.spool {
                Some(s) => PackBody::Spooled(s),
                None => PackBody::Parts(self.parts),
            },
            len: self.len,
            entries: self.entries,
        })
    }
}

/// Parse the header of a whole pack held in memory.
pub fn parse_pack(key: &MasterKey, pack: &[u8]) -> Result<Vec<PackEntry>> {
    if pack.len() < 4 {
        return Err(Error::integrity("pack is shorter than its trailer").into());
    }
    let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    if hlen > MAX_HEADER || hlen + 4 > pack.len() {
        return Err(Error::integrity("pack header length is invalid").into());
    }
    let hstart = pack.len() - 4 - hlen;
    parse_header(key, &pack[hstart..pack.len() - 4], hstart as u64)
}

/// Read and parse the header of a pack in storage, given its total size.
pub fn read_header(
    backend: &dyn crate::backend::Backend,
    key: &MasterKey,
    name: &str,
    size: u64,
) -> Result<Vec<PackEntry>> {
    if size < 4 {
        return Err(Error::integrity("pack is shorter than its trailer").into());
    }
    let tail = backend.read_range(FileKind::Pack, name, size - 4, 4)?;
    let hlen = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
    if hlen as usize > MAX_HEADER || hlen + 4 > size {
        return Err(Error::integrity("pack header length is invalid").into());
    }
    let hstart = size - 4 - hlen;
    let header = backend.read_range(FileKind::Pack, name, hstart, hlen)?;
    parse_header(key, &header, hstart)
}

fn parse_header(key: &MasterKey, sealed: &[u8], data_end: u64) -> Result<Vec<PackEntry>> {
    let plain = key
        .open(sealed)
        .map_err(|e| Error::integrity(format!("pack header: {e}")))?;
    if plain.len() % ENTRY_LEN != 0 {
        return Err(Error::integrity("pack header has a partial entry").into());
    }
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(plain.len() / ENTRY_LEN);
    for e in plain.chunks_exact(ENTRY_LEN) {
        let tpe = BlobType::from_byte(e[0])?;
        let length = u32::from_le_bytes(e[1..5].try_into().unwrap());
        let raw_length = u32::from_le_bytes(e[5..9].try_into().unwrap());
        let id = Id(e[9..41].try_into().unwrap());
        out.push(PackEntry {
            id,
            tpe,
            offset: offset as u32,
            length,
            raw_length,
        });
        offset += length as u64;
    }
    if offset != data_end {
        return Err(Error::integrity("pack header does not match the pack's length").into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pack_round_trip_and_damage() {
        let k = MasterKey::generate();
        let mut w = PackWriter::default();
        let a = k.seal(b"aaaa");
        let b = k.seal(b"bbbbbbbb");
        w.add(BlobType::Data, k.blob_id(b"aaaa"), 4, a).unwrap();
        w.add(BlobType::Tree, k.blob_id(b"bbbbbbbb"), 8, b).unwrap();
        let fin = w.finish(&k).unwrap();
        let PackBody::Parts(parts) = &fin.body else {
            panic!("a pack without a spool is kept in memory")
        };
        let bytes = parts.concat();
        assert_eq!(fin.len, bytes.len());
        assert_eq!(fin.id(), Id::of_bytes(&bytes));
        let entries = fin.entries;
        let parsed = parse_pack(&k, &bytes).unwrap();
        assert_eq!(parsed, entries);
        let e = parsed[1];
        let blob = &bytes[e.offset as usize..(e.offset + e.length) as usize];
        assert_eq!(k.open(blob).unwrap(), b"bbbbbbbb");
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(parse_pack(&k, &bad).is_err());
        assert!(parse_pack(&k, &bytes[..n - 1]).is_err());
    }
}
