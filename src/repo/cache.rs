//! The local metadata cache.
//!
//! Every command lists the repository and reads what it needs of it: the index files, the
//! snapshots, and the trees of the snapshots it walks. On S3 each of those is a request, and
//! parsing a large index costs seconds. This cache keeps copies on this host, in
//! `<root>/<repository id>/` (the root is `$COFFER_CACHE`, else `$XDG_CACHE_HOME/coffer`,
//! else `~/.cache/coffer`; directories 0700, files 0600):
//!
//! - `index/<name>`: each index file a command loaded, decoded into a compact binary form and
//!   sealed under the local cache key (HKDF of the repository's meta key). This is what makes
//!   opening a large index fast, on every backend.
//! - `snapshots/<name>`: snapshot objects, byte for byte as stored (remote repositories only).
//! - `trees/<ab>/<id>`: tree blobs, sealed as in their pack (remote repositories only).
//!
//! On a local repository only the index is kept: reading a snapshot or a tree from the
//! repository costs what reading it from the cache would.
//!
//! **Why the cache never shows a repository state that is not there.**
//! 1. It is asked only for objects the command has just found in the repository itself:
//!    index files and snapshots by the names the repository's listing gives, trees once the
//!    index built from that listing holds them. A snapshot forgotten elsewhere, or an index
//!    file that a prune elsewhere replaced, is not listed, so its copy is never read; it is
//!    deleted at that listing.
//! 2. An object never changes under its name: index files and snapshots are named by the
//!    hash of their bytes, trees by the keyed hash of their content. A copy is used only
//!    after the checks the repository's own copy gets (a snapshot's name and authentication,
//!    a tree's keyed id) or, for an index record, authentication under the cache key with
//!    the name sealed inside. A copy that fails them is deleted and the object read from the
//!    repository.
//!
//! `check` never reads the cache: it judges the repository's own copies.
//!
//! Files are written to a temporary name and renamed into place, without a sync: after a
//! crash a cache file is whole, absent, or fails its checks, and each of those costs at most
//! a read from the repository. Deleting the cache at any time is safe (`coffer cache clean`).

use crate::repo::crypto::Cipher;
use crate::repo::id::Id;
use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::pack::{BlobType, PackEntry};
use serde::Serialize;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turn the local caches off for this process (`--no-cache`): nothing is read from them or
/// written to them, the writers' tree cache included.
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Where the caches live: `$COFFER_CACHE`, else `$XDG_CACHE_HOME/coffer`, else
/// `~/.cache/coffer`. None with `--no-cache`, and in the library's unit tests, which must
/// not write in the home of whoever runs them (the integration tests set `COFFER_CACHE`).
pub fn root() -> Option<PathBuf> {
    if cfg!(test) || DISABLED.load(Ordering::Relaxed) {
        return None;
    }
    configured_root()
}

/// The cache root the environment names, even with `--no-cache` (for `coffer cache clean`).
pub fn configured_root() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(c) = var("COFFER_CACHE") {
        return Some(PathBuf::from(c));
    }
    if let Some(x) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("coffer"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache/coffer"))
}

const INDEX_MAGIC: &[u8; 21] = b"coffer index cache 1\n";
const TEMP_PREFIX: &str = ".tmp-";
/// Temporary files older than this were left by a crash and are removed.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);
/// Cached trees that the index no longer holds are looked for at most this often.
const TREE_SWEEP: Duration = Duration::from_secs(24 * 3600);
const TREE_SWEEP_MARK: &str = ".trees-swept";

/// What a cache directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Snapshot,
    Tree,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Snapshot => "snapshots",
            Kind::Tree => "trees",
        }
    }
}

/// One repository's cache on this host.
pub struct Cache {
    dir: PathBuf,
    cipher: Cipher,
    /// Whether snapshots and trees are kept too (remote repositories).
    objects: bool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .field("objects", &self.objects)
            .finish()
    }
}

impl Cache {
    /// The cache in `dir`, sealing index records under `cipher`.
    pub fn new(dir: PathBuf, cipher: Cipher, objects: bool) -> Cache {
        Cache {
            dir,
            cipher,
            objects,
        }
    }

    /// The cache of repository `id` under [`root`], if caching is on.
    pub fn for_repository(id: &Id, cipher: Cipher, objects: bool) -> Option<Cache> {
        root().map(|r| Cache::new(r.join(id.to_hex()), cipher, objects))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether snapshots and trees are kept (not only the index).
    pub fn keeps_objects(&self) -> bool {
        self.objects
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        match kind {
            Kind::Tree => self
                .dir
                .join("trees")
                .join(name.get(..2).unwrap_or(name))
                .join(name),
            _ => self.dir.join(kind.dir()).join(name),
        }
    }

    /// The cached bytes of an object, unchecked (the caller checks them as it would the
    /// repository's).
    pub fn get(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path(kind, name)).ok()
    }

