//! `wal-hold`: list and release the holds on archived WAL.

use crate::repo::Repository;
use crate::sources::postgres::wal::hold::{self, Listed};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// One hold (`wal-hold list --json` prints an array of these).
#[derive(Serialize)]
#[serde(untagged)]
pub enum HoldEntry {
    Hold {
        id: String,
        purpose: String,
        host: String,
        start_wal: String,
        snapshot: Option<String>,
        created: DateTime<FixedOffset>,
        refreshed: DateTime<FixedOffset>,
        expires: Option<DateTime<FixedOffset>>,
        expired: bool,
    },
    /// A hold that cannot be read, with why.
    Unreadable { id: String, error: String },
}

pub fn list(repo: &Repository) -> Result<Vec<HoldEntry>> {
    let now = chrono::Local::now().fixed_offset();
    Ok(hold::list(repo)?
        .into_iter()
        .map(|l| match l {
            Listed::Hold(h) => HoldEntry::Hold {
                expires: h.expires(),
                expired: h.expired(now),
                id: h.id,
                purpose: h.purpose,
                host: h.host,
                start_wal: h.start_wal,
                snapshot: h.snapshot,
                created: h.created,
                refreshed: h.refreshed,
            },
            Listed::Unreadable { id, error } => HoldEntry::Unreadable { id, error },
        })
        .collect())
}

impl std::fmt::Display for HoldEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HoldEntry::Hold {
                id,
                purpose,
                host,
                start_wal,
                refreshed,
                expires,
                expired,
                ..
            } => write!(
                f,
                "{id}  from {start_wal}  {purpose} on {host}  last used {}  {} {}",
                refreshed.to_rfc3339(),
                if *expired { "expired" } else { "expires" },
                expires
                    .map(|e| e.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            ),
            HoldEntry::Unreadable { id, error } => write!(f, "{id}  unreadable: {error}"),
        }
    }
}

/// Release the hold named by `prefix`; returns its id.
pub fn release(repo: &Repository, prefix: &str) -> Result<String> {
    let id = hold::find(repo, prefix)?;
    hold::release(repo, &id)?;
    Ok(id)
}
