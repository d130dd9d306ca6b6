//! coffer — backup and recovery for a whole application stack.
//!
//! The library is built in layers; the code of each uses only the layers below it:
//!
//! ```text
//!   CLI        src/main.rs, src/cli/     parse arguments, call an operation, print its report
//!   service    service::{daemon, units}   coffer run: schedules the operations; unit files
//!   ops        ops::{access, backup, restore, dump, snapshots, ls, check, forget, prune,
//!                    key, unlock, wal_push, wal_fetch, wal_verify, wal_hold}
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
//! * [`ops`] — the operations, on the sources and the engine: one module per user-visible
//!   operation, each taking typed options and returning a typed, serializable report (what
//!   `--json` prints; its `Display` is the human-readable summary). [`ops::access`] opens a
//!   repository from its location, the configuration file and the passphrase sources.
//!   Everything the CLI does beyond parsing and printing is here, for a long-running
//!   service to call as well.
//! * [`service`] — `coffer run`, on the operations: the scheduler ([`service::daemon`]) that
//!   runs each declared source's backups and the repository jobs on time, without overlap,
//!   catching up missed runs from the repository, and stops within a grace (through
//!   [`cancel`]) or reloads its config on a signal; its alerts ([`service::alerts`]); and
//!   `coffer generate`'s units for
//!   systemd, cron and Kubernetes ([`service::units`]).
//! * The `coffer` binary (`src/main.rs`, `src/cli/`), on top: it parses arguments, calls an
//!   operation, renders its events (a bar on a terminal, log lines otherwise) and prints its
//!   report.
//!
//! Beside the layers, used by them: [`error`] (the error kinds behind the exit codes),
//! [`progress`] (events: operations print nothing; they report progress, notes and
//! warnings, through one channel, to the [`progress::Observer`] their caller gives), [`redact`] (`Debug` without secrets), [`config`] (the
//! configuration file, read by [`ops::access`]), and two file-system helpers: [`safefs`]
//! (writing below a directory without following symbolic links; used by restore to disk,
//! PITR and `dump --out`) and [`fsutil`] (durable creation of files and directories; used
//! by the local backend and [`ops::access`]).
//!
//! The on-disk format and its crash stories are in `docs/FORMAT.md`.

pub mod backend;
pub mod cancel;
pub mod config;
pub mod error;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod ops;
pub mod progress;
pub mod redact;
pub mod repo;
pub mod safefs;
pub mod service;
pub mod sources;

pub use error::{Error, ErrorKind};
pub use repo::id::Id;