    /// Keep a copy of an object.
    pub fn put(&self, kind: Kind, name: &str, data: &[u8]) -> io::Result<()> {
        write_file(&self.path(kind, name), &[data])
    }

    /// Forget a copy (one that failed its checks, or an object removed from the repository).
    pub fn remove(&self, kind: Kind, name: &str) {
        let _ = fs::remove_file(self.path(kind, name));
    }

    /// Remove the copies of `kind` whose names the repository no longer lists (and
    /// temporary files left by a crash); files not named like objects are not the cache's
    /// and stay.
    pub fn retain(&self, kind: Kind, listed: &HashSet<&str>) {
        let Ok(rd) = fs::read_dir(self.dir.join(kind.dir())) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TEMP_PREFIX) {
                remove_if_stale(&e.path());
            } else if name.parse::<Id>().is_ok() && !listed.contains(name.as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// An index file's cached record, when there is one that opens and was made for `name`.
    /// A record that does not is removed.
    pub fn index_file(&self, name: &Id) -> Option<IndexFile> {
        let hex = name.to_hex();
        let mut buf = self.get(Kind::Index, &hex)?;
        let decoded = buf
            .strip_prefix(INDEX_MAGIC.as_slice())
            .map(|b| b.len())
            .and_then(|n| {
                let at = buf.len() - n;
                self.cipher.open_in_place(&mut buf[at..]).ok()
            })
            .and_then(|plain| decode_index(plain, name));
        if decoded.is_none() {
            self.remove(Kind::Index, &hex);
        }
        decoded
    }

    /// At most how many blobs the cached record of index file `name` lists (from its size),
    /// when there is one.
    pub fn index_blobs_at_most(&self, name: &str) -> Option<u64> {
        let len = fs::metadata(self.path(Kind::Index, name)).ok()?.len();
        Some(len / BLOB_BYTES as u64)
    }

    /// Keep an index file as a record of the cache.
    pub fn put_index_file(&self, name: &Id, file: &IndexFile) -> io::Result<()> {
        let sealed = self.cipher.seal(&encode_index(name, file));
        write_file(
            &self.path(Kind::Index, &name.to_hex()),
            &[INDEX_MAGIC, &sealed],
        )
    }

    /// Remove the cached trees for which `keep` is false, at most once a day: a tree stays
    /// cached after its snapshots are forgotten until then, unread.
    pub fn sweep_trees(&self, keep: impl Fn(&Id) -> bool) {
        if !self.objects {
            return;
        }
        let mark = self.dir.join(TREE_SWEEP_MARK);
        let recent = fs::metadata(&mark)
            .and_then(|m| m.modified())
            .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < TREE_SWEEP);
        if recent {
            return;
        }
        let Ok(shards) = fs::read_dir(self.dir.join("trees")) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(rd) = fs::read_dir(shard.path()) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TEMP_PREFIX) {
                    remove_if_stale(&e.path());
                } else if name.parse::<Id>().is_ok_and(|id| !keep(&id)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let _ = write_file(&mark, &[b""]);
    }
}

/// Write `parts` to `path` through a temporary name in the same directory (made 0700 when
/// missing), as a 0600 file; not synced (see the module's crash story).
fn write_file(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::fsutil::create_dirs(dir, 0o700)?;
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        Id::random().short()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn remove_if_stale(path: &Path) {
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|d| d > STALE_TEMP)
        });
    if old {
        let _ = fs::remove_file(path);
    }
}

/// Bytes per blob in an index record: id, type, offset, sealed and plain length.
const BLOB_BYTES: usize = 32 + 1 + 4 + 4 + 4;

