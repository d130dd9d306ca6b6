//! `wal-push`: PostgreSQL's `archive_command`.

use super::access::{open_named, Access};
use crate::config::{Config, WalMode};
use crate::error::Error;
use crate::sources::postgres::wal::{push, spool};
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
pub struct PushReport {
    pub path: PathBuf,
    /// Files archived by this call; none when an earlier call had archived this one ahead.
    pub files: Option<usize>,
}

/// Archive the WAL file at `path` and, with `jobs` above 1, the other ready segments
/// ahead. A file already archived ahead needs no repository (no key derivation). Pushing
/// to the primary repository, each file also goes to every repository a physical source of
/// the config copies its base backups to ([`wal_copies`]): into those with `wal = "sync"`
/// (the default), and into the spool folder of those with `wal = "async"`, which are not
/// opened (`wal-copy` pushes the spool there later). The call succeeds only once all of
/// them have it durably.
pub fn wal_push(access: &Access, path: &Path, jobs: usize) -> Result<PushReport> {
    let files = if push::take_marker(path) {
        None
    } else {
        let mut repos = vec![access.open()?];
        let mut spools = Vec::new();
        if access.name.is_none() {
            for name in wal_copies(&access.config) {
                match access.config.repositories.get(&name).map(|r| r.wal) {
                    Some(WalMode::Async) => {
                        let dir = spool_of(&access.config, &name)?;
                        // What a wal-push that died before its rename left.
                        spool::remove_abandoned(&dir);
                        spools.push(dir);
                    }
                    _ => repos.push(open_named(&access.config, &name, access.events())?),
                }
            }
        }
        let refs: Vec<&crate::repo::Repository> = repos.iter().map(|r| &**r).collect();
        let to = push::Targets {
            repos: &refs,
            spools: &spools,
        };
        Some(push::push_with_ahead(&to, path, jobs)?)
    };
    Ok(PushReport {
        path: path.to_path_buf(),
        files,
    })
}

/// The repositories that WAL goes to beside the primary: the `copy_to` of every physical
/// PostgreSQL source (a base backup copied there is restorable only with its WAL there).
pub fn wal_copies(config: &Config) -> Vec<String> {
    config.wal_copies()
}

/// The spool folder of the async repository `name` (the config requires `wal_spool`).
pub fn spool_of(config: &Config, name: &str) -> Result<PathBuf> {
    config.wal_spool_of(name).ok_or_else(|| {
        Error::usage(format!(
            "[repositories.{name}] has wal = \"async\": set the top-level wal_spool"
        ))
        .into()
    })
}

impl std::fmt::Display for PushReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "archived {} ({} file(s) in this call)",
            self.path.display(),
            self.files.unwrap_or(0)
        )
    }
}
