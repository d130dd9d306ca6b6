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

use super::Repository;
use crate::backend::FileKind;
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const STALE_AFTER_MINUTES: i64 = 30;
const REFRESH_EVERY_SECS: u64 = 300;
/// Past this without a successful refresh, others may take our lock for stale.
const LOST_AFTER_SECS: u64 = 25 * 60;

/// Set when this process could not refresh its lock for too long.
static LOST: AtomicBool = AtomicBool::new(false);

/// Fail if this process's lock may have been taken for stale by another host. Called
/// before the writes that would be unsafe without a lock (a snapshot, prune's deletes).
pub fn ensure_held() -> Result<()> {
    if LOST.load(Ordering::SeqCst) {
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

fn write_lock(repo: &Repository, info: &LockInfo) -> Result<String> {
    Ok(repo.save_json(FileKind::Lock, info)?.to_hex())
}

/// All locks with their names; unreadable ones are skipped.
pub fn list_locks(repo: &Repository) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for f in repo.backend.list(FileKind::Lock)? {
        match repo.load_json::<LockInfo>(FileKind::Lock, &f.name) {
            Ok(l) => out.push((f.name, l)),
            Err(e) if crate::backend::is_not_found(&e) => {}
            Err(e) => tracing::warn!("ignoring unreadable lock {}: {e:#}", f.name),
        }
    }
    Ok(out)
}

impl Lock {
    pub fn shared(repo: &Arc<Repository>, operation: &str) -> Result<Lock> {
        Self::take(repo, false, operation)
    }
    pub fn exclusive(repo: &Arc<Repository>, operation: &str) -> Result<Lock> {
        Self::take(repo, true, operation)
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
        let conflict = list_locks(repo)?
            .into_iter()
            .find(|(n, l)| n != &name && (exclusive || l.exclusive) && !l.is_stale());
        if let Some((_, other)) = conflict {
            let _ = repo.backend.remove(FileKind::Lock, &name);
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "the repository is locked: {}. Wait for it to finish; if that process is gone, \
                     `coffer unlock` removes stale locks",
                    other.describe()
                ),
            )
            .into());
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
                        LOST.store(true, Ordering::SeqCst);
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
                        Err(e) => tracing::warn!("could not refresh the repository lock: {e:#}"),
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

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let name = self.name.lock().unwrap().clone();
        if let Err(e) = self.repo.backend.remove(FileKind::Lock, &name) {
            tracing::warn!("could not remove lock {name}: {e:#}");
        }
    }
}

/// Remove stale locks (or all with `all`); returns how many were removed.
pub fn unlock(repo: &Repository, all: bool) -> Result<usize> {
    let mut n = 0;
    for (name, l) in list_locks(repo)? {
        if all || l.is_stale() {
            repo.backend.remove(FileKind::Lock, &name)?;
            n += 1;
        }
    }
    Ok(n)
}
