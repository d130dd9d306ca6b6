//! The PostgreSQL WAL archive: `archive_command` (`coffer wal-push %p`) and
//! `restore_command` (`coffer wal-fetch %f %p`), and what reads the archive as a whole.
//!
//! - [`archive`]: the object format under `wal/`, file names and kinds, segment names and
//!   LSN arithmetic, the segment header, the cluster record `wal/archive`, reading a file.
//! - [`push`]: `wal-push`, with push-ahead of the segments PostgreSQL has marked ready.
//! - [`spool`]: the local spool of the repositories that take WAL asynchronously
//!   (`wal = "async"`), filled by `wal-push` and drained by `wal-copy`.
//! - [`fetch`]: `wal-fetch`, with prefetch of the segments that follow.
//! - [`timeline`]: `.history` files, the archive listed by timeline, the chain of timelines
//!   recovery follows from a base backup, and the walk along it.
//! - [`waldump`]: reading archived WAL with `pg_waldump` (the newest commit time).
//! - [`verify`]: `wal-verify`, the report on every base backup's WAL.
//! - [`retention`]: which WAL no kept base backup needs (`forget`), and removing it.
//! - [`hold`]: holds on WAL taken by recoveries in progress, and the retention horizon.

pub mod archive;
pub mod fetch;
pub mod hold;
pub mod push;
pub mod retention;
pub mod spool;
pub mod timeline;
pub mod verify;
pub mod waldump;

/// A 1 MiB WAL segment (the smallest size) of cluster `sysid`: zeros after its long page
/// header, for the unit tests.
#[cfg(test)]
pub(crate) fn test_segment(sysid: u64) -> Vec<u8> {
    let mut seg = vec![0u8; 1 << 20];
    seg[2..4].copy_from_slice(&2u16.to_le_bytes());
    seg[4..8].copy_from_slice(&1u32.to_le_bytes());
    seg[24..32].copy_from_slice(&sysid.to_le_bytes());
    seg[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
    seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
    seg
}
