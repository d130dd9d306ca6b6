//! The repository engine.
//!
//! Layout (see docs/FORMAT.md for the full description and the crash stories):
//!
//! ```text
//! config              sealed repository configuration (written last by init)
//! keys/<random>       key slots (plaintext JSON wrapping the master key)
//! data/xx/<hash>      pack files
//! index/<hash>        index files
//! snapshots/<hash>    snapshot manifests
//! locks/<hash>        lock objects
//! ```

pub mod cache;
pub mod check;
pub mod chunker;
pub mod crypto;
pub mod features;
pub mod forget;
pub mod id;
pub mod index;
pub mod keys;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod restore;
pub mod runs;
pub mod saver;
pub mod snapshot;
pub mod tree;
pub mod tree_cache;
pub mod verify;
pub mod write_only;

use crate::backend::{self, Backend, FileKind};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use anyhow::{Context, Result};
use crypto::{compress, Keys, MasterKey};
use id::Id;
use index::{IndexFile, MasterIndex};
use keys::{KdfParams, KeyFile, SlotKey};
use pack::BlobType;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use snapshot::Snapshot;
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tree::Tree;

pub const FORMAT_VERSION: u32 = 1;

/// Chunker parameters; part of the sealed config because they decide dedup boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Secret seed mixed into the gear table, so chunk boundaries do not reveal content.
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub version: u32,
    pub id: Id,
    pub chunker: ChunkerParams,
    /// zstd level for new data (0 = no compression).
    pub compression: i32,
    /// Target pack size in bytes.
    pub pack_size: u64,
    /// Format features every coffer that opens the repository must know (see
    /// [`features`]); none so far, and none in repositories made before the set existed.
    #[serde(default, skip_serializing_if = "features::Features::is_empty")]
    pub features: features::Features,
    /// The recipient X25519 public key of a repository with write-only slots (feature
    /// `write-only`): what writers store is sealed to it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crypto::b64opt"
    )]
    pub recipient: Option<[u8; 32]>,
}

impl RepoConfig {
    /// Refuse values this coffer cannot work with (the chunker would assert, a pack could
    /// not be sized) with an error instead of a panic later. The config is authenticated,
    /// so only a bug or someone holding the key can produce such values.
    fn validate(&self) -> std::result::Result<(), String> {
        use fastcdc::v2020 as cdc;
        let c = &self.chunker;
        let chunker_ok = (cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&c.min_size)
            && (cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&c.avg_size)
            && (cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&c.max_size)
            && c.min_size <= c.avg_size
            && c.avg_size <= c.max_size;
        if !chunker_ok {
            return Err(format!(
                "invalid chunker sizes {}/{}/{}",
                c.min_size, c.avg_size, c.max_size
            ));
        }
        if !(1 << 20..=512 << 20).contains(&self.pack_size) {
            return Err(format!(
                "invalid pack size {} (1 to 512 MiB)",
                self.pack_size
            ));
        }
        if !(0..=22).contains(&self.compression) {
            return Err(format!(
                "invalid compression level {} (0 to 22)",
                self.compression
            ));
        }
        Ok(())
    }
}

/// Options for `init`.
#[derive(Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub compression: i32,
    pub pack_size: u64,
    /// Cut and name blobs as this repository does (its chunker parameters and blob-id key;
    /// the encryption key stays the new repository's own): `init --like`, for `copy`.
    pub like: Option<Arc<Repository>>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::default(),
            compression: 3,
            pack_size: 32 << 20,
            like: None,
        }
    }
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }))
}

/// A key slot as listed by [`Repository::list_keys`].
#[derive(Debug)]
pub struct ListedKey {
    pub name: String,
    /// The slot, or why it cannot be decoded.
    pub slot: std::result::Result<KeyFile, String>,
}

/// An open repository: storage plus the unwrapped master key, and the state that belongs
/// to this handle alone (two handles in one process share none of it, even on the same
/// storage).
pub struct Repository {
    pub backend: Arc<dyn Backend>,
    /// The keys this handle holds: the full key, or a writer's (see [`crypto::Keys`]).
    pub keys: Keys,
    pub config: RepoConfig,
    /// The key slot that opened the repository.
    pub key_name: String,
    /// Set when a lock taken through this handle could not be refreshed for too long (see
    /// [`lock::ensure_held`]).
    lock_lost: AtomicBool,
    /// What [`Repository::remember`] keeps, by type.
    remembered: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    /// Where this handle's own warnings go (damaged key slots, lock refreshes, skipped
    /// objects); see [`Repository::events`].
    events: Progress,
    /// This host's copy of the repository's metadata ([`cache`]), unless caching is off.
    cache: Option<cache::Cache>,
    /// How many [`CacheBypass`] guards are alive: while one is, the cache is not used.
    cache_bypass: AtomicUsize,
    /// Set once a cache write failed and that was reported.
    cache_warned: AtomicBool,
}

