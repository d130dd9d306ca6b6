//! `restore_command`: `coffer wal-fetch %f %p` writes one archived file where PostgreSQL
//! asks for it, durably, and prefetches the segments that follow into `pg_wal/.coffer-prefetch/`
//! for the next calls.

use super::archive::{
    archive_info, classify, next_segments, parse_segment, read, segment_header, valid_segment_size,
    WalFileKind,
};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::Repository;
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};

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
pub fn take_prefetched(name: &str, dest: &Path, events: &Progress) -> Result<bool> {
    let ready = prefetch_dir(dest).join(name);
    if std::fs::symlink_metadata(&ready).is_err() {
        return Ok(false);
    }
    if !prefetched_whole(&ready, name) {
        events.warn(&format!(
            "the prefetched {} is not a whole segment; fetching it again",
            ready.display()
        ));
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
/// the horizon `forget` recorded, see [`super::hold::horizon`]) is an error instead:
/// recovery needs WAL that is gone, which PostgreSQL must not take for the end of the
/// archive. Fetches up to `prefetch` following segments in parallel and keeps them beside
/// `dest` for the next calls.
pub fn fetch(repo: &Repository, name: &str, dest: &Path, prefetch: usize) -> Result<Fetched> {
    if take_prefetched(name, dest, repo.events())? {
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
                Ok(Err(e)) => repo
                    .events()
                    .warn(&format!("prefetching {n} failed: {e:#}")),
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
            if let Some(h) = super::hold::horizon(repo)?.filter(|h| h.covers(name)) {
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
