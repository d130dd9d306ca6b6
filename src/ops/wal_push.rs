//! `wal-push`: PostgreSQL's `archive_command`.

use super::access::Access;
use crate::sources::postgres::wal::push;
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
/// ahead. A file already archived ahead needs no repository (no key derivation).
pub fn wal_push(access: &Access, path: &Path, jobs: usize) -> Result<PushReport> {
    let files = if push::take_marker(path) {
        None
    } else {
        Some(push::push_with_ahead(&*access.open()?, path, jobs)?)
    };
    Ok(PushReport {
        path: path.to_path_buf(),
        files,
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