/// An index file as a record: its name, then per pack its id, size, ephemeral key (a flag
/// byte, then 32 bytes when set) and blobs; integers little-endian.
fn encode_index(name: &Id, file: &IndexFile) -> Vec<u8> {
    let size: usize = file
        .packs
        .iter()
        .map(|p| 32 + 8 + 1 + 32 + 4 + p.blobs.len() * BLOB_BYTES)
        .sum();
    let mut out = Vec::with_capacity(32 + 4 + size);
    out.extend_from_slice(&name.0);
    out.extend_from_slice(&(file.packs.len() as u32).to_le_bytes());
    for p in &file.packs {
        out.extend_from_slice(&p.id.0);
        out.extend_from_slice(&p.size.to_le_bytes());
        match &p.ephemeral {
            Some(e) => {
                out.push(1);
                out.extend_from_slice(e);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            out.extend_from_slice(&b.id.0);
            out.push(match b.tpe {
                BlobType::Data => 0,
                BlobType::Tree => 1,
            });
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&b.length.to_le_bytes());
            out.extend_from_slice(&b.raw_length.to_le_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().unwrap())
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
}

/// The index file in a record, when the record is whole and was made for `name`.
fn decode_index(b: &[u8], name: &Id) -> Option<IndexFile> {
    let mut r = Reader(b);
    if r.array::<32>()? != name.0 {
        return None;
    }
    let count = r.u32()? as usize;
    // Each pack takes at least 45 bytes: a count cannot ask for more room than the record has.
    let mut packs = Vec::with_capacity(count.min(r.0.len() / 45));
    for _ in 0..count {
        let id = Id(r.array()?);
        let size = u64::from_le_bytes(r.array()?);
        let ephemeral = match r.take(1)?[0] {
            0 => None,
            1 => Some(r.array::<32>()?),
            _ => return None,
        };
        let n = r.u32()? as usize;
        let raw = r.take(n.checked_mul(BLOB_BYTES)?)?;
        let mut blobs = Vec::with_capacity(n);
        for e in raw.chunks_exact(BLOB_BYTES) {
            let u = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().unwrap());
            blobs.push(PackEntry {
                id: Id(e[..32].try_into().unwrap()),
                tpe: match e[32] {
                    0 => BlobType::Data,
                    1 => BlobType::Tree,
                    _ => return None,
                },
                offset: u(33),
                length: u(37),
                raw_length: u(41),
            });
        }
        packs.push(IndexPack {
            id,
            size,
            blobs,
            ephemeral,
        });
    }
    r.0.is_empty().then_some(IndexFile { packs })
}

/// What `coffer cache clean` removed.
#[derive(Debug, Clone, Serialize)]
pub struct CleanReport {
    /// The cache root looked at (absent when no location is configured).
    pub root: Option<String>,
    /// Repository caches removed (their repository ids).
    pub repositories: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

impl std::fmt::Display for CleanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(root) = &self.root else {
            return f.write_str(
                "no cache location: none of COFFER_CACHE, XDG_CACHE_HOME and HOME is set",
            );
        };
        write!(
            f,
            "removed the local cache of {} repositor{} in {root}: {} files, {}",
            self.repositories.len(),
            if self.repositories.len() == 1 {
                "y"
            } else {
                "ies"
            },
            self.files,
            crate::ops::mib(self.bytes)
        )
    }
}

/// Remove every repository's cache under the cache root (`coffer cache clean`). Only what
/// coffer writes there is removed: directories named by a repository id, and within them
/// the cache's own files; anything else is left, so a root set by mistake to a directory of
/// other files loses none of them.
pub fn clean() -> io::Result<CleanReport> {
    let mut report = CleanReport {
        root: None,
        repositories: Vec::new(),
        files: 0,
        bytes: 0,
    };
    let Some(root) = configured_root() else {
        return Ok(report);
    };
    report.root = Some(root.display().to_string());
    let rd = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<Id>().is_err() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        clean_repository(&e.path(), &mut report)?;
        report.repositories.push(name);
    }
    report.repositories.sort();
    Ok(report)
}

/// Is `name` a file the caches write directly in a repository's directory?
fn own_top_file(name: &str) -> bool {
    name.starts_with("trees-")
        || name.starts_with(".trees.tmp-")
        || name.starts_with(TEMP_PREFIX)
        || name == TREE_SWEEP_MARK
}

