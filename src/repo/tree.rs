//! Trees: the directory structure of a snapshot, stored as deduplicated blobs.
//!
//! A tree blob is the JSON of one directory's entries sorted by name. Its id is the keyed
//! hash of that JSON, so an unchanged directory produces the same tree blob and costs
//! nothing in the next backup.

use super::id::Id;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// A byte string from the file system (a name or a symlink target). Stored as a JSON
/// string when it is UTF-8, else as NUL followed by base64 (NUL cannot occur in names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OsBytes(pub Vec<u8>);

impl OsBytes {
    pub fn from_os(s: &OsStr) -> Self {
        OsBytes(s.as_bytes().to_vec())
    }
    pub fn to_os(&self) -> OsString {
        OsString::from_vec(self.0.clone())
    }
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl Serialize for OsBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(v) if !v.starts_with('\0') => s.serialize_str(v),
            _ => {
                use base64::Engine;
                let enc = base64::engine::general_purpose::STANDARD.encode(&self.0);
                s.serialize_str(&format!("\0{enc}"))
            }
        }
    }
}

impl<'de> Deserialize<'de> for OsBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if let Some(enc) = v.strip_prefix('\0') {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(enc)
                .map(OsBytes)
                .map_err(serde::de::Error::custom)
        } else {
            Ok(OsBytes(v.into_bytes()))
        }
    }
}

/// Whether `name` can be an entry of a tree: restore writes it as one path component under
/// its target, so it must be non-empty, not `.` or `..`, and hold no `/` or NUL.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

/// The largest tree blob (one directory's entries as JSON) coffer writes or reads: about a
/// million entries. A bound on what a damaged or forged index can make coffer allocate.
pub const MAX_TREE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    /// Bytes from a stream (stdin, a database dump, a command's output); restored as a file.
    Stream,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: OsBytes,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits (and setuid/setgid/sticky), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch (negative before 1970). An
    /// i128: a file system's seconds times 10^9 overflow i64 past the year 2262; in JSON it is
    /// the same integer as before for every time that fits.
    pub mtime_ns: i128,
    /// Change detection for the next backup (ctime and inode; the device is informative).
    #[serde(default)]
    pub ctime_ns: i128,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub device: u64,
    #[serde(default)]
    pub size: u64,
    /// Chunk ids of a file or stream, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<OsBytes>,
}

/// Nanoseconds since the epoch from a file system's seconds and nanoseconds, exact for every
/// time the file system can hold.
pub fn epoch_ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// The inverse of [`epoch_ns`]: whole seconds (floor) and the nanoseconds after them. Saturates
/// for values no file system can hold (a damaged tree), instead of wrapping.
pub fn split_epoch_ns(ns: i128) -> (i64, u32) {
    let secs = ns.div_euclid(1_000_000_000);
    let nsec = ns.rem_euclid(1_000_000_000) as u32;
    match i64::try_from(secs) {
        Ok(s) => (s, nsec),
        Err(_) if secs < 0 => (i64::MIN, 0),
        Err(_) => (i64::MAX, 999_999_999),
    }
}

impl Node {
    pub fn stream(name: &str, size: u64, content: Vec<Id>, mtime_ns: i64) -> Node {
        Node {
            name: OsBytes(name.as_bytes().to_vec()),
            kind: NodeKind::Stream,
            mode: 0o600,
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
            mtime_ns: mtime_ns.into(),
            ctime_ns: 0,
            inode: 0,
            device: 0,
            size,
            content,
            subtree: None,
            target: None,
        }
    }

    /// A directory made by coffer itself (not from a file system), holding `subtree`.
    pub fn dir(name: &str, subtree: Id, mtime_ns: i64) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode: 0o700,
            subtree: Some(subtree),
            ..Node::stream(name, 0, Vec::new(), mtime_ns)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn sort(&mut self) {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Decode tree blob `id`. An entry of a kind this coffer does not know is a tree written
/// by a newer coffer: that is an error of its own (exit 2, naming the kind), not damage.
pub fn decode(data: &[u8], id: &Id) -> anyhow::Result<Tree> {
    serde_json::from_slice(data).map_err(|e| {
        // Only on failure: look again at just the kinds, to tell "newer" from "damaged".
        #[derive(Deserialize)]
        struct Kinds {
            nodes: Vec<KindOnly>,
        }
        #[derive(Deserialize)]
        struct KindOnly {
            #[serde(rename = "type")]
            kind: String,
        }
        let known = |k: &str| serde_json::from_value::<NodeKind>(k.into()).is_ok();
        if let Ok(k) = serde_json::from_slice::<Kinds>(data) {
            if let Some(n) = k.nodes.iter().find(|n| !known(&n.kind)) {
                return crate::repo::features::unknown_node_kind(&id.short(), &n.kind);
            }
        }
        crate::error::Error::integrity(format!("tree {} is malformed: {e}", id.short())).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_before_1970_and_after_2262() {
        for (secs, nsec) in [
            (0i64, 0i64),
            (-1, 999_999_999),
            (-315_619_200, 123_456_789), // 1960
            (10_413_792_000, 1),         // 2300
            (i64::MAX, 999_999_999),
            (i64::MIN, 0),
        ] {
            let ns = epoch_ns(secs, nsec);
            assert_eq!(split_epoch_ns(ns), (secs, nsec as u32));
            let mut n = Node::stream("f", 0, vec![], 0);
            n.mtime_ns = ns;
            let j = serde_json::to_vec(&n).unwrap();
            assert_eq!(serde_json::from_slice::<Node>(&j).unwrap().mtime_ns, ns);
        }
        // What older trees hold reads as before.
        let old = br#"{"name":"f","type":"file","mode":420,"uid":0,"gid":0,"mtime_ns":1700000000123456789}"#;
        let n: Node = serde_json::from_slice(old).unwrap();
        assert_eq!(n.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(split_epoch_ns(i128::MAX).0, i64::MAX);
    }

    #[test]
    fn an_unknown_node_kind_is_a_newer_format_not_damage() {
        let id = Id::default();
        let ok =
            r#"{"nodes":[{"name":"a","type":"file","mode":420,"uid":0,"gid":0,"mtime_ns":0}]}"#;
        assert_eq!(decode(ok.as_bytes(), &id).unwrap().nodes.len(), 1);
        let newer = ok.replace(r#""type":"file""#, r#""type":"redis""#);
        let e = decode(newer.as_bytes(), &id).unwrap_err();
        assert_eq!(
            crate::error::kind_of(&e),
            crate::error::ErrorKind::NeedsNewer,
            "{e}"
        );
        assert!(e.to_string().contains(r#"kind "redis""#), "{e}");
        let damaged = ok.replace(r#""mode":420"#, r#""mode":"x""#);
        let e = decode(damaged.as_bytes(), &id).unwrap_err();
        assert_eq!(
            crate::error::kind_of(&e),
            crate::error::ErrorKind::Integrity,
            "{e}"
        );
    }
    #[test]
    fn odd_names_round_trip() {
        for name in [
            b"plain".to_vec(),
            vec![0xff, 0xfe, b'x'],
            b"\n\t \\\"".to_vec(),
        ] {
            let n = OsBytes(name.clone());
            let j = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<OsBytes>(&j).unwrap().0, name);
        }
    }
}
