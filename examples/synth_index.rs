//! Write a synthetic index into an existing local repository, for `bench/index.sh`: index
//! files listing packs of 1,000 data blobs each with random ids, as many as a repository of
//! that many blobs holds, without the data (the packs are not written: `check` fails on such a
//! repository, and nothing may restore from it).
//!
//!     COFFER_PASSWORD=… cargo run --release --example synth_index -- REPO BLOBS

use coffer::backend::{FileKind, LocalBackend};
use coffer::repo::index::{IndexFile, IndexPack};
use coffer::repo::pack::{BlobType, PackEntry};
use coffer::repo::Repository;
use coffer::Id;
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, blobs] = &args[..] else {
        anyhow::bail!("usage: synth_index REPO BLOBS (passphrase in COFFER_PASSWORD)");
    };
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
            file.packs.push(IndexPack {
                id: Id::random(),
                size: u64::from(offset) + 60 * n,
                blobs: entries,
                ephemeral: None,
            });
        }
        repo.save_json(FileKind::Index, &file)?;
    }
    Ok(())
}
