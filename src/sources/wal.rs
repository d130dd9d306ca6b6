//! The PostgreSQL WAL archive: `archive_command` (`coffer wal-push %p`) and
//! `restore_command` (`coffer wal-fetch %f %p`).
//!
//! Each archived file (a WAL segment, a `.history` or a `.backup` file) is one immutable
//! object under `wal/`, outside the deduplicated store: segments are written once and
//! never share content. The object is `seal(encode(header ‖ bytes))` where the header
//! names the file, so an object moved to another name does not pass for it. Segments live
//! under `wal/<timeline and log id>/NAME`, other files directly under `wal/`.
//!
//! `wal/archive` records the cluster's system identifier and segment size on the first
//! push; a segment of another cluster is refused. A name that already exists is accepted
//! again only with identical content.

use crate::backend::{is_not_found, FileKind};
use crate::error::{Error, ErrorKind};
use crate::repo::crypto::compress;
use crate::repo::features::{self, Features};
use crate::repo::Repository;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

pub(crate) fn seal_file(repo: &Repository, name: &str, data: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(2 + name.len() + data.len());
    plain.extend_from_slice(&(name.len() as u16).to_le_bytes());
    plain.extend_from_slice(name.as_bytes());
    plain.extend_from_slice(data);
    let enc = compress::Compressor::new(WAL_ZSTD_LEVEL).encode(&plain);
    repo.key.seal_encoded(enc)
}

pub(crate) fn open_file(repo: &Repository, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let path = FileKind::Wal.path(&object_name(name));
    let plain = repo
        .key
        .open(sealed)
        .map_err(|e| Error::integrity(format!("{path}: {e}")))?;
    let plain = compress::decode(&plain).map_err(|e| Error::integrity(format!("{path}: {e}")))?;
    // `len(u16) || name || data`; a plaintext shorter than its length field names no file.
    let stored = plain.get(..2).and_then(|b| {
        let end = 2 + u16::from_le_bytes([b[0], b[1]]) as usize;
        Some((plain.get(2..end)?, end))
    });
    match stored {
        Some((stored, end)) if stored == name.as_bytes() => Ok(plain[end..].to_vec()),
        _ => Err(Error::integrity(format!(
            "{path} holds another file's content (the object was moved or replaced)"
        ))
        .into()),
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

/// [`archive_info`], read once per repository and process: the object is immutable once
/// written, and a push-ahead call checks it for every segment.
fn known_archive_info(repo: &Repository) -> Result<Option<ArchiveInfo>> {
    static KNOWN: std::sync::Mutex<Vec<(String, ArchiveInfo)>> = std::sync::Mutex::new(Vec::new());
    let location = repo.backend.location();
    let cached = KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(l, _)| *l == location)
        .map(|(_, i)| i.clone());
    if cached.is_some() {
        return Ok(cached);
    }
    let info = archive_info(repo)?;
    if let Some(i) = &info {
        KNOWN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((location, i.clone()));
    }
    Ok(info)
}

/// What [`push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The same content was archived before.
    AlreadyArchived,
}

