//! Write-only key slots: `key add --write-only`, and the one-time upgrade that makes a
//! repository able to hold them (FORMAT.md, section 3).
//!
//! The upgrade runs under an exclusive lock, with the full key:
//! 1. the config is written again under the meta key, declaring the feature `write-only`
//!    and the recipient public key (from then on a full key derives the meta key, and
//!    falls back to the encryption key for what is not sealed again yet);
//! 2. every index file and run record is sealed again under the meta key (the new object
//!    first, then the old one removed), every snapshot is sealed again in place with its
//!    sealed part split off and its name recorded inside (`stored_as`), and the WAL
//!    archive's records (cluster record, history files, backup labels, holds, retention
//!    horizon) are sealed again in place. Packs and WAL segments are not rewritten: their
//!    content stays under the encryption key, which a writer never holds;
//! 3. the writer slot is written last.
//!
//! Each step skips what already opens under the meta key, so running it again after a
//! crash finishes the upgrade.

use super::crypto::{compress, Cipher, Keys};
use super::features;
use super::id::Id;
use super::keys::{KdfParams, SlotKey};
use super::lock::ExclusiveLock;
use super::snapshot::Snapshot;
use crate::backend::{is_not_found, Backend, FileKind};
use crate::sources::postgres::wal::archive;
use anyhow::{Context, Result};
use serde::Serialize;

/// What `key add --write-only` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriterAdded {
    /// The new slot's name.
    pub key: String,
    /// Whether this run upgraded the repository (its first write-only slot).
    pub upgraded: bool,
    /// Objects sealed again under the meta key.
    pub resealed: usize,
}

/// Add a write-only slot for `passphrase`, upgrading the repository first if needed.
pub fn add_writer(lock: &ExclusiveLock, passphrase: &[u8], kdf: KdfParams) -> Result<WriterAdded> {
    let repo = lock.repo();
    let master = repo.keys.master("key add --write-only")?;
    if passphrase.is_empty() {
        return Err(crate::error::Error::usage("an empty passphrase is not allowed").into());
    }
    let id = repo.config.id;
    let keys = master.write_only_keys(&id);
    let old = master.cipher();
    // The handle may predate an upgrade that another run (or this one) made: the stored
    // config says.
    let stored = repo.backend.read(FileKind::Config, "")?;
    let mut out = WriterAdded {
        upgraded: keys.meta().open(&stored).is_err(),
        ..Default::default()
    };
    if out.upgraded {
        let mut config = repo.config.clone();
        config.features.insert(features::WRITE_ONLY);
        config.recipient = keys.recipient();
        let json = serde_json::to_vec(&config)?;
        let enc = compress::Compressor::new(repo.config.compression.max(1)).encode(&json);
        repo.backend
            .write(FileKind::Config, "", &keys.meta().seal_encoded(enc))?;
    }
    let backend = repo.backend.as_ref();
    for kind in [FileKind::Index, FileKind::Run] {
        for f in backend.list(kind)? {
            super::lock::ensure_held(repo)?;
            let Some(sealed) = read(backend, kind, &f.name)? else {
                continue;
            };
            if let Some(new) = reseal(&old, &keys, &sealed, || kind.path(&f.name))? {
                // The new object first: a crash leaves both, which readers take as one.
                backend.write(kind, &Id::of_bytes(&new).to_hex(), &new)?;
                backend.remove(kind, &f.name)?;
                out.resealed += 1;
            }
        }
    }
    for f in backend.list(FileKind::Snapshot)? {
        super::lock::ensure_held(repo)?;
        let Ok(name) = f.name.parse::<Id>() else {
            continue;
        };
        let Some(sealed) = read(backend, FileKind::Snapshot, &f.name)? else {
            continue;
        };
        if keys.meta().open(&sealed).is_ok() {
            continue;
        }
        let path = FileKind::Snapshot.path(&f.name);
        let plain = old
            .open(&sealed)
            .with_context(|| format!("{path} cannot be read; run `coffer check`"))?;
        let mut snap: Snapshot = serde_json::from_slice(&compress::decode(&plain)?)
            .with_context(|| format!("{path} is malformed; run `coffer check`"))?;
        snap.id = name;
        snap.check_features()?;
        snap.stored_as = Some(name);
        snap.seal_part(&keys.sealer()?)?;
        let json = serde_json::to_vec(&snap)?;
        let enc = compress::Compressor::new(repo.config.compression.max(1)).encode(&json);
        backend.write(FileKind::Snapshot, &f.name, &keys.meta().seal_encoded(enc))?;
        out.resealed += 1;
    }
    // The WAL archive's records; segments are content and stay as they are.
    let mut records: Vec<(FileKind, String)> = backend
        .list(FileKind::Wal)?
        .into_iter()
        .filter(|f| !archive::is_content(&f.name))
        .map(|f| (FileKind::Wal, archive::object_name(&f.name)))
        .collect();
    records.extend(
        backend
            .list(FileKind::WalHold)?
            .into_iter()
            .map(|f| (FileKind::WalHold, f.name)),
    );
    for (kind, name) in records {
        super::lock::ensure_held(repo)?;
        let Some(sealed) = read(backend, kind, &name)? else {
            continue;
        };
        if let Some(new) = reseal(&old, &keys, &sealed, || kind.path(&name))? {
            backend.write(kind, &name, &new)?;
            out.resealed += 1;
        }
    }
    super::lock::ensure_held(repo)?;
    out.key = repo.write_key(passphrase, &SlotKey::Writer(master.writer(&id)), kdf)?;
    Ok(out)
}

