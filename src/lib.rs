//! coffer — backup and recovery for a whole application stack.
//!
//! The crate is split the way the data flows:
//!
//! * [`backend`] — where bytes live: a local directory or S3-compatible object storage
//!   (through OpenDAL). Backends store immutable, content-named objects; nothing is renamed
//!   or appended on object storage.
//! * [`crypto`] — the master key, keyed BLAKE3 blob identifiers, XChaCha20-Poly1305 sealing.
//! * [`repo`] — the repository engine: key slots, packs, index, trees, snapshots, locks,
//!   check, prune and the retention policy.
//! * [`sources`] — what gets backed up: directory trees, byte streams (stdin), PostgreSQL
//!   logical dumps and restores (`sources::postgres`), and the WAL archive behind
//!   `archive_command`/`restore_command` (`sources::wal`); later Redis and command output.
//! * [`restore`] — writing a snapshot back to disk, verifying every byte it writes.
//!
//! The `coffer` binary (`src/main.rs`, `src/cli/`) only parses arguments, calls into this
//! library and prints. The on-disk format and its crash stories are in `docs/FORMAT.md`.

pub mod backend;
pub mod config;
pub mod error;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod progress;
pub mod redact;
pub mod repo;
pub mod safefs;
pub mod sources;

pub use error::{Error, ErrorKind};
pub use repo::id::Id;
