//! The PostgreSQL WAL archive's object format: each archived file (a WAL segment, a
//! `.history` or a `.backup` file) is one immutable object under `wal/`, outside the
//! deduplicated store: segments are written once and never share content. The object is
//! `seal(encode(header ‖ bytes))` where the header names the file, so an object moved to
//! another name does not pass for it. Segments live under `wal/<timeline and log id>/NAME`,
//! other files directly under `wal/`.
//!
//! `wal/archive` ([`ArchiveInfo`]) records the cluster's system identifier and segment size
//! on the first push ([`super::push`]). Also here: file names and their kinds, segment
//! names and LSN arithmetic, the segment long page header, and reading an archived file.

use crate::backend::{is_not_found, FileKind};
use crate::error::Error;
use crate::repo::crypto::compress;
use crate::repo::features::Features;
use crate::repo::Repository;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The object recording which cluster this archive belongs to.
pub const ARCHIVE_INFO: &str = "archive";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveInfo {
    /// pg_control's system identifier (as a decimal string: it does not fit a JSON number).
    pub system_identifier: String,
    pub segment_size: u32,
    pub created: chrono::DateTime<chrono::FixedOffset>,
    /// The format features a reader of the archive needs (see [`crate::repo::features`]).
    #[serde(default, skip_serializing_if = "Features::is_empty")]
    pub requires: Features,
}

/// A segment's long page header (the first page of every segment file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentHeader {
    pub timeline: u32,
    pub page_addr: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

const XLP_LONG_HEADER: u16 = 0x0002;

/// The segment sizes PostgreSQL can be set up with (`initdb --wal-segsize`): a power of two
/// from 1 MiB to 1 GiB. Every size read from input (a segment's header, `wal/archive`, a
/// base backup's record, the server's setting) is checked with this before it is used:
/// segment arithmetic divides by it.
pub fn valid_segment_size(n: u32) -> bool {
    n.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&n)
}

/// Parse the long page header at the start of a segment.
pub fn segment_header(data: &[u8]) -> Option<SegmentHeader> {
    if data.len() < 40 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    // XLogLongPageHeaderData: magic(2) info(2) tli(4) pageaddr(8) rem_len(4) pad(4)
    // sysid(8) seg_size(4) xlog_blcksz(4).
    if u16_at(2) & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(SegmentHeader {
        timeline: u32_at(4),
        page_addr: u64_at(8),
        system_identifier: u64_at(24),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    })
}

/// What kind of file PostgreSQL archives under this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    Segment,
    Partial,
    History,
    Backup,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
}

/// Classify an archive file name; `None` for anything PostgreSQL would not archive.
pub fn classify(name: &str) -> Option<WalFileKind> {
    if name.len() == 24 && is_hex(name) {
        return Some(WalFileKind::Segment);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return (seg.len() == 24 && is_hex(seg)).then_some(WalFileKind::Partial);
    }
    if let Some(tli) = name.strip_suffix(".history") {
        return (tli.len() == 8 && is_hex(tli)).then_some(WalFileKind::History);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let (seg, off) = rest.split_once('.')?;
        return (seg.len() == 24 && is_hex(seg) && off.len() == 8 && is_hex(off))
            .then_some(WalFileKind::Backup);
    }
    None
}

/// The object name (below `wal/`) of an archive file.
pub fn object_name(name: &str) -> String {
    match classify(name) {
        Some(WalFileKind::Segment | WalFileKind::Partial | WalFileKind::Backup) => {
            format!("{}/{name}", &name[..16])
        }
        _ => name.to_string(),
    }
}

/// zstd level for archived WAL: the fastest, so that archiving keeps up with a busy server
/// (WAL is written once and never deduplicated; the repository's level applies to the
/// store). A repository created with compression off still compresses WAL at this level.
const WAL_ZSTD_LEVEL: i32 = 1;

/// Whether an archived file is WAL content (a segment or a partial one): in a repository
/// with write-only slots, sealed as content; the other files (history, backup labels) and
/// coffer's records are metadata, which a writer reads.
pub(crate) fn is_content(name: &str) -> bool {
    matches!(
        classify(name),
        Some(WalFileKind::Segment | WalFileKind::Partial)
    )
}