fn read(backend: &dyn Backend, kind: FileKind, name: &str) -> Result<Option<Vec<u8>>> {
    match backend.read(kind, name) {
        Ok(b) => Ok(Some(b)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `sealed` (under the encryption key) sealed again under the meta key; `None` when it is
/// under the meta key already.
fn reseal(
    old: &Cipher,
    keys: &Keys,
    sealed: &[u8],
    path: impl Fn() -> String,
) -> Result<Option<Vec<u8>>> {
    if keys.meta().open(sealed).is_ok() {
        return Ok(None);
    }
    let plain = old
        .open(sealed)
        .with_context(|| format!("{} cannot be read; run `coffer check`", path()))?;
    Ok(Some(keys.meta().seal(&plain)))
}

/// Every plaintext this handle's keys can decrypt in the repository, as (object path,
/// plaintext): each object opened whole under the meta key, each pack's header and every
/// blob in it under the meta key and under the content key when the handle has it, the
/// sealed part of every snapshot, and every WAL object's body. What a stolen credential
/// reveals is exactly this (with a writer's key: metadata only), which is what the tests
/// search for data that was backed up.
pub fn decryptable(repo: &super::Repository) -> Result<Vec<(String, Vec<u8>)>> {
    let keys = &repo.keys;
    let backend = repo.backend.as_ref();
    let mut out = Vec::new();
    let mut push = |path: String, plain: Vec<u8>| {
        let decoded = compress::decode(&plain).unwrap_or_else(|_| plain.clone());
        out.push((path, decoded));
    };
    let content = |ephemeral: Option<&[u8; 32]>| repo.content_key(ephemeral).ok();
    if let Ok(config) = backend.read(FileKind::Config, "") {
        if let Ok(p) = keys.open_meta(&config) {
            push("config".into(), p);
        }
    }
    for kind in [
        FileKind::Index,
        FileKind::Snapshot,
        FileKind::Lock,
        FileKind::Run,
        FileKind::WalHold,
    ] {
        for f in backend.list(kind)? {
            let Some(sealed) = read(backend, kind, &f.name)? else {
                continue;
            };
            let path = kind.path(&f.name);
            let Ok(plain) = keys.open_meta(&sealed) else {
                continue;
            };
            if kind == FileKind::Snapshot {
                let json = compress::decode(&plain)?;
                if let Ok(snap) = serde_json::from_slice::<Snapshot>(&json) {
                    if let Some(part) = &snap.sealed {
                        for key in [Some(keys.meta().clone()), content(part.ephemeral.as_ref())]
                            .into_iter()
                            .flatten()
                        {
                            if let Ok(p) = key.open(&part.data) {
                                push(format!("{path} (sealed part)"), p);
                            }
                        }
                    }
                }
            }
            push(path, plain);
        }
    }
    for f in backend.list(FileKind::Wal)? {
        let name = archive::object_name(&f.name);
        let Some(sealed) = read(backend, FileKind::Wal, &name)? else {
            continue;
        };
        let path = FileKind::Wal.path(&name);
        if let Ok(p) = keys.open_meta(&sealed) {
            push(path.clone(), p);
        }
        if let Ok(data) = archive::open_file(repo, &f.name, &sealed) {
            push(format!("{path} (body)"), data);
        }
        // A write-only segment's header, and its body under the meta key.
        if let Some((header, body)) = archive::segment_parts(&sealed) {
            if let Ok(p) = keys.meta().open(header) {
                push(format!("{path} (header)"), p);
            }
            if let Ok(p) = keys.meta().open(body) {
                push(format!("{path} (body under the meta key)"), p);
            }
        }
    }
    for f in backend.list(FileKind::Pack)? {
        let bytes = backend.read(FileKind::Pack, &f.name)?;
        let path = FileKind::Pack.path(&f.name);
        let Ok(header) = super::pack::parse_pack(keys, &bytes) else {
            continue;
        };
        let content_key = content(header.ephemeral.as_ref());
        for e in &header.entries {
            let Some(blob) = bytes.get(e.offset as usize..(e.offset + e.length) as usize) else {
                continue;
            };
            for key in [Some(keys.meta().clone()), content_key.clone()]
                .into_iter()
                .flatten()
            {
                if let Ok(p) = key.open(blob) {
                    push(format!("{path} blob {}", e.id.short()), p);
                }
            }
        }
        push(
            format!("{path} (header)"),
            format!("{:?}", header.entries).into_bytes(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::backup::{backup, Source};
    use crate::progress::Progress;
    use crate::repo::{lock::Lock, Repository};
    use std::sync::Arc;

    const MARKER: &[u8] = b"zebra-4471-marker";

    fn files(repo: &Arc<Repository>, dir: &std::path::Path) -> crate::ops::backup::BackupReport {
        backup(
            repo,
            Source::Files {
                paths: vec![dir.to_path_buf()],
                excludes: vec!["*.tmp-zebra-4471-marker".into()],
                one_file_system: false,
            },
            Default::default(),
            &Progress::hidden(),
        )
        .unwrap()
    }

    fn found(repo: &Repository) -> Vec<String> {
        decryptable(repo)
            .unwrap()
            .into_iter()
            .filter(|(_, p)| p.windows(MARKER.len()).any(|w| w == MARKER))
            .map(|(path, _)| path)
            .collect()
    }

    #[test]
    fn an_upgraded_repository_takes_writers_that_read_nothing_back() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(
            data.join("zebra-4471-marker.txt"),
            [MARKER, b" inside"].concat(),
        )
        .unwrap();
        // Not modified within the last second, so its inode is stored and the same tree is
        // stored again by the next backup (no new tree blob), however slow the machine.
        let past = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(data.join("zebra-4471-marker.txt"), past).unwrap();
        let full = Arc::new(crate::repo::test_repository(t.path()));
        let before = files(&full, &data);

        let lock = Lock::exclusive(&full, "test").unwrap();
        let added = add_writer(&lock, b"writer pw", KdfParams::insecure_for_tests()).unwrap();
        assert!(added.upgraded);
        // The config, the index file, the snapshot.
        assert!(added.resealed >= 2, "{added:?}");
        // Again: nothing left to do.
        let again = add_writer(&lock, b"writer pw 2", KdfParams::insecure_for_tests()).unwrap();
        assert!(!again.upgraded);
        assert_eq!(again.resealed, 0);
        drop(lock);

        let backend = full.backend.clone();
        let full = Arc::new(Repository::open(backend.clone(), b"pw").unwrap());
        assert!(full.write_only() && !full.keys.is_writer());
        let writer = Arc::new(Repository::open(backend.clone(), b"writer pw").unwrap());
        assert!(writer.keys.is_writer());

        // The snapshot made before the upgrade kept its name and reads back whole.
        let snaps = full.load_snapshots_strict().unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].id.to_hex(), before.id);
        assert_eq!(snaps[0].excludes, ["*.tmp-zebra-4471-marker"]);
        // The writer sees it, without its sealed part.
        let seen = writer.load_snapshots_strict().unwrap();
        assert_eq!(seen[0].id.to_hex(), before.id);
        assert!(seen[0].excludes.is_empty() && seen[0].sealed.is_some());

        // A writer's backup of the same data stores no data blob again.
        let second = files(&writer, &data);
        assert_eq!(second.summary.blobs_added, 0, "{:?}", second.summary);
        std::fs::write(data.join("new"), [MARKER, b" new content"].concat()).unwrap();
        let third = files(&writer, &data);
        assert!(third.summary.blobs_added >= 1);

        // The marker is in a file name, file contents and an exclude pattern: the full key
        // finds it, the writer's key nowhere.
        assert!(!found(&full).is_empty());
        assert_eq!(found(&writer), Vec::<String>::new());
        let e = writer.content_key(None).unwrap_err();
        assert_eq!(
            crate::error::kind_of(&e),
            crate::error::ErrorKind::WriteOnly
        );

        // The full key reads what the writer wrote; check with read-data passes.
        let index = full.load_index().unwrap();
        assert!(index.packs.iter().any(|p| p.ephemeral.is_some()));
        let snap = full.find_snapshot(&third.id).unwrap();
        let mut names = Vec::new();
        crate::repo::walk_tree(&full, &index, &snap.tree, "", &mut |p, n| {
            if let Some(c) = n.content.first() {
                names.push((p.to_string(), full.read_blob(&index, c).unwrap()));
            }
            Ok(())
        })
        .unwrap();
        assert!(names
            .iter()
            .any(|(p, b)| p.ends_with("/new") && b.starts_with(MARKER)));
        let r = crate::repo::check::check(
            &full,
            crate::repo::check::ReadData::All,
            &Progress::hidden(),
        )
        .unwrap();
        assert!(r.ok(), "{r:?}");
        // Prune needs the full key; with it, a writer's packs are sealed again under its own.
        let e = crate::repo::check::check(
            &writer,
            crate::repo::check::ReadData::None,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert_eq!(
            crate::error::kind_of(&e),
            crate::error::ErrorKind::WriteOnly
        );
    }
}
