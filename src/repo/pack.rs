//! Pack files: many sealed blobs in one immutable object.
//!
//! ```text
//! blob_1 || blob_2 || … || blob_n || sealed_header || header_len (u32 LE)
//! ```
//! Each blob is `seal(payload || compression flag)`. The header plaintext is, per blob,
//! `type (u8) || sealed length (u32 LE) || raw length (u32 LE) || id (32 bytes)`; offsets
//! follow from the order. The header is sealed under the meta key; a pack whose blobs are
//! sealed to the recipient key (written with a write-only key) starts its header with
//! `0xFF || ephemeral public key (32 bytes)`. A pack is named by the BLAKE3 hash of all its bytes, so storage
//! corruption is detectable without the key, and the index can be rebuilt from the packs.

use super::crypto::{Cipher, Keys};
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
/// The first header byte of a pack sealed to the recipient key (no blob type has it).
const SEALED_TO: u8 = 0xFF;

/// A parsed pack header: the blobs, and the ephemeral key their content key was agreed
/// with (`None`: the encryption key).
#[derive(Debug, Clone)]
pub struct PackHeader {
    pub entries: Vec<PackEntry>,
    pub ephemeral: Option<[u8; 32]>,
}
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

    /// Append the header, sealed under `meta`, and its length; `ephemeral` is the key the
    /// blobs' content key was agreed with, if they are sealed to the recipient.
    pub fn finish(mut self, meta: &Cipher, ephemeral: Option<[u8; 32]>) -> Result<FinishedPack> {
        let mut header = Vec::with_capacity(33 + self.entries.len() * ENTRY_LEN);
        if let Some(e) = ephemeral {
            header.push(SEALED_TO);
            header.extend_from_slice(&e);
        }
        for e in &self.entries {
            header.push(e.tpe.byte());
            header.extend_from_slice(&e.length.to_le_bytes());
            header.extend_from_slice(&e.raw_length.to_le_bytes());
            header.extend_from_slice(&e.id.0);
        }
        let mut trailer = meta.seal(&header);
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
pub fn parse_pack(keys: &Keys, pack: &[u8]) -> Result<PackHeader> {
    if pack.len() < 4 {
        return Err(Error::integrity("pack is shorter than its trailer").into());
    }
    let hlen = u32::from_le_bytes(pack[pack.len() - 4..].try_into().unwrap()) as usize;
    if hlen > MAX_HEADER || hlen + 4 > pack.len() {
        return Err(Error::integrity("pack header length is invalid").into());
    }
    let hstart = pack.len() - 4 - hlen;
    parse_header(keys, &pack[hstart..pack.len() - 4], hstart as u64)
}

/// Read and parse the header of a pack in storage, given its total size.
pub fn read_header(
    backend: &dyn crate::backend::Backend,
    keys: &Keys,
    name: &str,
    size: u64,
) -> Result<PackHeader> {
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
    parse_header(keys, &header, hstart)
}

fn parse_header(keys: &Keys, sealed: &[u8], data_end: u64) -> Result<PackHeader> {
    let plain = keys
        .open_meta(sealed)
        .map_err(|e| Error::integrity(format!("pack header: {e}")))?;
    let (ephemeral, plain) = match plain.split_first() {
        Some((&SEALED_TO, rest)) if rest.len() >= 32 => (
            Some(<[u8; 32]>::try_from(&rest[..32]).unwrap()),
            &rest[32..],
        ),
        _ => (None, &plain[..]),
    };
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
    Ok(PackHeader {
        entries: out,
        ephemeral,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::crypto::MasterKey;

    #[test]
    fn pack_round_trip_and_damage() {
        let keys = MasterKey::generate().keys();
        let k = keys.sealer().unwrap();
        let mut w = PackWriter::default();
        let a = k.seal(b"aaaa");
        let b = k.seal(b"bbbbbbbb");
        w.add(BlobType::Data, keys.blob_id(b"aaaa"), 4, a).unwrap();
        w.add(BlobType::Tree, keys.blob_id(b"bbbbbbbb"), 8, b)
            .unwrap();
        let fin = w.finish(keys.meta(), None).unwrap();
        let PackBody::Parts(parts) = &fin.body else {
            panic!("a pack without a spool is kept in memory")
        };
        let bytes = parts.concat();
        assert_eq!(fin.len, bytes.len());
        assert_eq!(fin.id(), Id::of_bytes(&bytes));
        let entries = fin.entries;
        let parsed = parse_pack(&keys, &bytes).unwrap();
        assert_eq!(parsed.entries, entries);
        assert_eq!(parsed.ephemeral, None);
        let e = parsed.entries[1];
        let blob = &bytes[e.offset as usize..(e.offset + e.length) as usize];
        let key = keys.reader(None, "test").unwrap();
        assert_eq!(key.open(blob).unwrap(), b"bbbbbbbb");
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(parse_pack(&keys, &bad).is_err());
        assert!(parse_pack(&keys, &bytes[..n - 1]).is_err());
    }

    #[test]
    fn a_writers_pack_names_its_ephemeral_key_in_the_header() {
        let master = MasterKey::generate();
        let repo = Id::random();
        let full = master.write_only_keys(&repo);
        let writer = master.writer(&repo).keys(full.recipient().unwrap());
        let sealer = writer.sealer().unwrap();
        let mut w = PackWriter::default();
        w.add(BlobType::Data, writer.blob_id(b"x"), 1, sealer.seal(b"x"))
            .unwrap();
        let fin = w.finish(writer.meta(), sealer.ephemeral()).unwrap();
        let PackBody::Parts(parts) = &fin.body else {
            panic!("a pack without a spool is kept in memory")
        };
        let bytes = parts.concat();
        // The writer reads the header (it sees what the index shows), not the blob.
        let by_writer = parse_pack(&writer, &bytes).unwrap();
        assert_eq!(by_writer.ephemeral, sealer.ephemeral());
        let parsed = parse_pack(&full, &bytes).unwrap();
        let e = parsed.entries[0];
        let blob = &bytes[e.offset as usize..(e.offset + e.length) as usize];
        let key = full.reader(parsed.ephemeral.as_ref(), "test").unwrap();
        assert_eq!(key.open(blob).unwrap(), b"x");
        assert!(writer.reader(parsed.ephemeral.as_ref(), "test").is_err());
    }
}
