//! Storage backends: where the repository's objects live.
//!
//! A backend stores whole, immutable objects under names chosen by the engine. Writes are
//! durable when `write` returns (the local backend fsyncs the file and its directory; S3
//! acknowledges a PUT only once stored). Nothing is renamed or appended in place on object
//! storage, so any S3-compatible service works.

mod local;
pub mod s3;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Settings};

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::sync::Arc;

/// The kinds of object in a repository, each in its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `config` — the sealed repository configuration (one object).
    Config,
    /// `keys/` — key slots wrapping the master key.
    Key,
    /// `data/xx/` — pack files (`xx` = first two hex digits of the name).
    Pack,
    /// `index/` — index files listing the blobs of packs.
    Index,
    /// `snapshots/` — snapshot manifests.
    Snapshot,
    /// `locks/` — lock objects.
    Lock,
    /// `wal/` — the PostgreSQL WAL archive: one object per archived file, named by the
    /// file (segments under `wal/<timeline and log id>/`).
    Wal,
    /// `wal/holds/` — holds on archived WAL that retention must keep (a recovery in
    /// progress); created on first use.
    WalHold,
    /// `runs/` — the run history: one small sealed record per backup run of a declared
    /// source, success or failure; created on first use.
    Run,
}

impl FileKind {
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Key => "keys",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
            FileKind::Wal => "wal",
            FileKind::WalHold => "wal/holds",
            FileKind::Run => "runs",
        }
    }

    /// The object's path relative to the repository root.
    pub fn path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".to_string(),
            // `get`, not slicing: a name from a listing may be short or not ASCII.
            FileKind::Pack => format!("data/{}/{}", name.get(..2).unwrap_or(name), name),
            _ => format!("{}/{}", self.dir(), name),
        }
    }

    pub const ALL_DIRS: [FileKind; 8] = [
        FileKind::Key,
        FileKind::Pack,
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Wal,
        FileKind::WalHold,
        FileKind::Run,
    ];
}

/// An object's name and size as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    /// When the object was written (file mtime, S3 `LastModified`), when the storage says.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// An object written piece by piece to a temporary place and named only when complete
/// (local storage), so a pack in progress holds no memory. Dropped without
/// [`commit`](Spool::commit), it leaves nothing behind.
pub trait Spool: Send {
    fn append(&mut self, data: &[u8]) -> Result<()>;
    /// Make the object durable under its name, as [`Backend::write`] would.
    fn commit(self: Box<Self>, kind: FileKind, name: &str) -> Result<()>;
}

/// The operations the engine needs from storage.
pub trait Backend: Send + Sync {
    /// A human-readable location, for messages.
    fn location(&self) -> String;
    /// Create the folder layout (a no-op on object storage).
    fn create(&self) -> Result<()>;
    /// Store an object durably. Objects are immutable: writing an existing name with the
    /// same bytes is allowed (content-named objects), different bytes never happen.
    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// Store an object given as consecutive parts (a pack without concatenating it).
    fn write_parts(&self, kind: FileKind, name: &str, parts: Vec<Vec<u8>>) -> Result<()> {
        self.write(kind, name, &parts.concat())
    }
    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Read `out.len()` bytes at `offset` into the caller's buffer (reused across reads).
    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let data = self.read_range(kind, name, offset, out.len() as u64)?;
        if data.len() != out.len() {
            return Err(Error::integrity(format!(
                "{} is shorter than the index says (truncated pack)",
                kind.path(name)
            ))
            .into());
        }
        out.copy_from_slice(&data);
        Ok(())
    }
    /// Size of an object, or `None` when it does not exist.
    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>>;
    fn list(&self, kind: FileKind) -> Result<Vec<Listed>>;
    fn remove(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Remove partial objects left by interrupted writes in data/, index/ and snapshots/
    /// (only called under an exclusive lock). Object stores have none: a PUT is atomic.
    fn remove_partial(&self) -> Result<usize> {
        Ok(0)
    }
    /// Whether [`spool`](Backend::spool) is available.
    fn spools(&self) -> bool {
        false
    }
    /// Start an object of this kind whose name is known only at the end.
    fn spool(&self, kind: FileKind) -> Result<Box<dyn Spool>> {
        let _ = kind;
        Err(anyhow::anyhow!("{} cannot spool objects", self.location()))
    }
    /// How many writes to run at once.
    fn concurrency(&self) -> usize {
        2
    }
    /// Whether the objects are on this host's own disk, where reading one costs what reading
    /// a cached copy would (the local cache then keeps only the index; see `repo::cache`).
    fn is_local(&self) -> bool {
        false
    }
}

/// Open the backend for a repository location: a path, or `s3://bucket/prefix` (reached
/// with `s3`, which the environment overrides).
pub fn open(location: &str, s3: &S3Settings) -> Result<Arc<dyn Backend>> {
    open_resolved(location, &s3.resolve())
}

/// [`open`] with S3 settings used as given (already resolved, or a named repository's own).
pub fn open_resolved(location: &str, s3: &S3Settings) -> Result<Arc<dyn Backend>> {
    if let Some(rest) = location.strip_prefix("s3://") {
        Ok(Arc::new(S3Backend::open(rest, s3)?))
    } else if location.contains("://") {
        Err(Error::usage(format!(
            "unsupported repository location {location:?}: use a local path or s3://bucket/prefix"
        ))
        .into())
    } else {
        Ok(Arc::new(LocalBackend::new(location)))
    }
}

/// An error for an object that does not exist.
pub fn not_found(kind: FileKind, name: &str) -> anyhow::Error {
    Error::new(
        ErrorKind::NotFound,
        format!("{} does not exist", kind.path(name)),
    )
    .into()
}

/// True when the error chain says the object does not exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    crate::error::kind_of(e) == ErrorKind::NotFound
}
