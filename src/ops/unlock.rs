//! `unlock`: remove stale locks.

use crate::repo::lock::{self, Unlocked};
use crate::repo::Repository;
use anyhow::Result;

/// Remove stale locks, or every lock with `all`.
pub fn unlock(repo: &Repository, all: bool) -> Result<Unlocked> {
    lock::unlock(repo, all)
}

impl std::fmt::Display for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (path, why) in &self.damaged {
            writeln!(f, "removed damaged lock {path} ({why})")?;
        }
        for (path, why) in &self.unreadable {
            writeln!(f, "removed lock {path}, which could not be read ({why})")?;
        }
        for (path, why) in &self.damaged_kept {
            writeln!(
                f,
                "kept damaged lock {path} ({why}): it is not yet 30 minutes old, so it may belong \
                 to a running coffer; if none is running on any host, `coffer unlock --remove-all` \
                 removes it"
            )?;
        }
        write!(f, "removed {} lock(s)", self.removed.len())
    }
}
