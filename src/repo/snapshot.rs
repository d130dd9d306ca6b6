//! Snapshots: the manifest that makes a backup visible.
//!
//! A snapshot is written last, after every pack and index file it depends on is durable.
//! Its name is the BLAKE3 hash of its stored bytes (or, for one resealed by the upgrade to
//! write-only slots, the name recorded inside it).
//!
//! In a repository with write-only slots, the sources' metadata (database and table names,
//! row counts, Redis facts, command details; base-backup records excepted) and the exclude
//! patterns are sealed as content ([`SealedPart`]): a writer lists and forgets snapshots
//! without seeing them.

use super::crypto::{b64opt, b64vec, compress, Keys, Sealer};
use super::features::Features;
use super::id::Id;
use crate::error::{Error, ErrorKind};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! kinds {
    ($($(#[$doc:meta])* $id:ident = $name:literal;)*) => {
        /// The kind of a snapshot, and of each source in it, stored as its name. A snapshot
        /// made by one source has that source's kind; some kinds only name sources
        /// (`postgres-globals`), and a snapshot of several sources will have a kind of its
        /// own. A name this coffer does not know (a newer coffer's) reads as
        /// [`Kind::Unknown`]: listed as it is, refused ([`Kind::known`]) where it must be
        /// understood.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($(#[$doc])* $id,)*
            Unknown(String),
        }

        impl Kind {
            /// The stored name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Kind::$id => $name,)*
                    Kind::Unknown(s) => s,
                }
            }

            fn from_name(name: &str) -> Kind {
                match name {
                    $($name => Kind::$id,)*
                    other => Kind::Unknown(other.to_string()),
                }
            }
        }
    };
}

kinds! {
    /// Directory trees (`backup PATH…`).
    Files = "files";
    /// A byte stream (`backup --stdin`).
    Stream = "stream";
    /// PostgreSQL logical dumps: a snapshot of them, and each database's dump in it.
    Postgres = "postgres";
    /// The `pg_dumpall --globals-only` script beside the dumps (a source only).
    PostgresGlobals = "postgres-globals";
    /// A PostgreSQL physical base backup: a snapshot of one, and its source.
    PostgresPhysical = "postgres-physical";
    /// A Redis (or Valkey) RDB (`backup --redis`): a snapshot of one, and its source.
    Redis = "redis";
    /// A command's output (`backup --command`): its standard output or the files it wrote.
    Command = "command";
}

impl Kind {
    /// This kind, or (exit 2) "needs a newer coffer" when this coffer does not know it;
    /// `what` names the object (`snapshot 1a2b3c4d`).
    pub fn known(&self, what: &str) -> Result<&Kind> {
        match self {
            Kind::Unknown(name) => Err(Error::new(
                ErrorKind::NeedsNewer,
                format!(
                    "{what} is of kind {name:?}, which this coffer ({}) does not know: it needs \
                     a newer coffer",
                    env!("CARGO_PKG_VERSION")
                ),
            )
            .into()),
            known => Ok(known),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Kind, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        Ok(Kind::from_name(&name))
    }
}

/// One source that contributed to a snapshot (a directory tree, a stream, a database…),
/// with its metadata (LSNs, row counts, versions…): stored as JSON, typed by the source
/// that wrote it (see `sources::Metadata`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    pub kind: Kind,
    pub name: String,
    /// Where the source's data sits in the snapshot's tree.
    pub path: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub blobs_added: u64,
    /// Plaintext bytes of blobs not already in the repository.
    pub bytes_added: u64,
    /// Bytes written to storage for those blobs (compressed and sealed).
    pub bytes_stored: u64,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The storage name; not part of the stored JSON.
    #[serde(skip)]
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub kind: Kind,
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Total bytes of the files and streams in the snapshot.
    pub size: u64,
    #[serde(default)]
    pub excludes: Vec<String>,
    #[serde(default)]
    pub sources: Vec<SourceInfo>,
    #[serde(default)]
    pub summary: Summary,
    pub program_version: String,
    /// The format features a reader must know to read this snapshot (see
    /// [`features`](super::features)); none in snapshots that use only the base format.
    #[serde(default, skip_serializing_if = "Features::is_empty")]
    pub requires: Features,
    /// The declared source (`[sources.NAME]`) this snapshot backs up, for backups of the
    /// stack; none for ad-hoc backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The id shared by every snapshot of one `coffer backup` run of the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// For a copy (`coffer copy`): the id of the snapshot it was first copied from, in the
    /// repository that backup wrote (a copy of a copy keeps the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// Write-only repositories: the metadata a writer must not read, sealed as content
    /// (opened into `excludes` and `sources` when the snapshot is read with the full key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedPart>,
    /// The name the snapshot is stored under, when that is not the hash of its bytes: a
    /// snapshot sealed again by the upgrade to write-only slots keeps its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_as: Option<Id>,
}

/// The sealed part of a snapshot: `seal(encode(JSON {excludes, metadata}))` under the
/// content key of `ephemeral` (none: the encryption key), where `metadata` has one entry
/// per source, `null` for those whose metadata stays in the header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SealedPart {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64opt")]
    pub ephemeral: Option<[u8; 32]>,
    #[serde(with = "b64vec")]
    pub data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Hidden {
    excludes: Vec<String>,
    metadata: Vec<Option<serde_json::Value>>,
}

