//! `wal-fetch`: PostgreSQL's `restore_command`.

use super::access::Access;
use crate::repo::Repository;
use crate::sources::postgres::wal::{fetch, hold};
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
pub struct FetchReport {
    pub name: String,
    /// Written to the destination; false when the archive does not hold it.
    pub found: bool,
}

/// Fetch archived file `name` to `dest`, with `prefetch` following segments ahead, and
/// refresh the WAL hold `hold` of the recovery this serves. A segment prefetched by an
/// earlier call needs no repository (no key derivation).
pub fn wal_fetch(
    access: &Access,
    name: &str,
    dest: &Path,
    prefetch: usize,
    hold: Option<&str>,
) -> Result<FetchReport> {
    let found = if fetch::take_prefetched(name, dest, access.events())? {
        refresh_hold(access, dest, hold, None);
        true
    } else {
        let repo = access.open()?;
        repo.require_full("wal-fetch")?;
        let fetched = fetch::fetch(&repo, name, dest, prefetch);
        refresh_hold(access, dest, hold, Some(&repo));
        matches!(fetched?, fetch::Fetched::Written)
    };
    Ok(FetchReport {
        name: name.to_string(),
        found,
    })
}

/// Refresh the WAL hold of the recovery this `wal-fetch` serves, when the last refresh is
/// old enough. Failures are warnings, not errors: the file asked for was fetched (or its
/// absence established) correctly, and failing the fetch would stop a recovery that can
/// succeed, for the sake of protection against a `forget` that may never come.
fn refresh_hold(access: &Access, dest: &Path, id: Option<&str>, repo: Option<&Repository>) {
    let Some(id) = id else {
        return;
    };
    let events = access.events();
    let stamp = hold::stamp_path(&fetch::prefetch_dir(dest), id);
    if !hold::refresh_due(&stamp) {
        return;
    }
    let opened;
    let repo = match repo {
        Some(r) => r,
        None => match access.open() {
            Ok(r) => {
                opened = r;
                &opened
            }
            Err(e) => {
                events.warn(&format!("cannot refresh WAL hold {id}: {e:#}"));
                return;
            }
        },
    };
    match hold::refresh(repo, id) {
        Ok(Some(_)) => {}
        Ok(None) => events.warn(&format!(
            "WAL hold {id} no longer exists (released, or expired and removed by forget): \
             forget may remove WAL this recovery still needs"
        )),
        Err(e) => events.warn(&format!("cannot refresh WAL hold {id}: {e:#}")),
    }
    if let Err(e) = hold::touch(&stamp) {
        events.warn(&format!("{e:#}"));
    }
}