/// The start of a WAL segment object in a repository with write-only slots:
/// `MAGIC ‖ header length (u32 LE) ‖ seal_meta(JSON SegmentRecord) ‖ seal_content(encode(len ‖ name ‖ data))`.
const SEGMENT_MAGIC: &[u8; 4] = b"CWv2";

/// The header of a WAL segment object in a repository with write-only slots: what a writer
/// compares when PostgreSQL archives a segment again, without opening it.
#[derive(Debug, Serialize, Deserialize)]
struct SegmentRecord {
    name: String,
    size: u64,
    /// The keyed BLAKE3 of the segment (as a blob id).
    digest: crate::repo::id::Id,
    /// The ephemeral key the body's content key was agreed with (`None`: the encryption key).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::repo::crypto::b64opt"
    )]
    ephemeral: Option<[u8; 32]>,
}

pub(crate) fn seal_file(repo: &Repository, name: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut plain = Vec::with_capacity(2 + name.len() + data.len());
    plain.extend_from_slice(&(name.len() as u16).to_le_bytes());
    plain.extend_from_slice(name.as_bytes());
    plain.extend_from_slice(data);
    let enc = compress::Compressor::new(WAL_ZSTD_LEVEL).encode(&plain);
    if !(repo.write_only() && is_content(name)) {
        return Ok(repo.keys.meta().seal_encoded(enc));
    }
    let sealer = repo.keys.sealer()?;
    let record = SegmentRecord {
        name: name.to_string(),
        size: data.len() as u64,
        digest: repo.keys.blob_id(data),
        ephemeral: sealer.ephemeral(),
    };
    let header = repo.keys.meta().seal(&serde_json::to_vec(&record)?);
    let body = sealer.seal_encoded(enc);
    let mut out = Vec::with_capacity(8 + header.len() + body.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    Ok(out)
}

/// A segment object's record and sealed body, if it has the write-only layout.
fn split_segment<'a>(repo: &Repository, sealed: &'a [u8]) -> Option<(SegmentRecord, &'a [u8])> {
    let (header, body) = segment_parts(sealed)?;
    let plain = repo.keys.meta().open(header).ok()?;
    let record = serde_json::from_slice(&plain).ok()?;
    Some((record, body))
}

/// The sealed header and body of a write-only segment object (none for another layout).
pub(crate) fn segment_parts(sealed: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = sealed.strip_prefix(SEGMENT_MAGIC)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    Some((rest.get(4..4 + len)?, rest.get(4 + len..)?))
}

/// Whether the archived object `existing` holds exactly `data` (PostgreSQL archiving a
/// file again): compared by digest for a segment a writer can compare but not open.
pub(crate) fn same_file(
    repo: &Repository,
    name: &str,
    existing: &[u8],
    data: &[u8],
) -> Result<bool> {
    match split_segment(repo, existing) {
        Some((r, _)) if r.name == name => {
            Ok(r.size == data.len() as u64 && r.digest == repo.keys.blob_id(data))
        }
        Some(_) => Err(moved(name)),
        None => Ok(open_file(repo, name, existing)? == data),
    }
}

fn moved(name: &str) -> anyhow::Error {
    Error::integrity(format!(
        "{} holds another file's content (the object was moved or replaced)",
        FileKind::Wal.path(&object_name(name))
    ))
    .into()
}

pub(crate) fn open_file(repo: &Repository, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let path = FileKind::Wal.path(&object_name(name));
    let plain = match split_segment(repo, sealed) {
        Some((record, body)) => {
            if record.name != name {
                return Err(moved(name));
            }
            let key = repo
                .keys
                .reader(record.ephemeral.as_ref(), "reading archived WAL")?;
            let data = open_body(&key, name, &path, body)?;
            if data.len() as u64 != record.size || repo.keys.blob_id(&data) != record.digest {
                return Err(Error::integrity(format!(
                    "{path} does not match its recorded size and digest"
                ))
                .into());
            }
            return Ok(data);
        }
        None if repo.keys.is_writer() && is_content(name) => {
            return Err(crate::repo::crypto::write_only_error(
                "reading archived WAL",
            ))
        }
        None => repo
            .keys
            .open_meta(sealed)
            .map_err(|e| Error::integrity(format!("{path}: {e}")))?,
    };
    unframe(name, &path, &plain)
}

