//! `key`: list, add and remove key slots, and change the passphrase.

use super::short_name;
use crate::repo::keys::KdfParams;
use crate::repo::lock::Lock;
use crate::repo::write_only::{self, WriterAdded};
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// One key slot (`key list --json` prints an array of these).
#[derive(Serialize)]
#[serde(untagged)]
pub enum KeyEntry {
    Slot {
        id: String,
        /// The slot this repository handle was opened with.
        current: bool,
        kind: String,
        created: DateTime<Utc>,
        hostname: String,
        username: String,
    },
    /// A slot that cannot be decoded, with why.
    Damaged {
        id: String,
        current: bool,
        damaged: String,
    },
}

/// The key slots; a damaged one is also a warning.
pub fn list(repo: &Repository) -> Result<Vec<KeyEntry>> {
    Ok(repo
        .list_keys()?
        .into_iter()
        .map(|k| match k.slot {
            Ok(s) => KeyEntry::Slot {
                current: k.name == repo.key_name,
                id: k.name,
                kind: s.kind,
                created: s.created,
                hostname: s.hostname,
                username: s.username,
            },
            Err(e) => {
                repo.events().warn(&format!(
                    "key slot {} is damaged ({e}); remove it with `coffer key remove {}`",
                    k.name,
                    short_name(&k.name)
                ));
                KeyEntry::Damaged {
                    id: k.name,
                    current: false,
                    damaged: e,
                }
            }
        })
        .collect())
}

impl std::fmt::Display for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyEntry::Slot {
                id,
                current,
                kind,
                created,
                hostname,
                username,
            } => write!(
                f,
                "{} {:<8} {:<10} {username}@{hostname} {}",
                if *current { "*" } else { " " },
                short_name(id),
                kind,
                created.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            KeyEntry::Damaged { id, damaged, .. } => {
                write!(f, "  {:<8} damaged: {damaged}", short_name(id))
            }
        }
    }
}

/// Add a key slot for `passphrase`; returns its name.
pub fn add(repo: &Repository, passphrase: &[u8]) -> Result<String> {
    repo.add_key(passphrase, KdfParams::default())
}

/// Add a write-only key slot for `passphrase` (upgrading the repository under an exclusive
/// lock when it is the first; see [`write_only`]).
pub fn add_write_only(repo: &Arc<Repository>, passphrase: &[u8]) -> Result<WriterAdded> {
    repo.require_full("key add --write-only")?;
    let lock = Lock::exclusive(repo, "key add --write-only")?;
    write_only::add_writer(&lock, passphrase, KdfParams::default())
}

impl std::fmt::Display for WriterAdded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.upgraded {
            writeln!(
                f,
                "the repository now takes write-only keys ({} object(s) sealed again under its meta key)",
                self.resealed
            )?;
        } else if self.resealed > 0 {
            writeln!(
                f,
                "finished an interrupted upgrade: {} object(s) sealed again",
                self.resealed
            )?;
        }
        write!(
            f,
            "added write-only key {}: it can back up, push WAL, list snapshots and forget; \
             restore, dump, wal-fetch, drill, check and prune need a passphrase key",
            short_name(&self.key)
        )
    }
}

/// Remove the key slot named by `prefix`; returns its name.
pub fn remove(repo: &Repository, prefix: &str) -> Result<String> {
    repo.remove_key(prefix)
}

/// Replace the slot in use by one for `passphrase`; returns the new slot's name.
pub fn passwd(repo: Arc<Repository>, passphrase: &[u8]) -> Result<String> {
    let mut repo = Arc::try_unwrap(repo).map_err(|_| anyhow::anyhow!("repository in use"))?;
    repo.change_passphrase(passphrase, KdfParams::default())
}