/// Archive one file given by path (`%p`, relative to the data directory). Returns once
/// the object is durable.
pub fn push(repo: &Repository, path: &Path) -> Result<Pushed> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} is not a WAL file path", path.display())))?;
    let kind = classify(name).ok_or_else(|| {
        Error::usage(format!(
            "{name:?} is not a WAL segment, .partial, .history or .backup file name"
        ))
    })?;
    let data = std::fs::read(path).map_err(|e| {
        Error::new(
            ErrorKind::Source,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    push_bytes(repo, name, kind, &data)
}

/// The `archive_command` entry point: archive `path`, and with `jobs > 1` also push
/// ahead the other segments that PostgreSQL has marked ready (`archive_status/*.ready`,
/// looking again while there are more, up to [`MAX_AHEAD`]), with `jobs` parallel
/// workers, so one key derivation serves a whole backlog. A segment pushed ahead gets a marker in
/// `pg_wal/.coffer-pushed/`, written only after its object is durable; when PostgreSQL
/// asks for it, the marker answers at once. Returns how many files this call archived.
pub fn push_with_ahead(repo: &Repository, path: &Path, jobs: usize) -> Result<usize> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} is not a WAL file path", path.display())))?
        .to_string();
    let wal_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let status = wal_dir.join("archive_status");
    let markers = wal_dir.join(".coffer-pushed");
    if take_marker(path) {
        return Ok(0);
    }
    let ahead_on = jobs > 1 && classify(&name) == Some(WalFileKind::Segment);
    if ahead_on {
        // Markers whose segment is no longer waiting are stale.
        if let Ok(rd) = std::fs::read_dir(&markers) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !status.join(format!("{n}.ready")).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // Ready segments not yet pushed nor taken by this call, oldest first.
    let scan = |taken: &std::collections::HashSet<String>| -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&status) else {
            return Vec::new();
        };
        let mut ready: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".ready").map(str::to_string)
            })
            .filter(|n| classify(n) == Some(WalFileKind::Segment) && !taken.contains(n))
            .filter(|n| !markers.join(n).exists())
            .collect();
        ready.sort();
        ready
    };
    struct Queue {
        todo: std::collections::VecDeque<String>,
        taken: std::collections::HashSet<String>,
        rescans: usize,
    }
    let queue = std::sync::Mutex::new(Queue {
        todo: Default::default(),
        taken: [name.clone()].into_iter().collect(),
        rescans: 0,
    });
    if ahead_on {
        let mut q = queue.lock().unwrap();
        let first = scan(&q.taken);
        q.taken.extend(first.iter().cloned());
        q.todo.extend(first);
    }
    // The next segment to push ahead; when the queue is empty, look again for segments
    // that became ready meanwhile (a busy server), up to MAX_AHEAD in one call.
    let next = || -> Option<String> {
        let mut q = queue.lock().unwrap();
        if let Some(n) = q.todo.pop_front() {
            return Some(n);
        }
        if !ahead_on || q.taken.len() > MAX_AHEAD || q.rescans > MAX_AHEAD {
            return None;
        }
        q.rescans += 1;
        let more = scan(&q.taken);
        q.taken.extend(more.iter().cloned());
        q.todo.extend(more);
        q.todo.pop_front()
    };
    let pushed_ahead = std::sync::atomic::AtomicUsize::new(0);
    // A segment that fails to be pushed ahead (or to get its marker) is reported as a
    // warning, not an error: this call's status answers for PATH alone, and the failed
    // segment stays `.ready`, so PostgreSQL calls wal-push for it later, when the same
    // failure fails that call. Failing this call instead would make PostgreSQL retry PATH,
    // which is already archived, and not the segment that failed.
    let work = || {
        while let Some(n) = next() {
            let done = push(repo, &wal_dir.join(&n)).and_then(|_| {
                std::fs::create_dir_all(&markers)
                    .and_then(|_| std::fs::File::create(markers.join(&n)))
                    .with_context(|| {
                        format!("cannot write the marker {}", markers.join(&n).display())
                    })
            });
            match done {
                Ok(_) => {
                    pushed_ahead.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(
                    "pushing {n} ahead failed (it stays ready; PostgreSQL archives it in a \
                     later call): {e:#}"
                ),
            }
        }
    };
    let this = std::thread::scope(|s| {
        if ahead_on {
            for _ in 1..jobs {
                s.spawn(work);
            }
        }
        let this = push(repo, path);
        if this.is_ok() && ahead_on {
            work();
        }
        this
    });
    this?;
    Ok(1 + pushed_ahead.into_inner())
}

/// At most this many segments are pushed ahead by one `wal-push` call.
const MAX_AHEAD: usize = 256;

/// True (and the marker is gone) when an earlier call already pushed `path` ahead. Cheap:
/// callers check this before opening the repository (which costs a key derivation).
pub fn take_marker(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    std::fs::remove_file(dir.join(".coffer-pushed").join(name)).is_ok()
}

