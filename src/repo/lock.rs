//! Repository locks.
//!
//! Backups, checks and restores take a *shared* lock; prune and forget take an
//! *exclusive* one. A lock is a sealed object in `locks/`; it is taken by writing it and
//! then listing `locks/`: if a conflicting live lock is there, ours is removed and the
//! operation fails (two racing exclusive lockers both back off; neither proceeds unsafely).
//! Long operations refresh their lock every 5 minutes by writing a new one and removing
//! the old. A lock is stale when it is older than 30 minutes (not refreshed: its process
//! is gone, on any host) or when it was made on this host by a process that no longer
//! exists. `coffer unlock` removes stale locks (`--remove-all` removes all).
//!
//! Locks fail closed: a lock that is listed but cannot be read is never skipped. A
//! damaged one (it does not decrypt or decode) blocks every lock-taking command (exit 5)
//! until `coffer unlock` removes it; a read error (storage) fails the command (exit 7).
//! Only a lock deleted between listing and reading is skipped, after listing again (it
//! may have been refreshed under a new name). The
//! functions that delete data take an [`ExclusiveLock`], which only [`Lock::exclusive`]
//! gives.

use super::Repository;
use crate::backend::FileKind;
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const STALE_AFTER_MINUTES: i64 = 30;
const REFRESH_EVERY_SECS: u64 = 300;
/// Past this without a successful refresh, others may take our lock for stale.
const LOST_AFTER_SECS: u64 = 25 * 60;