/// While alive, the handle it came from reads everything from the repository itself (see
/// [`Repository::bypass_cache`]).
pub struct CacheBypass<'a>(&'a Repository);

impl Drop for CacheBypass<'_> {
    fn drop(&mut self) {
        self.0.cache_bypass.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A new local repository in `dir/repo` with a fast key derivation, no compression and
/// 1 MiB packs, for unit tests.
#[cfg(test)]
pub(crate) fn test_repository(dir: &std::path::Path) -> Repository {
    Repository::init(
        Arc::new(crate::backend::LocalBackend::new(dir.join("repo"))),
        b"pw",
        &InitOptions {
            kdf: keys::KdfParams::insecure_for_tests(),
            compression: 0,
            pack_size: 1 << 20,
            like: None,
        },
    )
    .unwrap()
}

impl Repository {
    /// Where this handle reports its warnings: what it was opened with.
    pub fn events(&self) -> &Progress {
        &self.events
    }

    /// Report this handle's warnings to `events` from now on (for a repository just
    /// created).
    pub fn report_to(&mut self, events: &Progress) {
        self.events = events.clone();
    }

    /// Keep `value` for the life of this handle, one per type (a later one replaces it): for
    /// what is read from an object that never changes once written, such as the WAL
    /// archive's cluster record, so that it is read once per handle.
    pub fn remember<T: Any + Send + Sync>(&self, value: T) {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TypeId::of::<T>(), Box::new(value));
    }

    /// What [`Repository::remember`] kept of type `T` on this handle, if anything.
    pub fn remembered<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Whether this repository cuts and names blobs as `other` does (created `init --like`
    /// it, or it `--like` this one): then `copy` moves blobs between them by id.
    pub fn is_like(&self, other: &Repository) -> bool {
        self.config.chunker == other.config.chunker && self.keys.same_blob_ids(&other.keys)
    }

    /// Whether a repository exists at this location (its config object does).
    pub fn exists(backend: &dyn Backend) -> Result<bool> {
        Ok(backend.stat(FileKind::Config, "")?.is_some())
    }

    /// Create a new repository at an empty location.
    pub fn init(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        opts: &InitOptions,
    ) -> Result<Repository> {
        if Repository::exists(&*backend)? {
            return Err(Error::usage(format!(
                "a repository already exists at {}",
                backend.location()
            ))
            .into());
        }
        let mut seed = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
        let (key, chunker) = match &opts.like {
            Some(like) => (MasterKey::generate_like(&like.keys), like.config.chunker),
            None => (
                MasterKey::generate(),
                ChunkerParams {
                    min_size: 256 << 10,
                    avg_size: 1 << 20,
                    max_size: 4 << 20,
                    seed: u64::from_le_bytes(seed) >> 1,
                },
            ),
        };
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: Id::random(),
            chunker,
            compression: opts.compression,
            pack_size: opts.pack_size,
            features: Default::default(),
            recipient: None,
        };
        config.validate().map_err(Error::usage)?;
        backend.create()?;
        let slot = KeyFile::create(passphrase, config.id, &SlotKey::Full(key.clone()), opts.kdf)?;
        let key_name = Id::random().to_hex();
        backend.write(FileKind::Key, &key_name, &serde_json::to_vec_pretty(&slot)?)?;
        let keys = key.keys();
        let cache = Repository::cache_for(&*backend, &config, &keys);
        let repo = Repository {
            backend,
            keys,
            config,
            key_name,
            lock_lost: AtomicBool::new(false),
            remembered: Mutex::default(),
            events: Progress::hidden(),
            cache,
            cache_bypass: AtomicUsize::new(0),
            cache_warned: AtomicBool::new(false),
        };
        // The config object is written last: its presence means "initialised".
        let sealed = repo.seal_json(&repo.config)?;
        repo.backend.write(FileKind::Config, "", &sealed)?;
        Ok(repo)
    }

    /// Open an existing repository with a passphrase; its warnings are not reported (see
    /// [`Repository::open_reporting`]).
    pub fn open(backend: Arc<dyn Backend>, passphrase: &[u8]) -> Result<Repository> {
        Repository::open_reporting(backend, passphrase, &Progress::hidden())
    }

    /// Open an existing repository with a passphrase; the handle's warnings, from opening
    /// on, go to `events`.
    pub fn open_reporting(
        backend: Arc<dyn Backend>,
        passphrase: &[u8],
        events: &Progress,
    ) -> Result<Repository> {
        let config_bytes = match backend.read(FileKind::Config, "") {
            Ok(b) => b,
            Err(e) if backend::is_not_found(&e) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "there is no repository at {} (create one with `coffer init`)",
                        backend.location()
                    ),
                )
                .into())
            }
            Err(e) => return Err(e),
        };
        if passphrase.is_empty() {
            return Err(Error::usage("an empty passphrase is not allowed").into());
        }
        // Slots that cannot be decoded are reported (a warning now, and in the error if no
        // other slot opens), not silently skipped: one of them may be the user's.
        let mut damaged = Vec::new();
        for k in backend.list(FileKind::Key)? {
            let raw = backend.read(FileKind::Key, &k.name)?;
            let slot: KeyFile = match serde_json::from_slice(&raw) {
                Ok(s) => s,
                Err(e) => {
                    events.warn(&format!(
                        "key slot {} is damaged and was skipped: {e}",
                        k.name
                    ));
                    damaged.push(k.name);
                    continue;
                }
            };
            let unwrapped = match slot.unwrap(passphrase) {
                Ok(u) => u,
                Err(e) => {
                    events.warn(&format!(
                        "key slot {} is damaged and was skipped: {e:#}",
                        k.name
                    ));
                    damaged.push(k.name);
                    continue;
                }
            };
            if let Some((rid, key)) = unwrapped {
                // A slot that opens but belongs elsewhere (a stray slot from an interrupted
                // init, a copied file) must not hide the right one: try the next. A full
                // key opens the config of a repository with write-only slots under the
                // meta key it derives.
                let opened = match &key {
                    SlotKey::Full(m) => m
                        .cipher()
                        .open(&config_bytes)
                        .map(|p| (p, m.keys()))
                        .or_else(|_| {
                            let keys = m.write_only_keys(&rid);
                            keys.meta().open(&config_bytes).map(|p| (p, keys))
                        }),
                    SlotKey::Writer(w) => {
                        w.meta().open(&config_bytes).map(|p| (p, w.keys([0; 32])))
                    }
                };
                let Ok((plain, keys)) = opened else {
                    events.warn(&format!(
                        "key slot {} does not belong to this repository; skipped",
                        k.name
                    ));
                    continue;
                };
                let config: RepoConfig = serde_json::from_slice(&compress::decode(&plain)?)
                    .map_err(|e| {
                        Error::integrity(format!("the repository config is malformed: {e}"))
                    })?;
                if config.id != rid {
                    events.warn(&format!(
                        "key slot {} names another repository; skipped",
                        k.name
                    ));
                    continue;
                }
                if config.version != FORMAT_VERSION {
                    return Err(Error::usage(format!(
                        "repository format version {} is not supported by this coffer (knows {})",
                        config.version, FORMAT_VERSION
                    ))
                    .into());
                }
                config.validate().map_err(|e| {
                    Error::integrity(format!("the repository config is damaged: {e}"))
                })?;
                config.features.check("this repository")?;
                let keys = match (&key, config.recipient) {
                    (SlotKey::Writer(w), Some(r)) => w.keys(r),
                    (SlotKey::Full(_), Some(_)) if keys.write_only_repository() => keys,
                    (SlotKey::Full(_), None) if !keys.write_only_repository() => keys,
                    _ => {
                        return Err(Error::integrity(format!(
                            "the repository config does not match key slot {} (a write-only \
                             slot in a repository without a recipient key, or the reverse)",
                            k.name
                        ))
                        .into())
                    }
                };
                let cache = Repository::cache_for(&*backend, &config, &keys);
                return Ok(Repository {
                    backend,
                    keys,
                    config,
                    key_name: k.name,
                    lock_lost: AtomicBool::new(false),
                    remembered: Mutex::default(),
                    events: events.clone(),
                    cache,
                    cache_bypass: AtomicUsize::new(0),
                    cache_warned: AtomicBool::new(false),
                });
            }
        }
        let note = if damaged.is_empty() {
            String::new()
        } else {
            format!(
                " ({} damaged key slot(s) could not be tried: {}; see `coffer key list`)",
                damaged.len(),
                damaged.join(", ")
            )
        };
        Err(Error::new(
            ErrorKind::WrongPassword,
            format!(
                "wrong passphrase: no key of {} opens with it{note}",
                backend.location()
            ),
        )
        .into())
    }

    fn seal_json<T: Serialize>(&self, v: &T) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(v)?;
        let enc = compress::Compressor::new(self.config.compression.max(1)).encode(&json);
        Ok(self.keys.meta().seal_encoded(enc))
    }

    /// Seal and store a JSON object, named by the hash of its stored bytes. A snapshot is
    /// also kept in the local cache, so this host does not read it back.
    pub fn save_json<T: Serialize>(&self, kind: FileKind, v: &T) -> Result<Id> {
        let sealed = self.seal_json(v)?;
        let id = Id::of_bytes(&sealed);
        self.backend.write(kind, &id.to_hex(), &sealed)?;
        if let Some(c) = self.object_cache(kind) {
            self.cache_result(c.put(cache::Kind::Snapshot, &id.to_hex(), &sealed));
        }
        Ok(id)
    }

    /// Remove an index file or a snapshot from the repository, and this host's copy of it.
    pub fn remove_object(&self, kind: FileKind, name: &str) -> Result<()> {
        self.backend.remove(kind, name)?;
        if let Some(c) = &self.cache {
            match kind {
                FileKind::Index => c.remove(cache::Kind::Index, name),
                FileKind::Snapshot => c.remove(cache::Kind::Snapshot, name),
                _ => {}
            }
        }
        Ok(())
    }

    /// Store an index file, and keep it in the local cache.
    pub fn save_index(&self, file: &IndexFile) -> Result<Id> {
        let id = self.save_json(FileKind::Index, file)?;
        if let Some(c) = self.cache() {
            self.cache_result(c.put_index_file(&id, file));
        }
        Ok(id)
    }

    /// Load a sealed JSON object, verifying its name and authenticity. A snapshot comes
    /// from the local cache when it has a copy that passes the same checks.
    pub fn load_json<T: DeserializeOwned>(&self, kind: FileKind, name: &str) -> Result<T> {
        let cached = self.object_cache(kind);
        if let Some(sealed) = cached.and_then(|c| c.get(cache::Kind::Snapshot, name)) {
            match self.decode_json(kind, name, &sealed) {
                Ok(v) => return Ok(v),
                Err(_) => cached.unwrap().remove(cache::Kind::Snapshot, name),
            }
        }
        let sealed = self.backend.read(kind, name)?;
        let v = self.decode_json(kind, name, &sealed)?;
        if let Some(c) = cached {
            self.cache_result(c.put(cache::Kind::Snapshot, name, &sealed));
        }
        Ok(v)
    }

    /// A sealed JSON object's contents, once its name and authenticity are verified.
    fn decode_json<T: DeserializeOwned>(
        &self,
        kind: FileKind,
        name: &str,
        sealed: &[u8],
    ) -> Result<T> {
        let named = kind == FileKind::Lock || Id::of_bytes(sealed).to_hex() == name;
        let json = self.open_json(kind, name, sealed)?;
        let bound =
            kind == FileKind::Snapshot && snapshot::stored_as(&json).as_deref() == Some(name);
        if !(named || bound) {
            return Err(Error::integrity(format!(
                "{} is damaged: its contents do not match its name",
                kind.path(name)
            ))
            .into());
        }
        serde_json::from_slice(&json)
            .map_err(|e| Error::integrity(format!("{} is malformed: {e}", kind.path(name))).into())
    }

    /// The JSON of a sealed metadata object (authenticated, not parsed).
    pub(crate) fn open_json(&self, kind: FileKind, name: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let plain = self
            .keys
            .open_meta(sealed)
            .map_err(|e| Error::integrity(format!("{}: {e}", kind.path(name))))?;
        Ok(compress::decode(&plain)?)
    }

    /// Store a snapshot (in a repository with write-only slots, with its sealed part split
    /// off); returns its name.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        if !self.write_only() {
            return self.save_json(FileKind::Snapshot, snap);
        }
        let mut s = snap.clone();
        s.seal_part(&self.keys.sealer()?)?;
        self.save_json(FileKind::Snapshot, &s)
    }

    /// The master index: every index file the repository lists, read from the local cache
    /// when it has them (and kept there when it did not), several at a time.
    pub fn load_index(&self) -> Result<MasterIndex> {
        let listed = self.backend.list(FileKind::Index)?;
        let names: Vec<Id> = listed.iter().filter_map(|f| f.name.parse().ok()).collect();
        let mut mi = MasterIndex::default();
        // The table is sized once, so that each file's blobs go in as it arrives, while the
        // next ones are read and opened: from the size of a cached record, or else of the
        // stored file (each blob's id is 32 bytes that no compression shrinks).
        let cache = self.cache();
        let room: u64 = listed
            .iter()
            .filter(|f| f.name.parse::<Id>().is_ok())
            .map(|f| {
                cache
                    .and_then(|c| c.index_blobs_at_most(&f.name))
                    .unwrap_or(f.size / 32)
            })
            .sum();
        mi.reserve_blobs(room as usize);
        self.in_order(
            names.len(),
            |i| self.index_file(&names[i]),
            |i, file| {
                mi.add_file(names[i], file?);
                Ok(())
            },
        )?;
        if let Some(c) = self.cache() {
            c.retain(
                cache::Kind::Index,
                &listed.iter().map(|f| f.name.as_str()).collect(),
            );
            c.sweep_trees(|id| mi.blob_type(id) == Some(BlobType::Tree));
        }
        Ok(mi)
    }

    /// One index file, from the local cache or else from the repository.
    fn index_file(&self, name: &Id) -> Result<IndexFile> {
        let cache = self.cache();
        if let Some(f) = cache.and_then(|c| c.index_file(name)) {
            return Ok(f);
        }
        let file: IndexFile = self.load_json(FileKind::Index, &name.to_hex())?;
        if let Some(c) = cache {
            self.cache_result(c.put_index_file(name, &file));
        }
        Ok(file)
    }

    /// Run `work` for `0..n` on a few threads and hand each result to `done` in order, on
    /// this thread; the first error `done` returns ends it (work in flight is dropped).
    pub(crate) fn in_order<T: Send>(
        &self,
        n: usize,
        work: impl Fn(usize) -> T + Sync,
        mut done: impl FnMut(usize, T) -> Result<()>,
    ) -> Result<()> {
        let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
        let threads = self.backend.concurrency().max(cores).clamp(1, 8).min(n);
        if threads <= 1 {
            for i in 0..n {
                done(i, work(i))?;
            }
            return Ok(());
        }
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded(threads * 2);
            for _ in 0..threads {
                let (tx, next, work) = (tx.clone(), &next, &work);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || tx.send((i, work(i))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut waiting = BTreeMap::new();
            let mut want = 0;
            for (i, v) in rx.iter() {
                waiting.insert(i, v);
                while let Some(v) = waiting.remove(&want) {
                    if let Err(e) = done(want, v) {
                        next.store(n, Ordering::Relaxed);
                        return Err(e);
                    }
                    want += 1;
                }
            }
            Ok(())
        })
    }

    /// The cache to use now: none while a [`CacheBypass`] is alive.
    pub fn cache(&self) -> Option<&cache::Cache> {
        self.cache
            .as_ref()
            .filter(|_| self.cache_bypass.load(Ordering::SeqCst) == 0)
    }

    /// The cache, when it keeps objects of `kind` (snapshots; trees go through
    /// [`Repository::tree_cache`]).
    fn object_cache(&self, kind: FileKind) -> Option<&cache::Cache> {
        self.cache()
            .filter(|c| kind == FileKind::Snapshot && c.keeps_objects())
    }

    fn tree_cache(&self) -> Option<&cache::Cache> {
        self.cache().filter(|c| c.keeps_objects())
    }

    /// Read everything from the repository itself while the guard lives (`check`).
    pub fn bypass_cache(&self) -> CacheBypass<'_> {
        self.cache_bypass.fetch_add(1, Ordering::SeqCst);
        CacheBypass(self)
    }

    /// A cache write that failed costs only speed: it is reported once per handle.
    fn cache_result(&self, r: std::io::Result<()>) {
        if let (Err(e), Some(c)) = (r, &self.cache) {
            if !self.cache_warned.swap(true, Ordering::Relaxed) {
                self.events.warn(&format!(
                    "cannot write the local cache in {}: {e} (commands go on without it)",
                    c.dir().display()
                ));
            }
        }
    }

    /// The cache of a repository being opened: the index always, snapshots and trees when
    /// the repository is not on local disk.
    fn cache_for(backend: &dyn Backend, config: &RepoConfig, keys: &Keys) -> Option<cache::Cache> {
        cache::Cache::for_repository(&config.id, keys.local_cache(), !backend.is_local())
    }

    /// All readable snapshots, oldest first; an unreadable one is skipped with a warning
    /// (`check` reports it, prune refuses to run).
    pub fn load_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.load_snapshots_with(false)
    }

    /// All snapshots, failing on any that cannot be read or that needs a feature this
    /// coffer does not know (prune, forget and check decide on every one).
    pub fn load_snapshots_strict(&self) -> Result<Vec<Snapshot>> {
        let all = self.load_snapshots_with(true)?;
        for s in &all {
            s.check_features()?;
        }
        Ok(all)
    }

    fn load_snapshots_with(&self, strict: bool) -> Result<Vec<Snapshot>> {
        let mut errors = Vec::new();
        let out = self.load_snapshots_lenient(&mut errors)?;
        if strict && !errors.is_empty() {
            return Err(
                Error::integrity(format!("{} (run `coffer check`)", errors.join("; "))).into(),
            );
        }
        for e in errors {
            self.events
                .warn(&format!("skipping {e} (run `coffer check`)"));
        }
        Ok(out)
    }

    /// Find a snapshot to read by id prefix or `latest`; fails (exit 2) when it needs a
    /// feature this coffer does not know.
    pub fn find_snapshot(&self, spec: &str) -> Result<Snapshot> {
        let s = pick_snapshot(&self.load_snapshots()?, spec)?;
        s.check_features()?;
        Ok(s)
    }

    /// Read one blob, verifying authenticity, length and identifier.
    pub fn read_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        let (sealed, raw_length, pack, key) = self.read_sealed(index, id)?;
        self.open_blob(&key, &sealed, id, raw_length)
            .with_context(|| format!("in pack {}", pack))
    }

    /// A blob's sealed bytes as stored, its plaintext length, its pack, and the key that
    /// opens it.
    fn read_sealed(
        &self,
        index: &MasterIndex,
        id: &Id,
    ) -> Result<(Vec<u8>, u32, Id, crypto::Cipher)> {
        let loc = index.get(id).ok_or_else(|| {
            Error::integrity(format!(
                "blob {} is not in the index (repository damaged)",
                id.short()
            ))
        })?;
        let pack = &index.packs[loc.pack as usize];
        let key = self.content_key(pack.ephemeral.as_ref())?;
        let sealed = self.backend.read_range(
            FileKind::Pack,
            &pack.id.to_hex(),
            loc.entry.offset as u64,
            loc.entry.length as u64,
        )?;
        Ok((sealed, loc.entry.raw_length, pack.id, key))
    }

    /// The key that opens the content of a pack sealed with `ephemeral` (the pack's, from
    /// the index or its header); a write-only key has none.
    pub fn content_key(&self, ephemeral: Option<&[u8; 32]>) -> Result<crypto::Cipher> {
        self.keys.reader(ephemeral, "reading stored data")
    }

    /// Fail with a clear message (exit 9) when this handle holds a write-only key: for the
    /// commands that read data back (`what` names it: "restore", "dump", …).
    pub fn require_full(&self, what: &str) -> Result<()> {
        self.keys.master(what).map(|_| ())
    }

    /// Whether this repository has write-only slots (feature `write-only`).
    pub fn write_only(&self) -> bool {
        self.keys.write_only_repository()
    }

    /// Read one blob as it is stored before sealing (compression-encoded), verified like
    /// [`read_blob`](Self::read_blob) (it is decoded to be checked): for `copy`, which seals
    /// it again for another repository without compressing it again. Returns the encoded
    /// bytes and the plaintext length.
    pub fn read_blob_encoded(&self, index: &MasterIndex, id: &Id) -> Result<(Vec<u8>, u32)> {
        let (sealed, raw_length, pack, key) = self.read_sealed(index, id)?;
        let encoded = self
            .open_blob_encoded(&key, &sealed, id, raw_length)
            .with_context(|| format!("in pack {}", pack))?;
        Ok((encoded, raw_length))
    }

    /// Decrypt and verify a sealed blob, returning it as it was encoded before sealing (for
    /// sealing it again under another key without compressing it again).
    pub fn open_blob_encoded(
        &self,
        key: &crypto::Cipher,
        sealed: &[u8],
        id: &Id,
        raw_length: u32,
    ) -> Result<Vec<u8>> {
        Ok(self.open_verified(key, sealed, id, raw_length)?.0)
    }

    /// Decrypt (under `key`, the pack's content key), decompress and verify a sealed blob.
    pub fn open_blob(
        &self,
        key: &crypto::Cipher,
        sealed: &[u8],
        id: &Id,
        raw_length: u32,
    ) -> Result<Vec<u8>> {
        Ok(self.open_verified(key, sealed, id, raw_length)?.1)
    }

    /// A sealed blob opened and verified: its encoded form and its plaintext.
    fn open_verified(
        &self,
        key: &crypto::Cipher,
        sealed: &[u8],
        id: &Id,
        raw_length: u32,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let encoded = key
            .open(sealed)
            .map_err(|e| Error::integrity(format!("blob {}: {e}", id.short())))?;
        let data = compress::decode(&encoded)?;
        self.verify_blob(&data, id, raw_length)?;
        Ok((encoded, data))
    }

    /// The plaintext must have the recorded length and hash to its identifier.
    fn verify_blob(&self, data: &[u8], id: &Id, raw_length: u32) -> Result<()> {
        if data.len() != raw_length as usize || self.keys.blob_id(data) != *id {
            return Err(Error::integrity(format!(
                "blob {} does not match its identifier",
                id.short()
            ))
            .into());
        }
        Ok(())
    }

    /// Like [`open_blob`](Self::open_blob), decrypting in the caller's buffer and
    /// decompressing into `decoder`'s; stored (uncompressed) data is returned without a copy.
    pub fn open_blob_in_place<'a>(
        &self,
        key: &crypto::Cipher,
        sealed: &'a mut [u8],
        id: &Id,
        raw_length: u32,
        decoder: &'a mut compress::Decoder,
    ) -> Result<&'a [u8]> {
        let plain = key
            .open_in_place(sealed)
            .map_err(|e| Error::integrity(format!("blob {}: {e}", id.short())))?;
        let data = decoder.decode(plain)?;
        self.verify_blob(data, id, raw_length)?;
        Ok(data)
    }

    pub fn load_tree(&self, index: &MasterIndex, id: &Id) -> Result<Tree> {
        tree::decode(&self.read_tree_blob(index, id)?, id)
    }

    /// A tree blob's verified plaintext (not parsed yet), after the index says it is a tree
    /// of a size a tree may have.
    pub fn read_tree_blob(&self, index: &MasterIndex, id: &Id) -> Result<Vec<u8>> {
        if index.blob_type(id) != Some(BlobType::Tree) && index.has(id) {
            return Err(Error::integrity(format!("blob {} is not a tree", id.short())).into());
        }
        if let Some(loc) = index.get(id) {
            if loc.entry.raw_length as usize > tree::MAX_TREE_BYTES {
                return Err(Error::integrity(format!(
                    "tree {} claims {} bytes, more than a tree may hold",
                    id.short(),
                    loc.entry.raw_length
                ))
                .into());
            }
        }
        let Some(cache) = self.tree_cache() else {
            return self.read_blob(index, id);
        };
        let name = id.to_hex();
        if let (Some(sealed), Some(loc)) = (cache.get(cache::Kind::Tree, &name), index.get(id)) {
            let key = self.content_key(index.packs[loc.pack as usize].ephemeral.as_ref())?;
            match self.open_blob(&key, &sealed, id, loc.entry.raw_length) {
                Ok(plain) => return Ok(plain),
                Err(_) => cache.remove(cache::Kind::Tree, &name),
            }
        }
        let (sealed, raw_length, pack, key) = self.read_sealed(index, id)?;
        let plain = self
            .open_blob(&key, &sealed, id, raw_length)
            .with_context(|| format!("in pack {}", pack))?;
        self.cache_result(cache.put(cache::Kind::Tree, &name, &sealed));
        Ok(plain)
    }

    // ---- key slots ----

    /// Every key slot, oldest first; a slot that cannot be decoded is listed as damaged
    /// (with the reason) rather than left out, so that it can be seen and removed.
    pub fn list_keys(&self) -> Result<Vec<ListedKey>> {
        let mut out = Vec::new();
        for k in self.backend.list(FileKind::Key)? {
            let raw = self.backend.read(FileKind::Key, &k.name)?;
            let slot = serde_json::from_slice::<KeyFile>(&raw).map_err(|e| e.to_string());
            out.push(ListedKey { name: k.name, slot });
        }
        out.sort_by_key(|k| (k.slot.is_err(), k.slot.as_ref().ok().map(|s| s.created)));
        Ok(out)
    }

    /// Add a key slot for another passphrase, holding what this handle's slot holds (the
    /// full key, or a writer's); returns its name.
    pub fn add_key(&self, passphrase: &[u8], kdf: KdfParams) -> Result<String> {
        let key = match self.keys.master("") {
            Ok(m) => SlotKey::Full(m.clone()),
            Err(_) => SlotKey::Writer(self.keys.writer_key()),
        };
        self.write_key(passphrase, &key, kdf)
    }

    /// Store a key slot for `passphrase` holding `key`; returns its name.
    pub(crate) fn write_key(
        &self,
        passphrase: &[u8],
        key: &SlotKey,
        kdf: KdfParams,
    ) -> Result<String> {
        let slot = KeyFile::create(passphrase, self.config.id, key, kdf)?;
        let name = Id::random().to_hex();
        self.backend
            .write(FileKind::Key, &name, &serde_json::to_vec_pretty(&slot)?)?;
        Ok(name)
    }

    /// Remove a key slot by name prefix. The slot in use and the last slot cannot be removed.
    pub fn remove_key(&self, prefix: &str) -> Result<String> {
        self.require_full("key remove")?;
        let keys = self.list_keys()?;
        let m: Vec<&String> = keys
            .iter()
            .map(|k| &k.name)
            .filter(|n| n.starts_with(prefix))
            .collect();
        let name = match m.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(
                    Error::new(ErrorKind::NotFound, format!("no key matches {prefix:?}")).into(),
                )
            }
            _ => return Err(Error::usage(format!("{prefix:?} matches several keys")).into()),
        };
        if name == self.key_name {
            return Err(Error::usage(
                "refusing to remove the key in use; open the repository with another key to remove this one",
            )
            .into());
        }
        self.backend.remove(FileKind::Key, &name)?;
        Ok(name)
    }

    /// Replace the passphrase of the key in use: add a new slot, then remove the old one.
    pub fn change_passphrase(&mut self, new: &[u8], kdf: KdfParams) -> Result<String> {
        let name = self.add_key(new, kdf)?;
        self.backend.remove(FileKind::Key, &self.key_name)?;
        self.key_name = name.clone();
        Ok(name)
    }
}