/// Archive `data` under `name`.
pub fn push_bytes(repo: &Repository, name: &str, kind: WalFileKind, data: &[u8]) -> Result<Pushed> {
    if matches!(kind, WalFileKind::Segment | WalFileKind::Partial) {
        let h = segment_header(data).ok_or_else(|| {
            Error::new(
                ErrorKind::Source,
                format!("{name} does not start with a WAL long page header"),
            )
        })?;
        if !valid_segment_size(h.segment_size) {
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "{name}'s page header gives a segment size of {} bytes, which PostgreSQL never \
                     uses (a power of two from 1 MiB to 1 GiB): not a WAL file, or a damaged one",
                    h.segment_size
                ),
            )
            .into());
        }
        if kind == WalFileKind::Segment && data.len() as u64 != h.segment_size as u64 {
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "{name} is {} bytes but its header says segments are {} bytes (a torn copy?)",
                    data.len(),
                    h.segment_size
                ),
            )
            .into());
        }
        let sysid = h.system_identifier.to_string();
        match known_archive_info(repo)? {
            Some(info) if info.system_identifier != sysid => {
                return Err(Error::usage(format!(
                    "{name} comes from the cluster with system identifier {sysid}, but this \
                     archive belongs to cluster {}; give each cluster its own repository",
                    info.system_identifier
                ))
                .into())
            }
            Some(_) => {}
            None => {
                let info = ArchiveInfo {
                    system_identifier: sysid,
                    segment_size: h.segment_size,
                    created: chrono::Local::now().fixed_offset(),
                    requires: Features::default().with(features::WAL_ARCHIVE),
                };
                let sealed = seal_file(repo, ARCHIVE_INFO, &serde_json::to_vec(&info)?);
                repo.backend.write(FileKind::Wal, ARCHIVE_INFO, &sealed)?;
            }
        }
    }
    let obj = object_name(name);
    match repo.backend.read(FileKind::Wal, &obj) {
        Ok(existing) => {
            let old = open_file(repo, name, &existing)?;
            if old == data {
                return Ok(Pushed::AlreadyArchived);
            }
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "{name} is already archived with different content; refusing to overwrite it \
                     (is another cluster archiving into this repository, or was the data \
                     directory restored without a new timeline?)"
                ),
            )
            .into());
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    repo.backend
        .write(FileKind::Wal, &obj, &seal_file(repo, name, data))?;
    Ok(Pushed::Stored)
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

/// The directory a path is in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

/// Write `data` to `dest` durably: into a temporary file in the same directory, flushed to
/// disk (`fdatasync`), renamed to `dest`, then the directory flushed. `dest` never exists
/// partly written, not even after a crash: without the flush before the rename, the file
/// system may make the rename durable before the data, and a crash leaves `dest` named but
/// empty or torn.
fn write_durable(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_dir(dest);
    let mut tmp = tempfile::Builder::new()
        .prefix(".coffer-wal-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, data)
        .and_then(|_| tmp.as_file().sync_data())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    tmp.persist(dest)
        .map_err(|e| anyhow::anyhow!("cannot rename into {}: {}", dest.display(), e.error))?;
    sync_dir(dir)
}

/// The parent timelines of a timeline, from its `.history` file: `(parent, switch LSN)`
/// per line, oldest first.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = parse_lsn(f.next()?)?;
            Some((tli, lsn))
        })
        .collect()
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

/// Where prefetched segments wait, next to the destination (inside pg_wal).
pub fn prefetch_dir(dest: &Path) -> PathBuf {
    parent_dir(dest).join(".coffer-prefetch")
}

/// Whether a prefetched file looks whole: a segment of the size its long page header
/// gives, for the timeline and position its name says. Prefetched files are verified
/// (decrypted, name checked) before they are written and written durably (see
/// [`write_durable`]), so this only guards against what happened to the file since:
/// a file torn by a crash under an older coffer that did not flush it, or one cut short by
/// something else.
fn prefetched_whole(path: &Path, name: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 40];
    let (Ok(meta), Ok(())) = (f.metadata(), std::io::Read::read_exact(&mut f, &mut head)) else {
        return false;
    };
    let Some(h) = segment_header(&head).filter(|h| valid_segment_size(h.segment_size)) else {
        return false;
    };
    let Some((tli, segno)) = parse_segment(name, h.segment_size) else {
        return false;
    };
    meta.len() == h.segment_size as u64
        && h.timeline == tli
        && Some(h.page_addr) == segno.checked_mul(h.segment_size as u64)
}

