//! Write a synthetic index into an existing local repository, for `bench/index.sh`: index
//! files listing packs of 1,000 data blobs each with random ids, as many as a repository of
//! that many blobs holds, without the data. With `--sparse-packs` each pack is written too, as
//! a sparse file of the size the index gives it (no disk used): `check` then passes (it
//! compares pack sizes; `--read-data` fails), and `prune` finds every blob unused. Nothing may
//! restore from such a repository.
//!
//!     COFFER_PASSWORD=… cargo run --release --example synth_index -- REPO BLOBS [--sparse-packs]

use coffer::backend::{FileKind, LocalBackend};
use coffer::repo::index::{IndexFile, IndexPack};
use coffer::repo::pack::{BlobType, PackEntry};
use coffer::repo::Repository;
use coffer::Id;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (repo, blobs, sparse) = match &args[..] {
        [_, repo, blobs] => (repo, blobs, false),
        [_, repo, blobs, flag] if flag == "--sparse-packs" => (repo, blobs, true),
        _ => anyhow::bail!(
            "usage: synth_index REPO BLOBS [--sparse-packs] (passphrase in COFFER_PASSWORD)"
        ),
    };
    let root = std::path::PathBuf::from(repo);
    let blobs: u64 = blobs.parse()?;
    let pw = std::env::var("COFFER_PASSWORD")?;
    let backend = Arc::new(LocalBackend::new(std::path::PathBuf::from(repo)));
    let repo = Repository::open(backend, pw.as_bytes())?;
    const PER_PACK: u64 = 1_000;
    const PACKS_PER_FILE: u64 = 100;
    let mut left = blobs;
    while left > 0 {
        let mut file = IndexFile::default();
        while left > 0 && (file.packs.len() as u64) < PACKS_PER_FILE {
            let n = left.min(PER_PACK);
            left -= n;
            let mut offset = 0u32;
            let entries = (0..n)
                .map(|_| {
                    let e = PackEntry {
                        id: Id::random(),
                        tpe: BlobType::Data,
                        offset,
                        length: 4_136,
                        raw_length: 4_096,
                    };
                    offset += 4_136;
                    e
                })
                .collect();
            let (id, size) = (Id::random(), u64::from(offset) + 60 * n);
            if sparse {
                let path = root.join(FileKind::Pack.path(&id.to_hex()));
                std::fs::create_dir_all(path.parent().unwrap())?;
                std::fs::File::create(&path)?.set_len(size)?;
            }
            file.packs.push(IndexPack {
                id,
                size,
                blobs: entries,
                ephemeral: None,
            });
        }
        repo.save_json(FileKind::Index, &file)?;
    }
    Ok(())
}
