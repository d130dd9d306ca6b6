//! The record of a physical base backup, shared by what makes base backups
//! ([`super::physical`]) and what reads them ([`super::pitr`], [`super::wal::verify`],
//! [`super::wal::retention`]): the layout of the snapshot, the [`BaseBackupInfo`] its
//! source carries (of kind [`Kind::PostgresPhysical`]), and the recovery config file that a
//! restored data directory holds (and later base backups leave out).
//!
//! A snapshot holds a base backup when one of its sources is of that kind, whatever the
//! snapshot's own kind: every reader finds base backups by their source ([`base_backups`]).

use super::wal::archive::{parse_lsn, valid_segment_size};
use crate::repo::snapshot::{Kind, Snapshot};
use crate::sources::{sources_of, Metadata};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// The data directory in a base backup snapshot.
pub const PGDATA: &str = "pgdata";
/// Tablespace directories, by OID.
pub const TABLESPACES: &str = "tablespaces";

/// What a base backup's [`SourceInfo`](crate::repo::snapshot::SourceInfo) records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseBackupInfo {
    pub server: String,
    pub server_version: String,
    pub server_version_num: u32,
    /// pg_control's system identifier (decimal string).
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// The first and last WAL segment the backup needs.
    pub start_wal: String,
    pub stop_wal: String,
    pub wal_segment_size: u32,
    pub data_directory: String,
    pub label: String,
    /// Just before `pg_backup_start`, and once `pg_backup_stop` returned.
    pub started_at: DateTime<FixedOffset>,
    pub stopped_at: DateTime<FixedOffset>,
    #[serde(default)]
    pub tablespaces: Vec<TablespaceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TablespaceInfo {
    pub oid: u32,
    pub name: String,
    pub location: String,
}

impl BaseBackupInfo {
    pub fn start(&self) -> u64 {
        parse_lsn(&self.start_lsn).unwrap_or(0)
    }
    pub fn stop(&self) -> u64 {
        parse_lsn(&self.stop_lsn).unwrap_or(0)
    }
}

impl Metadata for BaseBackupInfo {
    const KIND: Kind = Kind::PostgresPhysical;

    fn validate(&self) -> std::result::Result<(), String> {
        // Segment arithmetic divides by the size: a record with an impossible one is
        // unreadable, as a malformed one is.
        if valid_segment_size(self.wal_segment_size) {
            Ok(())
        } else {
            Err(format!(
                "wal_segment_size {} is not a WAL segment size",
                self.wal_segment_size
            ))
        }
    }
}

/// The base backups a snapshot holds (none, for most kinds); a record that cannot be read
/// is an integrity error naming the snapshot.
pub fn base_backups(snap: &Snapshot) -> Result<Vec<BaseBackupInfo>> {
    Ok(sources_of::<BaseBackupInfo>(snap)?
        .into_iter()
        .map(|(_, info)| info)
        .collect())
}

/// The (first) base backup a snapshot holds, if it holds one.
pub fn base_backup_info(snap: &Snapshot) -> Result<Option<BaseBackupInfo>> {
    Ok(base_backups(snap)?.into_iter().next())
}

/// The recovery config file coffer writes into a restored data directory.
pub const RECOVERY_CONFIG: &str = "coffer-recovery.toml";
