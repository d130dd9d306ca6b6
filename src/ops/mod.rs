//! Operations: one module per user-visible operation, on the sources and the engine.
//!
//! Each takes typed options and returns a typed report that serializes to what `--json`
//! prints (README.md lists the fields; `tests/docs.rs` holds the lists against these
//! types) and displays as the human-readable summary. The CLI parses arguments, calls an
//! operation and prints its report; a long-running service calls the same functions.
//! Repositories are opened through [`access::Access`] (location, configuration file and
//! passphrase sources).

pub mod access;
pub mod backup;
pub mod check;
pub mod copy;
pub mod drill;
pub mod dump;
pub mod forget;
pub mod hooks;
pub mod key;
pub mod ls;
pub mod prune;
pub mod restore;
pub mod restore_stack;
pub mod snapshots;
pub mod stack;
pub mod status;
pub mod unlock;
pub mod wal_copy;
pub mod wal_fetch;
pub mod wal_hold;
pub mod wal_push;
pub mod wal_verify;

/// Bytes for people: MiB, or GiB from 1 GiB on.
pub fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// The first 8 characters of an object name from a listing (the whole name if shorter:
/// names in storage are not ours to trust).
pub fn short_name(name: &str) -> &str {
    name.get(..8).unwrap_or(name)
}

/// Times in reports as RFC 3339 with a numeric offset (`DateTime::to_rfc3339`).
pub(crate) fn rfc3339<S: serde::Serializer>(
    t: &chrono::DateTime<chrono::FixedOffset>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}