/// Answer a `wal-fetch` from the prefetch directory, without the repository: when an
/// earlier call prefetched `name` and it is whole, move it to `dest` (durably) and return
/// true. A prefetched file that is not whole is removed (with a warning) and false is
/// returned, so the caller fetches it from the archive.
pub fn take_prefetched(name: &str, dest: &Path) -> Result<bool> {
    let ready = prefetch_dir(dest).join(name);
    if std::fs::symlink_metadata(&ready).is_err() {
        return Ok(false);
    }
    if !prefetched_whole(&ready, name) {
        tracing::warn!(
            "the prefetched {} is not a whole segment; fetching it again",
            ready.display()
        );
        std::fs::remove_file(&ready)
            .with_context(|| format!("cannot remove {}", ready.display()))?;
        return Ok(false);
    }
    std::fs::rename(&ready, dest)
        .with_context(|| format!("cannot move {} to {}", ready.display(), dest.display()))?;
    sync_dir(parent_dir(dest))?;
    Ok(true)
}

/// Why [`fetch`] wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Written to `dest`.
    Written,
    /// The archive does not hold the file (and never removed it on purpose).
    NotArchived,
}

/// Restore one archived file to `dest` (`%f %p`). [`Fetched::NotArchived`] when it is not
/// archived; then nothing is written. A segment that WAL retention removed on purpose (below
/// the horizon `forget` recorded, see [`super::walhold::horizon`]) is an error instead:
/// recovery needs WAL that is gone, which PostgreSQL must not take for the end of the
/// archive. Fetches up to `prefetch` following segments in parallel and keeps them beside
/// `dest` for the next calls.
pub fn fetch(repo: &Repository, name: &str, dest: &Path, prefetch: usize) -> Result<Fetched> {
    if take_prefetched(name, dest)? {
        return Ok(Fetched::Written);
    }
    let dir = prefetch_dir(dest);
    let segment_size = match (prefetch, classify(name)) {
        (p, Some(WalFileKind::Segment)) if p > 0 => {
            archive_info(repo)?.map(|i| i.segment_size).unwrap_or(0)
        }
        _ => 0,
    };
    let ahead = next_segments(name, segment_size, prefetch);
    let this = std::thread::scope(|s| {
        let workers: Vec<_> = ahead
            .iter()
            .map(|n| {
                let dir = &dir;
                s.spawn(move || -> Result<()> {
                    if let Some(data) = read(repo, n)? {
                        if !dir.exists() {
                            std::fs::create_dir_all(dir)?;
                            sync_dir(parent_dir(dir))?;
                        }
                        write_durable(&dir.join(n), &data)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let this = read(repo, name);
        // A failed prefetch is a warning: the next call fetches that segment itself, and
        // fails then if the failure lasts.
        for (n, w) in ahead.iter().zip(workers) {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("prefetching {n} failed: {e:#}"),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        this
    });
    // Drop stale prefetched segments (older than this one).
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.as_str() < name && classify(&n).is_some() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    match this? {
        Some(data) => {
            write_durable(dest, &data)?;
            Ok(Fetched::Written)
        }
        None => {
            if let Some(h) = super::walhold::horizon(repo)?.filter(|h| h.covers(name)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{name} was removed from the archive by WAL retention (`coffer forget` \
                         keeps WAL only from {} on, since {}): this recovery needs WAL that no \
                         longer exists; restore a base backup that is still kept",
                        h.first_kept,
                        h.updated.to_rfc3339()
                    ),
                )
                .into());
            }
            Ok(Fetched::NotArchived)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn history() {
        let h =
            "1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tat restore point \"x\"\n";
        assert_eq!(parse_history(h), [(1, 0x300_0000), (2, 0x50_00A0)]);
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
            },
        )
        .unwrap();
        let info = ArchiveInfo {
            system_identifier: "7".into(),
            segment_size: 0,
            created: chrono::Local::now().fixed_offset(),
            requires: Default::default(),
        };
        let sealed = seal_file(&repo, ARCHIVE_INFO, &serde_json::to_vec(&info).unwrap());
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
}