/// The name recorded in a snapshot's JSON (`stored_as`), if any.
pub(crate) fn stored_as(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct StoredAs {
        stored_as: Option<Id>,
    }
    serde_json::from_slice::<StoredAs>(json)
        .ok()?
        .stored_as
        .map(|id| id.to_hex())
}

impl Snapshot {
    /// Move what a writer must not read into the sealed part, sealed with `sealer`.
    /// Base-backup records stay in the header: a writer's `forget` keeps the WAL archive in
    /// step with the base backups it keeps, from their LSNs.
    pub fn seal_part(&mut self, sealer: &Sealer) -> Result<()> {
        let metadata = self
            .sources
            .iter_mut()
            .map(|s| {
                (s.kind != Kind::PostgresPhysical)
                    .then(|| std::mem::take(&mut s.metadata))
                    .filter(|m| !m.is_null())
            })
            .collect();
        let hidden = Hidden {
            excludes: std::mem::take(&mut self.excludes),
            metadata,
        };
        let enc = compress::Compressor::new(1).encode(&serde_json::to_vec(&hidden)?);
        self.sealed = Some(SealedPart {
            ephemeral: sealer.ephemeral(),
            data: sealer.seal_encoded(enc),
        });
        Ok(())
    }

    /// Put the sealed part back into `excludes` and `sources` (a full key); a writer's keys
    /// leave the snapshot as it is.
    pub fn open_part(&mut self, keys: &Keys) -> Result<()> {
        let Some(part) = &self.sealed else {
            return Ok(());
        };
        if keys.is_writer() {
            return Ok(());
        }
        let damaged = |e: String| {
            Error::integrity(format!(
                "the sealed part of snapshot {} cannot be read: {e}",
                self.id.short()
            ))
        };
        let key = keys.reader(part.ephemeral.as_ref(), "reading a snapshot")?;
        let plain = key.open(&part.data).map_err(|e| damaged(e.to_string()))?;
        let json = compress::decode(&plain).map_err(|e| damaged(e.to_string()))?;
        let hidden: Hidden = serde_json::from_slice(&json).map_err(|e| damaged(e.to_string()))?;
        if hidden.metadata.len() != self.sources.len() {
            return Err(damaged("it does not match the snapshot's sources".into()).into());
        }
        for (s, m) in self.sources.iter_mut().zip(hidden.metadata) {
            if let Some(m) = m {
                s.metadata = m;
            }
        }
        self.excludes = hidden.excludes;
        self.sealed = None;
        Ok(())
    }

    pub fn has_tag(&self, t: &str) -> bool {
        self.tags.iter().any(|x| x == t)
    }

    /// Fail (exit 2) when this snapshot needs a feature this coffer does not know.
    pub fn check_features(&self) -> Result<()> {
        self.requires
            .check(&format!("snapshot {}", self.id.short()))
    }

    /// Its kind, or (exit 2) "needs a newer coffer" when this coffer does not know it.
    pub fn known_kind(&self) -> Result<&Kind> {
        self.kind.known(&format!("snapshot {}", self.id.short()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_and_write_as_their_names() {
        for (kind, name) in [
            (Kind::Files, "files"),
            (Kind::Stream, "stream"),
            (Kind::Postgres, "postgres"),
            (Kind::PostgresGlobals, "postgres-globals"),
            (Kind::PostgresPhysical, "postgres-physical"),
            (Kind::Command, "command"),
            (Kind::Unknown("stack".into()), "stack"),
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("{name:?}"));
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
        }
        assert_eq!(format!("{:<8}|", Kind::Files), "files   |");
    }

    #[test]
    fn stored_snapshots_read_back_byte_for_byte() {
        // Snapshots as coffer wrote them before kinds were typed, one of a kind it does not
        // know: each reads and writes back as the same bytes (and so keeps its id).
        for kind in ["files", "stream", "postgres", "postgres-physical", "stack"] {
            let stored = format!(
                r#"{{"time":"2024-05-01T02:00:00+02:00","hostname":"h","username":"u","tags":[],"paths":["/x"],"kind":"{kind}","tree":"{zero}","size":5,"excludes":[],"sources":[{{"kind":"{kind}","name":"x","path":"/x","metadata":{{"a":1,"b":[2]}}}},{{"kind":"postgres-globals","name":"globals","path":"/postgres/globals.sql"}}],"summary":{{"files_new":1,"files_changed":0,"files_unchanged":0,"dirs":0,"blobs_added":1,"bytes_added":5,"bytes_stored":9,"duration_secs":0.5}},"program_version":"coffer 0.1.0"}}"#,
                zero = "0".repeat(64)
            );
            let snap: Snapshot = serde_json::from_str(&stored).unwrap();
            assert_eq!(snap.kind.as_str(), kind);
            assert_eq!(snap.sources[1].kind, Kind::PostgresGlobals);
            assert_eq!(serde_json::to_string(&snap).unwrap(), stored);
        }
    }

    #[test]
    fn an_unknown_kind_needs_a_newer_coffer() {
        assert_eq!(Kind::Files.known("x").unwrap(), &Kind::Files);
        let e = Kind::Unknown("stack".into())
            .known("snapshot 1a2b3c4d")
            .unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::NeedsNewer);
        assert!(
            e.to_string()
                .starts_with(r#"snapshot 1a2b3c4d is of kind "stack", which this coffer"#),
            "{e}"
        );
    }
}
