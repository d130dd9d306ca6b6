//! Fuzzing of every parser of an object coffer reads from storage (or from a file a user
//! points it at): the config file, the repository config, key slots, index files, pack
//! headers, trees, snapshots, locks and WAL objects.
//!
//! Each parser gets arbitrary bytes, and mutations (bit flips, truncations, inserted bytes)
//! of a valid object, at every layer an object has: as stored (where authentication turns
//! almost everything away), sealed with the repository's real key around arbitrary
//! compressed payloads (the decompression layer), and sealed around arbitrary plaintext (the
//! JSON or binary parser itself). The property is the same everywhere: an error or a value,
//! never a panic, and never an allocation far beyond what the input could hold. The latter
//! is watched by a test-only global allocator that records any single allocation above a
//! limit made by the thread under test.
//!
//! The cases are few enough (a few hundred per target) to run in the normal suite in
//! seconds; `PROPTEST_CASES=100000 cargo test --lib fuzz::` runs a longer campaign.

use crate::backend::{Backend, FileKind, LocalBackend};
use crate::repo::crypto::compress;
use crate::repo::index::{IndexFile, IndexPack};
use crate::repo::keys::KdfParams;
use crate::repo::lock::LockInfo;
use crate::repo::pack::{parse_pack, BlobType, PackEntry};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, Tree};
use crate::repo::{InitOptions, Repository};
use crate::{ErrorKind, Id};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

// ---- the allocation watch ----

struct Watched;

