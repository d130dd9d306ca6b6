//! `wal-copy`: push the WAL that `wal-push` spooled for the `wal = "async"` repositories
//! into them, oldest name first, with the push rules of `wal-push` (the same file again
//! succeeds without writing, a different one is refused), removing each spooled file once
//! its repository has it durably.

use super::access::open_named;
use crate::config::Config;
use crate::error::{kind_of, Error, ErrorKind};
use crate::progress::Progress;
use crate::sources::postgres::wal::archive::classify;
use crate::sources::postgres::wal::push::{push_bytes, Pushed};
use crate::sources::postgres::wal::spool;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::path::PathBuf;

/// `wal-copy --json`.
#[derive(Debug, Serialize)]
pub struct WalCopyReport {
    pub repositories: Vec<RepositoryCopy>,
    /// Files left in the spool of every repository after this call.
    pub pending: usize,
}

/// What `wal-copy` did for one repository.
#[derive(Debug, Serialize)]
pub struct RepositoryCopy {
    pub repository: String,
    /// Its spool folder.
    pub spool: PathBuf,
    /// Files pushed there and removed from the spool.
    pub copied: usize,
    /// Of those, files it had already with the same content (nothing written).
    pub already_archived: usize,
    /// Files left in its spool.
    pub pending: usize,
    /// Why it stopped: the repository could not be opened, or a file could not be pushed.
    pub error: Option<String>,
    /// The error's kind, for the exit code.
    #[serde(skip)]
    pub kind: Option<ErrorKind>,
}

/// The repositories `wal-copy` drains: each async one of [`Config::async_wal_copies`], and
/// any other `[repositories.NAME]` whose spool still holds files (one switched back to
/// `wal = "sync"`: what was spooled before must still get there).
pub fn spooled_repositories(config: &Config) -> Vec<String> {
    let mut names = config.async_wal_copies();
    for name in config.repositories.keys() {
        if names.contains(name) {
            continue;
        }
        let left = config
            .wal_spool_of(name)
            .is_some_and(|d| spool::pending(&d).is_ok_and(|p| !p.is_empty()));
        if left {
            names.push(name.clone());
        }
    }
    names.sort();
    names
}

/// Drain the spool of every async repository, or of `only`. A repository whose spool is
/// empty is not opened. One that cannot be opened, or that refuses a file, keeps its files
/// (from the one that failed on) and does not stop the others.
pub fn wal_copy(config: &Config, only: Option<&str>, events: &Progress) -> Result<WalCopyReport> {
    let mut names = spooled_repositories(config);
    if let Some(n) = only {
        if !names.iter().any(|x| x == n) {
            return Err(Error::usage(format!(
                "repository {n:?} does not take WAL asynchronously: wal-copy drains the \
                 [repositories.NAME] with wal = \"async\" that a physical source copies to \
                 (copy_to), and wal_spool is where their WAL waits"
            ))
            .into());
        }
        names.retain(|x| x == n);
    }
    let mut out = Vec::new();
    for name in names {
        let Some(dir) = config.wal_spool_of(&name) else {
            continue;
        };
        out.push(drain(config, &name, dir, events));
    }
    Ok(WalCopyReport {
        pending: out.iter().map(|r| r.pending).sum(),
        repositories: out,
    })
}

fn drain(config: &Config, name: &str, dir: PathBuf, events: &Progress) -> RepositoryCopy {
    let mut r = RepositoryCopy {
        repository: name.to_string(),
        spool: dir.clone(),
        copied: 0,
        already_archived: 0,
        pending: 0,
        error: None,
        kind: None,
    };
    // Said once, by the report and its verdict.
    let fail = |r: &mut RepositoryCopy, e: anyhow::Error| {
        r.kind = Some(kind_of(&e));
        r.error = Some(format!("{e:#}"));
    };
    let files = match spool::pending(&dir) {
        Ok(f) => f,
        Err(e) => {
            fail(&mut r, e);
            return r;
        }
    };
    r.pending = files.len();
    if files.is_empty() {
        return r;
    }
    let repo = match open_named(config, name, events) {
        Ok(repo) => repo,
        Err(e) => {
            fail(&mut r, e.context(format!("opening repository {name}")));
            return r;
        }
    };
    for f in &files {
        let done = (|| -> Result<Pushed> {
            let kind = classify(&f.name)
                .ok_or_else(|| anyhow::anyhow!("{} is not a WAL file name", f.name))?;
            let data = std::fs::read(&f.path).map_err(|e| {
                Error::new(
                    ErrorKind::Source,
                    format!("cannot read {}: {e}", f.path.display()),
                )
            })?;
            let pushed = push_bytes(&repo, &f.name, kind, &data)
                .with_context(|| format!("archiving {} into {name}", f.name))?;
            spool::remove(f)?;
            Ok(pushed)
        })();
        match done {
            Ok(pushed) => {
                r.copied += 1;
                r.pending -= 1;
                if pushed == Pushed::AlreadyArchived {
                    r.already_archived += 1;
                }
            }
            Err(e) => {
                // Oldest first: the files after it wait for it.
                fail(&mut r, e);
                break;
            }
        }
    }
    r
}

impl WalCopyReport {
    /// Exit 0 when every spool is empty; otherwise the kind of the first repository's
    /// failure (7 for storage that cannot be reached, 6 for no repository there, …).
    pub fn verdict(&self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let left: Vec<String> = self
            .repositories
            .iter()
            .filter(|r| r.pending > 0)
            .map(|r| {
                format!(
                    "{}: {} file(s) left{}",
                    r.repository,
                    r.pending,
                    r.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let kind = self
            .repositories
            .iter()
            .find_map(|r| r.kind)
            .unwrap_or(ErrorKind::Other);
        Err(Error::new(
            kind,
            format!(
                "wal-copy left {} file(s) in the WAL spool: {}",
                self.pending,
                left.join("; ")
            ),
        )
        .into())
    }
}

impl std::fmt::Display for WalCopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.repositories.is_empty() {
            return write!(f, "no repository takes WAL asynchronously");
        }
        let lines: Vec<String> = self
            .repositories
            .iter()
            .map(|r| {
                format!(
                    "{}: copied {} file(s) ({} already there), {} left in {}{}",
                    r.repository,
                    r.copied,
                    r.already_archived,
                    r.pending,
                    r.spool.display(),
                    r.error
                        .as_deref()
                        .map(|e| format!(": FAILED: {e}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        write!(f, "{}", lines.join("\n"))
    }
}