/// Fail if a lock taken through this repository handle may have been taken for stale by
/// another host (it could not be refreshed for too long). Called before the writes that
/// would be unsafe without a lock (a snapshot, prune's deletes). Another handle, on this
/// repository or another, is not affected.
pub fn ensure_held(repo: &Repository) -> Result<()> {
    if repo.lock_lost.load(Ordering::SeqCst) {
        return Err(Error::new(
            ErrorKind::Locked,
            "the repository lock could not be refreshed for 25 minutes (storage unreachable?); \
             stopping before committing so that a concurrent prune cannot break this operation",
        )
        .into());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub time: DateTime<Utc>,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: u32,
    pub operation: String,
}

impl LockInfo {
    pub fn is_stale(&self) -> bool {
        if Utc::now() - self.time > Duration::minutes(STALE_AFTER_MINUTES) {
            return true;
        }
        if self.hostname == super::hostname() {
            // Signal 0 checks for existence without sending anything.
            let alive = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
            return !alive;
        }
        false
    }

    fn describe(&self) -> String {
        format!(
            "{} lock by {}@{} pid {} ({}) since {}",
            if self.exclusive { "an exclusive" } else { "a" },
            self.username,
            self.hostname,
            self.pid,
            self.operation,
            self.time.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// A held lock; released on drop.
pub struct Lock {
    repo: Arc<Repository>,
    name: Arc<Mutex<String>>,
    /// Dropping this wakes the refresher at once (it waits on the channel, not in sleeps,
    /// so releasing a lock does not wait for a sleep to end).
    stop: Option<crossbeam_channel::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// Proof that this process holds the exclusive lock of a repository. The functions that
/// delete (prune, forget, WAL retention) take it, and act on its repository; only
/// [`Lock::exclusive`] makes one. Released on drop.
pub struct ExclusiveLock(Lock);

impl ExclusiveLock {
    /// The repository this lock is held on.
    pub fn repo(&self) -> &Arc<Repository> {
        &self.0.repo
    }

    /// Fail if the lock may have been taken for stale by another host (see
    /// [`ensure_held`]); called before deleting.
    pub fn ensure_held(&self) -> Result<()> {
        ensure_held(&self.0.repo)
    }
}

fn write_lock(repo: &Repository, info: &LockInfo) -> Result<String> {
    Ok(repo.save_json(FileKind::Lock, info)?.to_hex())
}

/// An object in `locks/` as [`list_locks`] found it.
#[derive(Debug)]
pub struct ListedLock {
    pub name: String,
    /// When the storage says it was written.
    pub modified: Option<DateTime<Utc>>,
    pub state: LockState,
}

#[derive(Debug)]
pub enum LockState {
    Readable(LockInfo),
    /// It was read but does not decrypt or decode (why): it may be anyone's lock.
    Damaged(String),
}

impl ListedLock {
    fn path(&self) -> String {
        FileKind::Lock.path(&self.name)
    }

    /// A damaged lock is taken for stale once its object is older than a live lock can be
    /// (a live one is rewritten every 5 minutes); never when the storage gives no time.
    fn damaged_and_old(&self) -> bool {
        self.modified
            .is_some_and(|t| Utc::now() - t > Duration::minutes(STALE_AFTER_MINUTES))
    }
}

/// How often [`list_locks`] lists again because a listed lock vanished before it was read.
const RELIST_ATTEMPTS: usize = 10;

/// Every lock but `except` (our own), read. One that is damaged is returned as such; one
/// that cannot be read (a storage error) fails the listing, naming it: it may be a live
/// lock, so whoever asks must not go on as if it were not there. A lock deleted between
/// the listing and the read was released, or refreshed: its holder wrote a new lock and
/// then deleted the old, and the new one may be missing from a listing made before it
/// was written. So the listing is repeated until every listed lock could be read.
pub fn list_locks(repo: &Repository, except: Option<&str>) -> Result<Vec<ListedLock>> {
    'listing: for _ in 0..RELIST_ATTEMPTS {
        let mut out = Vec::new();
        for f in repo.backend.list(FileKind::Lock)? {
            if Some(f.name.as_str()) == except {
                continue;
            }
            let state = match repo.load_json::<LockInfo>(FileKind::Lock, &f.name) {
                Ok(l) => LockState::Readable(l),
                Err(e) if crate::backend::is_not_found(&e) => continue 'listing,
                Err(e) if crate::error::kind_of(&e) == ErrorKind::Integrity => {
                    LockState::Damaged(format!("{e:#}"))
                }
                Err(e) => {
                    let path = FileKind::Lock.path(&f.name);
                    return Err(Error::new(
                        ErrorKind::Storage,
                        format!(
                            "cannot read lock {path}, which may be a live lock, so nothing that \
                             needs the lock goes ahead: {e:#}"
                        ),
                    )
                    .into());
                }
            };
            out.push(ListedLock {
                name: f.name,
                modified: f.modified,
                state,
            });
        }
        return Ok(out);
    }
    Err(Error::new(
        ErrorKind::Locked,
        format!(
            "the locks in locks/ kept changing while they were read ({RELIST_ATTEMPTS} listings); \
             try again"
        ),
    )
    .into())
}

impl Lock {
    pub fn shared(repo: &Arc<Repository>, operation: &str) -> Result<Lock> {
        Self::take(repo, false, operation)
    }
    pub fn exclusive(repo: &Arc<Repository>, operation: &str) -> Result<ExclusiveLock> {
        Self::take(repo, true, operation).map(ExclusiveLock)
    }

    fn take(repo: &Arc<Repository>, exclusive: bool, operation: &str) -> Result<Lock> {
        let info = LockInfo {
            time: Utc::now(),
            exclusive,
            hostname: super::hostname(),
            username: super::username(),
            pid: std::process::id(),
            operation: operation.to_string(),
        };
        let name = write_lock(repo, &info)?;
        if let Err(e) = Self::conflict(repo, &name, exclusive) {
            let _ = repo.backend.remove(FileKind::Lock, &name);
            return Err(e);
        }
        let name = Arc::new(Mutex::new(name));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let refresher = {
            let (repo, name) = (repo.clone(), name.clone());
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut last_ok = std::time::Instant::now();
                let mut next_refresh = std::time::Duration::from_secs(REFRESH_EVERY_SECS);
                loop {
                    // Wake at least every second to notice a lost lock; at once when stopped.
                    let until_refresh = next_refresh.saturating_sub(started.elapsed());
                    match stopped.recv_timeout(until_refresh.min(std::time::Duration::from_secs(1)))
                    {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if last_ok.elapsed().as_secs() > LOST_AFTER_SECS {
                        repo.lock_lost.store(true, Ordering::SeqCst);
                    }
                    if started.elapsed() < next_refresh {
                        continue;
                    }
                    next_refresh =
                        started.elapsed() + std::time::Duration::from_secs(REFRESH_EVERY_SECS);
                    let fresh = LockInfo {
                        time: Utc::now(),
                        ..info.clone()
                    };
                    match write_lock(&repo, &fresh) {
                        Ok(new) => {
                            last_ok = std::time::Instant::now();
                            let mut g = name.lock().unwrap();
                            let old = std::mem::replace(&mut *g, new);
                            let _ = repo.backend.remove(FileKind::Lock, &old);
                        }
                        Err(e) => repo
                            .events()
                            .warn(&format!("could not refresh the repository lock: {e:#}")),
                    }
                }
            })
        };
        Ok(Lock {
            repo: repo.clone(),
            name,
            stop: Some(stop),
            refresher: Some(refresher),
        })
    }
}

impl Lock {
    /// Fail when another lock forbids ours, or may (a damaged lock could be anyone's).
    fn conflict(repo: &Repository, ours: &str, exclusive: bool) -> Result<()> {
        for l in list_locks(repo, Some(ours))? {
            match &l.state {
                LockState::Readable(other) if (exclusive || other.exclusive) && !other.is_stale() => {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "the repository is locked: {}. Wait for it to finish; if that process is \
                             gone, `coffer unlock` removes stale locks",
                            other.describe()
                        ),
                    )
                    .into())
                }
                LockState::Readable(_) => {}
                LockState::Damaged(why) => {
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!(
                            "the repository may be locked: lock {} cannot be read ({why}), so \
                             nobody can tell whose it is. If no coffer is running on any host, \
                             `coffer unlock --remove-all` removes it (`coffer unlock` does once \
                             it is {STALE_AFTER_MINUTES} minutes old)",
                            l.path()
                        ),
                    )
                    .into())
                }
            }
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let name = self.name.lock().unwrap().clone();
        if let Err(e) = self.repo.backend.remove(FileKind::Lock, &name) {
            self.repo
                .events()
                .warn(&format!("could not remove lock {name}: {e:#}"));
        }
    }
}