thread_local! {
    /// Allocations above this many bytes, on this thread, are recorded.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The largest allocation above the limit seen since the watch began.
    static OVER: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LIMIT.try_with(|l| {
        if size > l.get() {
            let _ = OVER.try_with(|o| o.set(o.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static WATCHED: Watched = Watched;

/// Inputs are at most this long...
const MAX_INPUT: usize = 2048;
/// ...and no single allocation made while parsing one may exceed this: the largest object a
/// valid input of that length can expand to (zstd's best ratio is 32768), plus slack.
const ALLOCATION_LIMIT: usize = MAX_INPUT * 32 * 1024 + (1 << 20);

/// Run `f` with the allocation watch on for this thread; fail if it allocated too much.
fn watched<T>(f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    OVER.with(|o| o.set(0));
    LIMIT.with(|l| l.set(ALLOCATION_LIMIT));
    let out = f();
    LIMIT.with(|l| l.set(usize::MAX));
    let over = OVER.with(|o| o.get());
    if over > 0 {
        return Err(TestCaseError::fail(format!(
            "an allocation of {over} bytes for an input of at most {MAX_INPUT}"
        )));
    }
    Ok(out)
}

// ---- inputs ----

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Arbitrary bytes, or a mutation of `valid`: flipped bits, a truncation, inserted bytes
/// (digits and JSON punctuation among them, so numbers and lengths grow).
fn input(valid: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    mutations(valid, 4)
}

/// [`input`] with at most `inserts` inserted bytes.
fn mutations(valid: Vec<u8>, inserts: usize) -> BoxedStrategy<Vec<u8>> {
    let arbitrary = prop::collection::vec(any::<u8>(), 0..MAX_INPUT).boxed();
    if valid.is_empty() {
        return arbitrary;
    }
    let n = valid.len();
    let insert_byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"0123456789-.e\"{}[],:\\".to_vec())
    ];
    let mutated = (
        prop::collection::vec((0..n, 0u8..8), 0..6),
        prop::option::of(0..n),
        prop::collection::vec((0..=n, insert_byte), 0..=inserts),
    )
        .prop_map(move |(flips, cut, inserts)| {
            let mut v = valid.clone();
            for (i, bit) in flips {
                v[i] ^= 1 << bit;
            }
            for (i, b) in inserts {
                let i = i.min(v.len());
                v.insert(i, b);
            }
            if let Some(c) = cut {
                v.truncate(c);
            }
            v.truncate(MAX_INPUT);
            v
        })
        .boxed();
    prop_oneof![arbitrary, mutated].boxed()
}

/// A repository in a temporary directory, with cheap key derivation.
struct Fixture {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    repo: Repository,
}

const PASSPHRASE: &[u8] = b"fuzz";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("repo")));
    let repo = Repository::init(
        backend.clone(),
        PASSPHRASE,
        &InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            compression: 3,
            pack_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    Fixture {
        _dir: dir,
        backend,
        repo,
    }
}

/// The three layers of a sealed object for `plain` (a JSON or binary plaintext): the bytes
/// as stored, the key's seal around them as a compressed payload, and the seal around the
/// properly encoded plaintext.
fn layers(f: &Fixture, bytes: &[u8]) -> [Vec<u8>; 3] {
    let encoded = compress::Compressor::new(3).encode(bytes);
    [
        bytes.to_vec(),
        f.repo.keys.meta().seal(bytes),
        f.repo.keys.meta().seal_encoded(encoded),
    ]
}

/// Store `data` as an object named by its hash (as coffer names content objects).
fn store(f: &Fixture, kind: FileKind, data: &[u8]) -> String {
    let name = Id::of_bytes(data).to_hex();
    f.backend.write(kind, &name, data).unwrap();
    name
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn sample_entry() -> PackEntry {
    PackEntry {
        id: Id::random(),
        tpe: BlobType::Data,
        offset: 0,
        length: 100,
        raw_length: 60,
    }
}

// ---- the targets ----

#[test]
fn config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coffer.toml");
    let valid = b"repository = \"s3://b/p\"\npassword_file = \"pw\"\ncompression = 3\n[s3]\nendpoint = \"http://h:9000\"\nregion = \"r\"\n".to_vec();
    runner()
        .run(&input(valid), |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            watched(|| {
                let _ = crate::config::Config::load(&path);
            })
        })
        .unwrap();
}

#[test]
fn repository_config() {
    let f = fixture();
    let valid = json(&f.repo.config);
    runner()
        .run(&input(valid), |bytes| {
            for stored in layers(&f, &bytes) {
                f.backend.write(FileKind::Config, "", &stored).unwrap();
                let r = watched(|| Repository::open(f.backend.clone(), PASSPHRASE))?;
                // Only a valid config opens; anything else is an error.
                if let Ok(r) = r {
                    prop_assert!(r.config.pack_size >= 1 << 20);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn key_slots() {
    let f = fixture();
    let good = f.backend.list(FileKind::Key).unwrap().pop().unwrap().name;
    let valid = f.backend.read(FileKind::Key, &good).unwrap();
    // No inserted bytes: a slot's derivation parameters may legitimately ask for up to
    // 1 GiB and 64 passes (keys::MAX_KDF), which grown digits would make this test do.
    runner()
        .run(&mutations(valid, 0), |bytes| {
            // Key slots are plaintext JSON: there is one layer. The good slot still opens
            // the repository whatever sits beside it.
            f.backend.write(FileKind::Key, "fuzzed", &bytes).unwrap();
            let opened = watched(|| Repository::open(f.backend.clone(), PASSPHRASE))?;
            prop_assert!(opened.is_ok(), "{:?}", opened.err());
            let wrong = watched(|| Repository::open(f.backend.clone(), b"wrong"))?;
            prop_assert!(wrong.is_err());
            let listed = watched(|| f.repo.list_keys())?;
            prop_assert!(listed.is_ok());
            Ok(())
        })
        .unwrap();
}

#[test]
fn index_files() {
    let f = fixture();
    let valid = json(&IndexFile {
        packs: vec![IndexPack {
            id: Id::random(),
            size: 200,
            blobs: vec![sample_entry(), sample_entry()],
            ephemeral: None,
        }],
    });
    runner()
        .run(&input(valid), |bytes| {
            for stored in layers(&f, &bytes) {
                let name = store(&f, FileKind::Index, &stored);
                let r = watched(|| f.repo.load_index())?;
                f.backend.remove(FileKind::Index, &name).unwrap();
                if let Ok(index) = r {
                    // Whatever the index claims, reading through it fails cleanly.
                    for p in &index.packs {
                        for b in &p.blobs {
                            let _ = watched(|| f.repo.read_blob(&index, &b.id))?;
                            let _ = watched(|| f.repo.load_tree(&index, &b.id))?;
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn pack_headers() {
    let f = fixture();
    let entries = [sample_entry(), sample_entry()];
    let mut header = Vec::new();
    for e in &entries {
        header.push(0);
        header.extend_from_slice(&e.length.to_le_bytes());
        header.extend_from_slice(&e.raw_length.to_le_bytes());
        header.extend_from_slice(&e.id.0);
    }
    runner()
        .run(&(input(header), 0usize..400), |(plain, data_len)| {
            // As stored: arbitrary bytes.
            watched(|| {
                let _ = parse_pack(&f.repo.keys, &plain);
            })?;
            // A pack whose sealed header holds the arbitrary plaintext.
            let sealed = f.repo.keys.meta().seal(&plain);
            let mut pack = vec![0u8; data_len];
            pack.extend_from_slice(&sealed);
            pack.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            let r = watched(|| parse_pack(&f.repo.keys, &pack))?;
            if let Ok(header) = r {
                let total: u64 = header.entries.iter().map(|e| e.length as u64).sum();
                prop_assert_eq!(total, data_len as u64);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn trees() {
    let f = fixture();
    let mut file = Node::stream("a file", 3, vec![Id::random()], 1_700_000_000_000_000_000);
    file.kind = crate::repo::tree::NodeKind::File;
    let mut link = Node::stream("link", 0, vec![], -5);
    link.kind = crate::repo::tree::NodeKind::Symlink;
    link.target = Some(crate::repo::tree::OsBytes(vec![0xff, b'/', b'x']));
    let valid = json(&Tree {
        nodes: vec![file, link, Node::dir("d", Id::random(), 0)],
    });
    runner()
        .run(&input(valid), |bytes| {
            watched(|| {
                let _ = serde_json::from_slice::<Tree>(&bytes);
                let _ = compress::decode(&bytes);
                let _ = compress::Decoder::default().decode(&bytes).map(|d| d.len());
                // A tree blob as stored: sealed, then decoded and parsed.
                let key = f.repo.content_key(None).unwrap();
                let sealed = key.seal(&bytes);
                let _ = f
                    .repo
                    .open_blob(&key, &sealed, &Id::random(), bytes.len() as u32);
            })
        })
        .unwrap();
}

#[test]
fn snapshots() {
    let f = fixture();
    let valid = br#"{"time":"2024-05-01T02:00:00+02:00","hostname":"h","username":"u","tags":["t"],"paths":["/srv"],"kind":"files","tree":"0000000000000000000000000000000000000000000000000000000000000000","size":5,"excludes":[],"sources":[{"kind":"postgres","name":"db","path":"/postgres/db.dump","metadata":{"tables":[]}}],"program_version":"coffer 0.1.0"}"#;
    // The sample must itself be a snapshot, or the mutations test nothing.
    serde_json::from_slice::<Snapshot>(valid).unwrap();
    runner()
        .run(&input(valid.to_vec()), |bytes| {
            for stored in layers(&f, &bytes) {
                let name = store(&f, FileKind::Snapshot, &stored);
                watched(|| {
                    let _ = f.repo.load_json::<Snapshot>(FileKind::Snapshot, &name);
                    let _ = f.repo.load_snapshots();
                })?;
                f.backend.remove(FileKind::Snapshot, &name).unwrap();
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn locks() {
    let f = fixture();
    let valid = json(&LockInfo {
        time: chrono::Utc::now(),
        exclusive: true,
        hostname: "h".into(),
        username: "u".into(),
        pid: 1,
        operation: "prune".into(),
    });
    runner()
        .run(&input(valid), |bytes| {
            for stored in layers(&f, &bytes) {
                let name = store(&f, FileKind::Lock, &stored);
                watched(|| {
                    let _ = f.repo.load_json::<LockInfo>(FileKind::Lock, &name);
                    let _ = crate::repo::lock::list_locks(&f.repo, None);
                })?;
                f.backend.remove(FileKind::Lock, &name).unwrap();
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn wal_objects() {
    let f = fixture();
    let name = "000000010000000000000003";
    let mut valid = (name.len() as u16).to_le_bytes().to_vec();
    valid.extend_from_slice(name.as_bytes());
    valid.extend_from_slice(&[0xd1, 0x10, 7, 0, 1, 0, 0, 0]);
    let object = crate::sources::postgres::wal::archive::object_name(name);
    runner()
        .run(&input(valid), |bytes| {
            for stored in layers(&f, &bytes) {
                f.backend.write(FileKind::Wal, &object, &stored).unwrap();
                let r = watched(|| crate::sources::postgres::wal::archive::read(&f.repo, name))?;
                // Only an object that names this very file is accepted.
                if let Ok(Some(data)) = r {
                    prop_assert!(bytes.len() >= 2 + name.len() + data.len());
                }
            }
            Ok(())
        })
        .unwrap();
}

/// The watch itself works: a test that cannot fail tests nothing.
#[test]
fn the_allocation_watch_catches_a_large_allocation() {
    let r = watched(|| Vec::<u8>::with_capacity(ALLOCATION_LIMIT + 1).capacity());
    assert!(r.is_err());
    let r = watched(|| Vec::<u8>::with_capacity(1024).capacity());
    assert!(r.is_ok());
    // And a damaged (authentic) repository config is an error, not a panic.
    let f = fixture();
    let mut c = f.repo.config.clone();
    c.chunker.min_size = 1;
    f.backend
        .write(
            FileKind::Config,
            "",
            &f.repo
                .keys
                .meta()
                .seal_encoded(compress::Compressor::new(3).encode(&json(&c))),
        )
        .unwrap();
    let e = Repository::open(f.backend.clone(), PASSPHRASE)
        .err()
        .unwrap();
    assert_eq!(crate::error::kind_of(&e), ErrorKind::Integrity, "{e:#}");
}