fn open_body(
    key: &crate::repo::crypto::Cipher,
    name: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>> {
    let plain = key
        .open(body)
        .map_err(|e| Error::integrity(format!("{path}: {e}")))?;
    unframe(name, path, &plain)
}

/// The file inside `encode(len(u16) ‖ name ‖ data)`, checked to be `name`.
fn unframe(name: &str, path: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let plain = compress::decode(plain).map_err(|e| Error::integrity(format!("{path}: {e}")))?;
    // `len(u16) || name || data`; a plaintext shorter than its length field names no file.
    let stored = plain.get(..2).and_then(|b| {
        let end = 2 + u16::from_le_bytes([b[0], b[1]]) as usize;
        Some((plain.get(2..end)?, end))
    });
    match stored {
        Some((stored, end)) if stored == name.as_bytes() => Ok(plain[end..].to_vec()),
        _ => Err(moved(name)),
    }
}

/// The archive's cluster record, if any push happened yet.
pub fn archive_info(repo: &Repository) -> Result<Option<ArchiveInfo>> {
    match repo.backend.read(FileKind::Wal, ARCHIVE_INFO) {
        Ok(sealed) => {
            let data = open_file(repo, ARCHIVE_INFO, &sealed)?;
            let info: ArchiveInfo = serde_json::from_slice(&data)
                .map_err(|e| Error::integrity(format!("wal/{ARCHIVE_INFO} is malformed: {e}")))?;
            info.requires.check("the WAL archive")?;
            if !valid_segment_size(info.segment_size) {
                return Err(Error::integrity(format!(
                    "wal/{ARCHIVE_INFO} records a WAL segment size of {} bytes, which PostgreSQL \
                     never uses (a power of two from 1 MiB to 1 GiB)",
                    info.segment_size
                ))
                .into());
            }
            Ok(Some(info))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read an archived file, verified. `Ok(None)` when it is not archived.
pub fn read(repo: &Repository, name: &str) -> Result<Option<Vec<u8>>> {
    if classify(name).is_none() {
        return Err(Error::usage(format!("{name:?} is not a WAL file name")).into());
    }
    match repo.backend.read(FileKind::Wal, &object_name(name)) {
        Ok(sealed) => open_file(repo, name, &sealed).map(Some),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parse an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The name of segment number `segno` on timeline `tli`.
pub fn segment_name(tli: u32, segno: u64, segment_size: u32) -> String {
    let per_log = 0x1_0000_0000u64 / segment_size as u64;
    format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// Timeline and segment number of a segment name.
pub fn parse_segment(name: &str, segment_size: u32) -> Option<(u32, u64)> {
    if classify(name) != Some(WalFileKind::Segment) || segment_size == 0 {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * (0x1_0000_0000u64 / segment_size as u64) + seg))
}

/// Segment names following `name` (same timeline), for prefetching.
pub fn next_segments(name: &str, segment_size: u32, n: usize) -> Vec<String> {
    let Some((tli, no)) = parse_segment(name, segment_size) else {
        return Vec::new();
    };
    (1..=n as u64)
        .map(|i| segment_name(tli, no + i, segment_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fetch::fetch;
    use super::super::push::push_bytes;
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn names() {
        assert_eq!(
            classify("000000010000000000000003"),
            Some(WalFileKind::Segment)
        );
        assert_eq!(classify("00000002.history"), Some(WalFileKind::History));
        assert_eq!(
            classify("000000010000000000000003.00000028.backup"),
            Some(WalFileKind::Backup)
        );
        assert_eq!(
            classify("000000010000000000000003.partial"),
            Some(WalFileKind::Partial)
        );
        assert_eq!(classify("00000001000000000000000g"), None);
        assert_eq!(classify("000000010000000000000003a"), None);
        assert_eq!(classify("../etc/passwd"), None);
        assert_eq!(
            object_name("000000010000000A00000003"),
            "000000010000000A/000000010000000A00000003"
        );
        assert_eq!(object_name("00000002.history"), "00000002.history");
    }

    #[test]
    fn following_segments() {
        assert_eq!(
            next_segments("0000000100000000000000FE", 16 << 20, 3),
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert_eq!(
            next_segments("000000020000000300000001", 1 << 30, 4),
            [
                "000000020000000300000002",
                "000000020000000300000003",
                "000000020000000400000000",
                "000000020000000400000001"
            ]
        );
        assert!(next_segments("00000002.history", 16 << 20, 3).is_empty());
    }

    #[test]
    fn lsns() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16B374D848"), None);
        assert_eq!(parse_lsn("x/1"), None);
        let seg = 16 << 20;
        assert_eq!(
            segment_name(1, 0x1_0000_0000 / seg + 2, seg as u32),
            "000000010000000100000002"
        );
        assert_eq!(
            parse_segment("000000030000000100000002", seg as u32),
            Some((3, 0x1_0000_0000 / seg + 2))
        );
    }

    #[test]
    fn impossible_segment_sizes_are_refused() {
        assert!(valid_segment_size(1 << 20) && valid_segment_size(1 << 30));
        for n in [0, 1, (1 << 20) - 1, 3 << 20, 1 << 31, u32::MAX] {
            assert!(!valid_segment_size(n), "{n}");
        }
        // A stored archive record with a zero segment size is damage, not a divisor.
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(
            std::sync::Arc::new(crate::backend::LocalBackend::new(dir.path().join("r"))),
            b"pw",
            &crate::repo::InitOptions {
                kdf: crate::repo::keys::KdfParams::insecure_for_tests(),
                compression: 0,
                pack_size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let info = ArchiveInfo {
            system_identifier: "7".into(),
            segment_size: 0,
            created: chrono::Local::now().fixed_offset(),
            requires: Default::default(),
        };
        let sealed = seal_file(&repo, ARCHIVE_INFO, &serde_json::to_vec(&info).unwrap()).unwrap();
        repo.backend
            .write(FileKind::Wal, ARCHIVE_INFO, &sealed)
            .unwrap();
        let e = archive_info(&repo).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Integrity, "{e}");
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(fetch(&repo, "000000010000000000000003", &dest, 4).is_err());
    }

    #[test]
    fn long_header() {
        let mut page = vec![0u8; 8192];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&7u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[24..32].copy_from_slice(&7710896918539192691u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        page[36..40].copy_from_slice(&8192u32.to_le_bytes());
        let h = segment_header(&page).unwrap();
        assert_eq!(h.system_identifier, 7710896918539192691);
        assert_eq!(h.segment_size, 16 << 20);
        assert_eq!(h.timeline, 1);
        page[2] = 0;
        assert!(segment_header(&page).is_none());
    }

    #[test]
    fn the_wal_archive_record_declares_its_feature_and_is_checked() {
        use crate::backend::{Backend, LocalBackend};
        use crate::repo::features::WAL_ARCHIVE;
        use crate::repo::{keys::KdfParams, InitOptions};
        let t = tempfile::tempdir().unwrap();
        let backend = std::sync::Arc::new(LocalBackend::new(t.path().join("repo")));
        let opts = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            ..Default::default()
        };
        let repo = Repository::init(backend.clone(), b"pw", &opts).unwrap();
        // A segment with a long page header: 1 MiB segments (the smallest) of cluster 42.
        let seg = super::super::test_segment(42);
        push_bytes(
            &repo,
            "000000010000000000000001",
            WalFileKind::Segment,
            &seg,
        )
        .unwrap();
        let info = archive_info(&repo).unwrap().unwrap();
        assert!(info.requires.contains(WAL_ARCHIVE), "{info:?}");

        // The record as a newer coffer would write it (sealed as seal_file does).
        let mut v = serde_json::to_value(&info).unwrap();
        v["requires"] = serde_json::json!({"wal-archive-v2": "0.7.0"});
        let data = serde_json::to_vec(&v).unwrap();
        let mut plain = (ARCHIVE_INFO.len() as u16).to_le_bytes().to_vec();
        plain.extend_from_slice(ARCHIVE_INFO.as_bytes());
        plain.extend_from_slice(&data);
        let enc = crate::repo::crypto::compress::Compressor::new(1).encode(&plain);
        backend
            .write(
                FileKind::Wal,
                ARCHIVE_INFO,
                &repo.keys.meta().seal_encoded(enc),
            )
            .unwrap();
        let e = archive_info(&repo).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::NeedsNewer, "{e:#}");
        assert!(
            e.to_string()
                .starts_with("the WAL archive needs coffer >= 0.7.0 (feature wal-archive-v2)"),
            "{e}"
        );
    }
}
