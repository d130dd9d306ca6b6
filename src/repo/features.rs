//! Forward compatibility: the features a reader must know to read an object.
//!
//! The repository config has a `features` set, every snapshot a `requires` set and the WAL
//! archive record (`wal/archive`) a `requires` set. Each maps a feature's name to the
//! coffer version that introduced it, so that a coffer meeting a name it does not know
//! can say which version to upgrade to: it refuses the object (exit 2, "this snapshot
//! needs coffer >= X (feature Y)") instead of misreading it, deleting data it does not
//! know is used, or calling it damaged. Objects written before these sets existed have
//! none (empty: readable by every coffer).
//!
//! Where each set is checked:
//! - the config's `features` when the repository is opened (every command);
//! - a snapshot's `requires` when it is chosen to be read (restore, dump, ls: by
//!   [`find_snapshot`](super::Repository::find_snapshot) and the other ways of picking
//!   one), and for every snapshot before `forget`, `prune` and `check` plan anything
//!   ([`load_snapshots_strict`](super::Repository::load_snapshots_strict));
//! - the WAL archive record's `requires` whenever it is read.
//!
//! A tree node of an unknown kind is the same failure found one level down
//! ([`super::tree::decode`]).
//!
//! Adding a format feature is one line in the table below, plus the code that writes
//! it into the objects that use it.

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A feature this coffer knows: its name in stored objects and the version that
/// introduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub since: &'static str,
}

macro_rules! features {
    ($($(#[$doc:meta])* $id:ident = $name:literal since $since:literal;)*) => {
        $($(#[$doc])* pub const $id: Feature = Feature { name: $name, since: $since };)*
        /// Every feature this coffer can read.
        pub const KNOWN: &[Feature] = &[$($id),*];
    };
}

features! {
    /// A PostgreSQL dump split into several streams (`--dump-jobs`): the largest tables'
    /// data is in `/postgres/DB.data/NN.dump`, which the main stream leaves out. A reader
    /// that restores only the main stream loses that data without an error.
    SPLIT_DUMP = "postgres-split-dump" since "0.1.0";
    /// A PostgreSQL physical base backup (`/pgdata`, `/tablespaces`), restored with
    /// `restore --pgdata` and kept in step with the WAL archive by `forget`.
    PHYSICAL = "postgres-physical" since "0.1.0";
    /// The WAL archive under `wal/` (`wal-push`/`wal-fetch`), whose files `forget`
    /// removes by the base backups it keeps.
    WAL_ARCHIVE = "wal-archive" since "0.1.0";
    /// A Redis RDB at `/redis/dump.rdb` (`backup --redis`), restored into a running server
    /// with `restore --to-redis`.
    REDIS_RDB = "redis-rdb" since "0.1.0";
    /// A command's output at `/NAME` (`backup --command`): a stream or a directory that a
    /// restore hands to a command or writes out, described by the snapshot's `command`
    /// source.
    COMMAND_OUTPUT = "command-output" since "0.1.0";
    /// Write-only key slots (repository config): metadata is sealed under the meta key,
    /// what writers store under keys agreed with the config's recipient key (FORMAT.md,
    /// section 3). A coffer that does not know it would misread every object.
    WRITE_ONLY = "write-only" since "0.1.0";
}

/// A set of features (name → the coffer version that introduced it), as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Features(BTreeMap<String, String>);

impl Features {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn insert(&mut self, f: Feature) {
        self.0.insert(f.name.to_string(), f.since.to_string());
    }

    pub fn with(mut self, f: Feature) -> Features {
        self.insert(f);
        self
    }

    pub fn contains(&self, f: Feature) -> bool {
        self.0.contains_key(f.name)
    }

    /// The first feature (name, version) this coffer does not know.
    pub fn unknown(&self) -> Option<(&str, &str)> {
        self.0
            .iter()
            .find(|(name, _)| !KNOWN.iter().any(|k| k.name == name.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Fail (exit 2) when `what` needs a feature this coffer does not know.
    pub fn check(&self, what: &str) -> Result<()> {
        match self.unknown() {
            None => Ok(()),
            Some((name, since)) => Err(needs_newer(what, since, name)),
        }
    }
}

fn needs_newer(what: &str, since: &str, name: &str) -> anyhow::Error {
    // The strings come from an authenticated object, but a newer coffer's, not ours:
    // shown escaped, never as terminal control characters.
    let clean = |s: &str| s.escape_debug().to_string();
    Error::new(
        ErrorKind::NeedsNewer,
        format!(
            "{what} needs coffer >= {} (feature {}); this is coffer {}: upgrade coffer to use it",
            clean(since),
            clean(name),
            env!("CARGO_PKG_VERSION")
        ),
    )
    .into()
}

/// A tree node of a kind this coffer does not know: written by a newer coffer.
pub fn unknown_node_kind(tree: &str, kind: &str) -> anyhow::Error {
    Error::new(
        ErrorKind::NeedsNewer,
        format!(
            "tree {tree} holds an entry of kind {kind:?}, which this coffer ({}) does not know: \
             it needs a newer coffer (feature node-kind-{})",
            env!("CARGO_PKG_VERSION"),
            kind.escape_debug()
        ),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_features_pass_and_unknown_ones_name_the_version() {
        let f = Features::default().with(SPLIT_DUMP).with(PHYSICAL);
        f.check("snapshot x").unwrap();
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(
            j,
            r#"{"postgres-physical":"0.1.0","postgres-split-dump":"0.1.0"}"#
        );
        let f: Features =
            serde_json::from_str(r#"{"postgres-split-dump":"0.1.0","redis":"0.9.0"}"#).unwrap();
        let e = f.check("this snapshot").unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::NeedsNewer);
        assert_eq!(crate::error::kind_of(&e).exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("this snapshot needs coffer >= 0.9.0 (feature redis)"),
            "{e}"
        );
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in KNOWN.iter().enumerate() {
            assert!(KNOWN[i + 1..].iter().all(|b| b.name != a.name), "{a:?}");
        }
    }
}
