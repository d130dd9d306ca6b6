//! coffer — backup and recovery for a whole application stack.
//!
//! The library is built in layers; the code of each uses only the layers below it:
//!
//! ```text
//!   CLI        src/main.rs, src/cli/     parse arguments, call the engine and the sources, print
//!   sources    sources::{files, stream, postgres::{…, wal}}
//!   engine     repo::{chunker, crypto, id, keys, pack, index, tree, snapshot, lock,
//!                     saver, restore, check, prune, forget, features}
//!   storage    backend::{local, s3}
//! ```
//!
//! * [`backend`] — storage, at the bottom: where bytes live, a local directory or
//!   S3-compatible object storage (through OpenDAL). Backends store immutable,
//!   content-named objects; nothing is renamed or appended on object storage.
//! * [`repo`] — the repository engine, on the storage: content-defined chunking, the master
//!   key, keyed BLAKE3 blob ids and XChaCha20-Poly1305 sealing, key slots, packs, the
//!   index, trees, snapshots, locks, the blob saver, restore to disk (verifying every byte
//!   it writes), check, prune, the retention policy and the format features. A
//!   [`repo::Repository`] handle holds all the state of one open repository: nothing is
//!   kept in process-global state, so one process may open several.
//! * [`sources`] — what gets backed up, on the engine: directory trees
//!   ([`sources::files`]), byte streams from stdin ([`sources::stream`]) and PostgreSQL
//!   ([`sources::postgres`]: logical dumps and their restores, physical base backups,
//!   point-in-time recovery, and under [`sources::postgres::wal`] the WAL archive behind
//!   `archive_command`/`restore_command`, its verification and retention).
//! * The `coffer` binary (`src/main.rs`, `src/cli/`), on top: it parses arguments, calls
//!   the engine and the sources, and prints.
//!
//! Beside the layers, used by them: [`error`] (the error kinds behind the exit codes),
//! [`progress`] (progress output), [`redact`] (`Debug` without secrets), [`config`] (the
//! configuration file, read by the CLI), and two file-system helpers: [`safefs`] (writing
//! below a directory without following symbolic links; used by restore to disk, PITR and
//! `dump --out`) and [`fsutil`] (durable creation of files and directories; used by the
//! local backend and the CLI).
//!
//! The on-disk format and its crash stories are in `docs/FORMAT.md`.

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