/// What [`unlock`] did.
#[derive(Debug, Default, Serialize)]
pub struct Unlocked {
    /// Every lock object removed.
    pub removed: Vec<String>,
    /// Damaged locks among them, with what is wrong.
    pub damaged: Vec<(String, String)>,
    /// Damaged locks left in place (too recent to be taken for stale), with what is wrong.
    pub damaged_kept: Vec<(String, String)>,
    /// Locks removed (by `all`) that could not be read, with the error.
    pub unreadable: Vec<(String, String)>,
}

/// Remove stale locks (or all with `all`). A damaged lock is stale once its object is
/// older than a live lock can be; `all` removes every lock object without needing to read
/// it (the way out of a lock that cannot be read at all).
pub fn unlock(repo: &Repository, all: bool) -> Result<Unlocked> {
    let mut r = Unlocked::default();
    if all {
        for f in repo.backend.list(FileKind::Lock)? {
            let path = FileKind::Lock.path(&f.name);
            match repo.load_json::<LockInfo>(FileKind::Lock, &f.name) {
                Ok(_) => {}
                Err(e) if crate::backend::is_not_found(&e) => continue,
                Err(e) if crate::error::kind_of(&e) == ErrorKind::Integrity => {
                    r.damaged.push((path.clone(), format!("{e:#}")))
                }
                Err(e) => r.unreadable.push((path.clone(), format!("{e:#}"))),
            }
            repo.backend.remove(FileKind::Lock, &f.name)?;
            r.removed.push(path);
        }
        return Ok(r);
    }
    for l in list_locks(repo, None)? {
        let remove = match &l.state {
            LockState::Readable(info) => info.is_stale(),
            LockState::Damaged(why) if l.damaged_and_old() => {
                r.damaged.push((l.path(), why.clone()));
                true
            }
            LockState::Damaged(why) => {
                r.damaged_kept.push((l.path(), why.clone()));
                false
            }
        };
        if remove {
            repo.backend.remove(FileKind::Lock, &l.name)?;
            r.removed.push(l.path());
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Listed, LocalBackend};
    use crate::repo::{keys::KdfParams, InitOptions};

    /// The local backend, with another process's lock refreshed at the worst moment:
    /// right after a listing showed its old name, before that name is read.
    struct RefreshedMeanwhile {
        inner: LocalBackend,
        /// (old name, new name, new sealed bytes) of the refresh still to happen.
        refresh: Mutex<Option<(String, String, Vec<u8>)>>,
    }

    impl Backend for RefreshedMeanwhile {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn create(&self) -> Result<()> {
            self.inner.create()
        }
        fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
            self.inner.write(kind, name, data)
        }
        fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
            let mut r = self.refresh.lock().unwrap();
            if let Some((old, new, bytes)) = r.as_ref().filter(|(old, ..)| old == name) {
                // As the refresher does: write the new lock, then delete the old.
                self.inner.write(FileKind::Lock, new, bytes)?;
                self.inner.remove(FileKind::Lock, old)?;
                *r = None;
            }
            drop(r);
            self.inner.read(kind, name)
        }
        fn read_range(&self, kind: FileKind, name: &str, off: u64, len: u64) -> Result<Vec<u8>> {
            self.inner.read_range(kind, name, off, len)
        }
        fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
            self.inner.stat(kind, name)
        }
        fn list(&self, kind: FileKind) -> Result<Vec<Listed>> {
            self.inner.list(kind)
        }
        fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
            self.inner.remove(kind, name)
        }
    }

    #[test]
    fn a_lock_refreshed_between_listing_and_reading_is_still_seen() {
        let t = tempfile::tempdir().unwrap();
        let backend = Arc::new(RefreshedMeanwhile {
            inner: LocalBackend::new(t.path().join("repo")),
            refresh: Mutex::new(None),
        });
        let opts = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            ..Default::default()
        };
        let repo = Arc::new(Repository::init(backend.clone(), b"pw", &opts).unwrap());
        // A live backup on another host, about to refresh its lock.
        let info = LockInfo {
            time: Utc::now(),
            exclusive: false,
            hostname: "elsewhere".into(),
            username: "u".into(),
            pid: 1,
            operation: "backup".into(),
        };
        let old = write_lock(&repo, &info).unwrap();
        let new_bytes = repo.seal_json(&info).unwrap();
        let new = crate::Id::of_bytes(&new_bytes).to_hex();
        *backend.refresh.lock().unwrap() = Some((old.clone(), new.clone(), new_bytes));

        let e = Lock::exclusive(&repo, "prune")
            .err()
            .expect("prune got its lock");
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Locked, "{e:#}");
        assert!(e.to_string().contains("u@elsewhere"), "{e:#}");
        // Only the backup's refreshed lock is left; prune's own is gone.
        let names: Vec<String> = repo
            .backend
            .list(FileKind::Lock)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, [new]);
    }

    #[test]
    fn a_lost_lock_stops_only_its_own_repository_handle() {
        let t = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            ..Default::default()
        };
        let init = |name: &str| {
            let backend = Arc::new(LocalBackend::new(t.path().join(name)));
            Arc::new(Repository::init(backend, b"pw", &opts).unwrap())
        };
        let (a, b) = (init("a"), init("b"));
        let _backup = Lock::shared(&a, "backup").unwrap();
        let prune = Lock::exclusive(&b, "prune").unwrap();
        // What the refresher of a's lock records once it could not refresh it for
        // LOST_AFTER_SECS.
        a.lock_lost.store(true, Ordering::SeqCst);
        let e = ensure_held(&a).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Locked, "{e:#}");
        ensure_held(&b).unwrap();
        prune.ensure_held().unwrap();
    }
}