/// The snapshot `spec` (an id prefix or `latest`) names in `all` (oldest first).
pub fn pick_snapshot(all: &[Snapshot], spec: &str) -> Result<Snapshot> {
    if spec == "latest" {
        return all.last().cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "the repository has no snapshots").into()
        });
    }
    let matches: Vec<&Snapshot> = all
        .iter()
        .filter(|s| s.id.to_hex().starts_with(&spec.to_ascii_lowercase()))
        .collect();
    match matches.as_slice() {
        [] => Err(Error::new(ErrorKind::NotFound, format!("no snapshot matches {spec:?}")).into()),
        [one] => Ok((*one).clone()),
        _ => Err(Error::usage(format!(
            "{spec:?} matches {} snapshots; give more digits",
            matches.len()
        ))
        .into()),
    }
}

/// Walk a tree depth-first, calling `f(path, node)` for every node.
pub fn walk_tree(
    repo: &Repository,
    index: &MasterIndex,
    tree: &Id,
    prefix: &str,
    f: &mut dyn FnMut(&str, &tree::Node) -> Result<()>,
) -> Result<()> {
    let t = repo.load_tree(index, tree)?;
    for n in &t.nodes {
        let path = format!("{}/{}", prefix, n.name.display());
        f(&path, n)?;
        if let Some(sub) = &n.subtree {
            walk_tree(repo, index, sub, &path, f)?;
        }
    }
    Ok(())
}
