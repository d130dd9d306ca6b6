//! The writer's local tree cache.
//!
//! A write-only key cannot open the trees of earlier snapshots, its own included, so on its
//! own every backup would read and chunk every file again. A backup made with a writer key
//! therefore also keeps the trees it stores on this host, in
//! `$COFFER_CACHE/<repository id>/trees-<root tree id>`, each one sealed under a key derived
//! from the writer's meta key ([`Keys::local_cache`]). The next backup of the same paths
//! takes the newest snapshot as its parent (snapshot headers are readable with a writer key)
//! and reads that snapshot's trees from here, so files whose size, times and inode match are
//! not read again.
//!
//! Losing or damaging the cache costs time, never data: a tree that is missing, does not
//! open or does not hash to its id is treated as absent (the files below it are read again),
//! and a file is skipped only when every content id of its cached node is in the
//! repository's index, exactly as for a parent read from the repository.
//!
//! File: `"coffer tree cache 1\n"`, then one record per tree: its id (32 bytes), the length
//! of the sealed part (u32 LE), and `seal(zstd(tree JSON))`. It is written to a temporary
//! name while the backup runs and renamed into place, synced, once the snapshot is saved;
//! then the cache files the backup read its parent from are removed (the new one replaces
//! them). A crash leaves the old cache, or a temporary file that a later backup removes.

use crate::repo::crypto::{Cipher, Keys};
use crate::repo::id::Id;
use crate::repo::tree::{self, Tree};
use crate::repo::Repository;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

const MAGIC: &[u8; 20] = b"coffer tree cache 1\n";
const TEMP_PREFIX: &str = ".trees.tmp-";
/// Temporary files older than this are left by a crashed backup and removed.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);

/// One cache file opened for reading: where each tree's record is.
struct CachedTrees {
    path: PathBuf,
    file: File,
    records: HashMap<Id, (u64, u32)>,
}

impl CachedTrees {
    /// The cache file at `path`; `None` when there is none (or it is not a cache file).
    fn open(path: PathBuf) -> io::Result<Option<CachedTrees>> {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let mut magic = [0u8; 20];
        if file.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Ok(None);
        }
        let mut records = HashMap::new();
        let mut r = io::BufReader::new(&mut file);
        let mut at = MAGIC.len() as u64;
        let mut head = [0u8; 36];
        while at + 36 <= len {
            r.read_exact(&mut head)?;
            let id = Id(head[..32].try_into().unwrap());
            let n = u32::from_le_bytes(head[32..].try_into().unwrap());
            at += 36;
            if at + u64::from(n) > len {
                break;
            }
            records.insert(id, (at, n));
            r.seek_relative(i64::from(n))?;
            at += u64::from(n);
        }
        drop(r);
        Ok(Some(CachedTrees {
            path,
            file,
            records,
        }))
    }

    /// The tree `id`, when this file holds it and it opens, decompresses and hashes to `id`.
    fn get(&self, id: &Id, keys: &Keys, cipher: &Cipher) -> Option<Tree> {
        let &(at, n) = self.records.get(id)?;
        let mut sealed = vec![0u8; n as usize];
        self.file.read_exact_at(&mut sealed, at).ok()?;
        let compressed = cipher.open_in_place(&mut sealed).ok()?;
        let mut json = Vec::new();
        zstd::stream::read::Decoder::new(compressed)
            .ok()?
            .take(tree::MAX_TREE_BYTES as u64 + 1)
            .read_to_end(&mut json)
            .ok()?;
        if json.len() > tree::MAX_TREE_BYTES || keys.blob_id(&json) != *id {
            return None;
        }
        tree::decode(&json, id).ok()
    }
}

/// The new cache file being written.
struct Output {
    tmp: PathBuf,
    w: BufWriter<File>,
    written: HashSet<Id>,
}

/// A writer session's cache: the files it reads its parent trees from, and the one it writes.
pub struct TreeCache {
    dir: PathBuf,
    cipher: Cipher,
    read: Mutex<Vec<CachedTrees>>,
    out: Option<Output>,
    /// Why the new cache is not written (reported once the backup is done).
    failed: Option<String>,
}

