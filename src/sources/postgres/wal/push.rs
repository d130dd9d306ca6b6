//! `archive_command`: `coffer wal-push %p` archives one file, and pushes ahead the other
//! segments PostgreSQL has marked ready. The first segment pushed records the cluster in
//! `wal/archive`; a segment of another cluster is refused. A name that already exists is
//! accepted again only with identical content. Beside the repositories, a file may go to
//! spool folders ([`super::spool`]), for the repositories that take WAL asynchronously.

use super::archive::{
    archive_info, classify, object_name, same_file, seal_file, segment_header, valid_segment_size,
    ArchiveInfo, WalFileKind, ARCHIVE_INFO,
};
use crate::backend::{is_not_found, FileKind};
use crate::error::{Error, ErrorKind};
use crate::repo::features::{self, Features};
use crate::repo::Repository;
use anyhow::{Context as _, Result};
use std::path::Path;

/// [`archive_info`], read once per repository handle: the object is immutable once
/// written, and a push-ahead call checks it for every segment.
fn known_archive_info(repo: &Repository) -> Result<Option<ArchiveInfo>> {
    if let Some(info) = repo.remembered::<ArchiveInfo>() {
        return Ok(Some(info));
    }
    let info = archive_info(repo)?;
    if let Some(i) = &info {
        repo.remember(i.clone());
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
    push_to(&Targets::repos(&[repo]), path)
}

/// Where `wal-push` archives each file: `repos` (the primary first), then the spool
/// folders of the asynchronous repositories.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    pub repos: &'a [&'a Repository],
    pub spools: &'a [std::path::PathBuf],
}

impl<'a> Targets<'a> {
    pub fn repos(repos: &'a [&'a Repository]) -> Targets<'a> {
        Targets { repos, spools: &[] }
    }
}

/// Archive one file into each repository of `to` in turn, then keep it in each spool
/// folder; returns once every one has it durably (what the first repository did is
/// returned). The first that fails fails the call.
pub fn push_to(to: &Targets<'_>, path: &Path) -> Result<Pushed> {
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
    let mut first = None;
    for repo in to.repos {
        let pushed = push_bytes(repo, name, kind, &data)
            .with_context(|| format!("archiving {name} into {}", repo.backend.location()))?;
        first.get_or_insert(pushed);
    }
    let first = first.ok_or_else(|| anyhow::anyhow!("no repository to archive {name} into"))?;
    for dir in to.spools {
        super::spool::store(dir, name, &data)
            .with_context(|| format!("spooling {name} into {}", dir.display()))?;
    }
    Ok(first)
}

/// The `archive_command` entry point: archive `path`, and with `jobs > 1` also push
/// ahead the other segments that PostgreSQL has marked ready (`archive_status/*.ready`,
/// looking again while there are more, up to [`MAX_AHEAD`]), with `jobs` parallel
/// workers, so one key derivation serves a whole backlog. A segment pushed ahead gets a marker in
/// `pg_wal/.coffer-pushed/`, written only after its object is durable; when PostgreSQL
/// asks for it, the marker answers at once. Every file goes to each repository of `to`
/// (the primary first, then the repositories the cluster's base backups are copied to that
/// take WAL synchronously) and into each of its spool folders (those that take it
/// asynchronously), and counts as archived, and gets its marker, only once all of them
/// have it. Returns how many files this call archived.
pub fn push_with_ahead(to: &Targets<'_>, path: &Path, jobs: usize) -> Result<usize> {
    let repo = *to
        .repos
        .first()
        .ok_or_else(|| anyhow::anyhow!("no repository to archive into"))?;
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
            let done = push_to(to, &wal_dir.join(&n)).and_then(|_| {
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
                Err(e) => repo.events().warn(&format!(
                    "pushing {n} ahead failed (it stays ready; PostgreSQL archives it in a \
                     later call): {e:#}"
                )),
            }
        }
    };
    let this = std::thread::scope(|s| {
        if ahead_on {
            for _ in 1..jobs {
                s.spawn(work);
            }
        }
        let this = push_to(to, path);
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
                let sealed = seal_file(repo, ARCHIVE_INFO, &serde_json::to_vec(&info)?)?;
                repo.backend.write(FileKind::Wal, ARCHIVE_INFO, &sealed)?;
            }
        }
    }
    let obj = object_name(name);
    match repo.backend.read(FileKind::Wal, &obj) {
        Ok(existing) => {
            if same_file(repo, name, &existing, data)? {
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
        .write(FileKind::Wal, &obj, &seal_file(repo, name, data)?)?;
    Ok(Pushed::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::repo::{keys::KdfParams, InitOptions};
    use std::sync::Arc;

    use super::super::test_segment as segment;

    #[test]
    fn the_archive_record_is_remembered_per_repository_handle() {
        let t = tempfile::tempdir().unwrap();
        let init = || {
            let backend = Arc::new(LocalBackend::new(t.path().join("repo")));
            let opts = InitOptions {
                kdf: KdfParams::insecure_for_tests(),
                ..Default::default()
            };
            Repository::init(backend, b"pw", &opts).unwrap()
        };
        let name = "000000010000000000000001";
        let first = init();
        push_bytes(&first, name, WalFileKind::Segment, &segment(42)).unwrap();
        let e = push_bytes(&first, name, WalFileKind::Segment, &segment(43)).unwrap_err();
        assert!(e.to_string().contains("belongs to cluster 42"), "{e:#}");

        // A new repository at the same location, for another cluster: the first handle's
        // record is not taken for this one's.
        drop(first);
        std::fs::remove_dir_all(t.path().join("repo")).unwrap();
        let second = init();
        assert_eq!(
            push_bytes(&second, name, WalFileKind::Segment, &segment(43)).unwrap(),
            Pushed::Stored
        );
        let info = archive_info(&second).unwrap().unwrap();
        assert_eq!(info.system_identifier, "43");
    }
}