fn clean_repository(dir: &Path, report: &mut CleanReport) -> io::Result<()> {
    let mut remove = |p: &Path| -> io::Result<()> {
        let len = fs::symlink_metadata(p)?.len();
        fs::remove_file(p)?;
        report.files += 1;
        report.bytes += len;
        Ok(())
    };
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir && own_top_file(&name) {
            remove(&e.path())?;
            continue;
        }
        let nested = match name.as_str() {
            "index" | "snapshots" => false,
            "trees" => true,
            _ => continue,
        };
        if !is_dir {
            continue;
        }
        let shards: Vec<PathBuf> = if nested {
            fs::read_dir(e.path())?
                .flatten()
                .filter(|s| s.file_type().is_ok_and(|t| t.is_dir()))
                .map(|s| s.path())
                .collect()
        } else {
            vec![e.path()]
        };
        for shard in &shards {
            for f in fs::read_dir(shard)?.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if f.file_type().is_ok_and(|t| t.is_file())
                    && (n.parse::<Id>().is_ok() || n.starts_with(TEMP_PREFIX))
                {
                    remove(&f.path())?;
                }
            }
            if nested {
                let _ = fs::remove_dir(shard);
            }
        }
        let _ = fs::remove_dir(e.path());
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path) -> Cache {
        Cache::new(dir.join("c"), Cipher::from_bytes(rand::random()), true)
    }

    fn file() -> IndexFile {
        let blob = |i: u32, tpe| PackEntry {
            id: Id::random(),
            tpe,
            offset: i * 100,
            length: 100,
            raw_length: 80 + i,
        };
        IndexFile {
            packs: vec![
                IndexPack {
                    id: Id::random(),
                    size: 1 << 33,
                    blobs: vec![blob(0, BlobType::Data), blob(1, BlobType::Tree)],
                    ephemeral: None,
                },
                IndexPack {
                    id: Id::random(),
                    size: 7,
                    blobs: vec![],
                    ephemeral: Some([9; 32]),
                },
            ],
        }
    }

    fn same(a: &IndexFile, b: &IndexFile) -> bool {
        serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
    }

    #[test]
    fn an_index_record_reads_back_only_under_its_own_name_and_key() {
        let t = tempfile::tempdir().unwrap();
        let c = cache(t.path());
        let (name, f) = (Id::random(), file());
        c.put_index_file(&name, &f).unwrap();
        assert!(same(&c.index_file(&name).unwrap(), &f));
        let path = c.path(Kind::Index, &name.to_hex());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );

        // A record copied under another name is refused and removed.
        let other = Id::random();
        fs::copy(&path, c.path(Kind::Index, &other.to_hex())).unwrap();
        assert!(c.index_file(&other).is_none());
        assert!(!c.path(Kind::Index, &other.to_hex()).exists());

        // Another key (another repository's cache) opens nothing.
        let stranger = Cache::new(t.path().join("c"), Cipher::from_bytes(rand::random()), true);
        assert!(stranger.index_file(&name).is_none());

        // A flipped bit or a cut record is refused.
        c.put_index_file(&name, &f).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(c.index_file(&name).is_none());
        c.put_index_file(&name, &f).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(c.index_file(&name).is_none());
    }

    #[test]
    fn a_record_that_authenticates_but_is_malformed_is_refused() {
        let (name, f) = (Id::random(), file());
        let good = encode_index(&name, &f);
        assert!(same(&decode_index(&good, &name).unwrap(), &f));
        for cut in [0, 10, 36, good.len() - 1] {
            assert!(decode_index(&good[..cut], &name).is_none(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(decode_index(&long, &name).is_none());
        let mut huge = good.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_index(&huge, &name).is_none());
    }

    #[test]
    fn retain_keeps_what_is_listed_and_clean_removes_only_the_caches_own_files() {
        let t = tempfile::tempdir().unwrap();
        let c = cache(t.path());
        let (a, b) = (Id::random().to_hex(), Id::random().to_hex());
        c.put(Kind::Snapshot, &a, b"a").unwrap();
        c.put(Kind::Snapshot, &b, b"b").unwrap();
        c.put(Kind::Tree, &a, b"tree").unwrap();
        c.retain(Kind::Snapshot, &HashSet::from([a.as_str()]));
        assert_eq!(c.get(Kind::Snapshot, &a).as_deref(), Some(&b"a"[..]));
        assert!(c.get(Kind::Snapshot, &b).is_none());

        // The sweep removes trees the index lacks, then rests for a day.
        let kept = Id::random().to_hex();
        c.put(Kind::Tree, &kept, b"kept").unwrap();
        let keep: Id = kept.parse().unwrap();
        c.sweep_trees(|id| *id == keep);
        assert!(c.get(Kind::Tree, &a).is_none() && c.get(Kind::Tree, &kept).is_some());
        c.put(Kind::Tree, &a, b"tree").unwrap();
        c.sweep_trees(|_| false);
        assert!(c.get(Kind::Tree, &a).is_some());
        drop(c);

        // `clean` (through the root it is given) removes the caches' own files only.
        let root = t.path();
        let repo = root.join(Id::random().to_hex());
        fs::rename(root.join("c"), &repo).unwrap();
        fs::write(repo.join(format!("trees-{}", Id::random().to_hex())), b"x").unwrap();
        fs::write(repo.join("notes.txt"), b"mine").unwrap();
        fs::write(root.join("unrelated"), b"mine too").unwrap();
        let mut report = CleanReport {
            root: None,
            repositories: vec![],
            files: 0,
            bytes: 0,
        };
        clean_repository(&repo, &mut report).unwrap();
        assert_eq!(report.files, 5, "{report:?}");
        assert!(repo.join("notes.txt").exists() && root.join("unrelated").exists());
        assert!(!repo.join("snapshots").exists() && !repo.join("trees").exists());
    }
}