impl std::fmt::Debug for TreeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeCache").field("dir", &self.dir).finish()
    }
}

impl TreeCache {
    /// The cache of `repo` on this host, for a session with a writer key. Never fails: a
    /// cache that cannot be written is reported by [`TreeCache::persist`].
    pub fn start(repo: &Repository) -> TreeCache {
        let cipher = repo.keys.local_cache();
        let Some(root) = super::cache::root() else {
            return TreeCache {
                dir: PathBuf::new(),
                cipher,
                read: Mutex::default(),
                out: None,
                failed: Some(
                    "no cache: --no-cache, or neither COFFER_CACHE, XDG_CACHE_HOME nor HOME is set"
                        .into(),
                ),
            };
        };
        let dir = root.join(repo.config.id.to_hex());
        let (out, failed) = match Self::create(&dir) {
            Ok(o) => (Some(o), None),
            Err(e) => (
                None,
                Some(format!("cannot write in {}: {e}", dir.display())),
            ),
        };
        TreeCache {
            dir,
            cipher,
            read: Mutex::default(),
            out,
            failed,
        }
    }

    fn create(dir: &Path) -> io::Result<Output> {
        crate::fsutil::create_dir_all(dir, 0o700)?;
        remove_stale_temps(dir);
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            Id::random().short()
        ));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(MAGIC)?;
        Ok(Output {
            tmp,
            w,
            written: HashSet::new(),
        })
    }

    fn file_of(&self, root: &Id) -> PathBuf {
        self.dir.join(format!("trees-{}", root.to_hex()))
    }

    /// A tree of the parent snapshot, when the cache has it. The first lookup of a snapshot's
    /// root tree opens that snapshot's cache file.
    pub fn get(&self, id: &Id, keys: &Keys) -> Option<Tree> {
        if self.dir.as_os_str().is_empty() {
            return None;
        }
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = read.iter().find_map(|c| c.get(id, keys, &self.cipher)) {
            return Some(t);
        }
        if let Ok(Some(c)) = CachedTrees::open(self.file_of(id)) {
            let t = c.get(id, keys, &self.cipher);
            read.push(c);
            return t;
        }
        None
    }

    /// Record a tree this session stored (`json`: its plaintext, which hashes to `id`).
    pub fn add(&mut self, id: &Id, json: &[u8]) {
        let Some(out) = &mut self.out else { return };
        if !out.written.insert(*id) {
            return;
        }
        let sealed = match zstd::bulk::compress(json, 1) {
            Ok(c) => self.cipher.seal(&c),
            Err(e) => return self.fail(e),
        };
        let res = (|| {
            out.w.write_all(&id.0)?;
            out.w.write_all(&(sealed.len() as u32).to_le_bytes())?;
            out.w.write_all(&sealed)
        })();
        if let Err(e) = res {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        if let Some(out) = self.out.take() {
            let _ = fs::remove_file(&out.tmp);
        }
        self.failed = Some(format!("cannot write in {}: {e}", self.dir.display()));
    }

    /// Once the snapshot whose root tree is `root` is saved: make the new cache durable under
    /// its name, then remove the ones it replaces. An error is only worth a warning: the
    /// next backup reads every file again.
    pub fn persist(mut self, root: &Id) -> Result<(), String> {
        let Some(out) = self.out.take() else {
            return Err(self.failed.take().unwrap_or_default());
        };
        let dest = self.file_of(root);
        let res = (|| {
            let f = out.w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            fs::rename(&out.tmp, &dest)?;
            crate::fsutil::sync_dir(&self.dir)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&out.tmp);
            return Err(format!("cannot write {}: {e}", dest.display()));
        }
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        for c in read.iter().filter(|c| c.path != dest) {
            let _ = fs::remove_file(&c.path);
        }
        Ok(())
    }
}

impl Drop for TreeCache {
    /// A session that ends without a snapshot leaves no temporary file behind.
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            let _ = fs::remove_file(&out.tmp);
        }
    }
}

/// Remove temporary files of backups that crashed (older than [`STALE_TEMP`]).
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > STALE_TEMP));
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}
