//! The blob saver: the write pipeline every backup goes through.
//!
//! ```text
//! caller ──(chunks)──▶ N workers ──────────────────▶ packer ──(full packs)──▶ M uploaders
//!                      hash, dedup, compress+encrypt  per-type packs          write, then index
//! ```
//! Data chunks ([`BlobSaver::save_later`]) are hashed (keyed BLAKE3) in the workers, which
//! hand the id back at once and skip what the index or this run already has; the caller
//! only reads and cuts, so reading overlaps everything else. Trees ([`BlobSaver::save`])
//! are hashed by the caller, which needs their id at once. Channels are bounded, so memory
//! stays at a few packs whatever the input size. Uploaders write index files only after the packs they
//! list are durable (every 16 packs or [`BLOBS_PER_INDEX`] blobs, when [`INDEX_INTERVAL`] has
//! passed since the last one, and at the end), which is what makes an interrupted backup reusable by the next one: what it loses
//! is bounded by size on a fast link and by time on a slow one.

use super::crypto::compress::{Compressor, Framed};
use super::crypto::Sealer;
use super::id::Id;
use super::index::{IndexFile, IndexPack, MasterIndex};
use super::pack::{BlobType, FinishedPack, PackWriter};
use super::Repository;
use crate::backend::FileKind;
use anyhow::{anyhow, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Write an index file every this many packs,
const PACKS_PER_INDEX: usize = 16;
/// or blobs (packs of small files hold many): every reader holds an index file's whole JSON
/// while it parses it, so an index file stays a few MiB, not one per million-file backup,
pub const BLOBS_PER_INDEX: usize = 50_000;
/// or when a pack is stored this long after the last index file (or the start): a backup killed
/// on a slow link then loses the packs of about this long, not up to 16 packs' worth however
/// long they took.
pub const INDEX_INTERVAL: Duration = Duration::from_secs(30);

enum Job {
    Raw {
        tpe: BlobType,
        id: Id,
        data: Vec<u8>,
    },
    /// Not hashed yet: the worker hashes, replies with the id, then stores it unless known.
    Unhashed {
        tpe: BlobType,
        data: Framed,
        reply: Sender<Id>,
    },
    Sealed {
        tpe: BlobType,
        id: Id,
        raw_length: u32,
        sealed: Vec<u8>,
    },
}

struct Sealed {
    tpe: BlobType,
    id: Id,
    raw_length: u32,
    sealed: Vec<u8>,
}

#[derive(Default)]
pub struct SaverStats {
    pub blobs_added: AtomicU64,
    pub bytes_added: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs_written: AtomicU64,
}

struct Written {
    /// Stored, not yet in an index file.
    pending: Vec<IndexPack>,
    all: Vec<IndexPack>,
    /// When the last index file was begun (the start, before the first).
    last_index: Instant,
}

struct Shared {
    repo: Arc<Repository>,
    index: Arc<MasterIndex>,
    /// Blobs sent to the workers in this run (claimed by whoever hashed them first).
    known: Mutex<HashSet<Id>>,
    error: Mutex<Option<anyhow::Error>>,
    failed: std::sync::atomic::AtomicBool,
    written: Mutex<Written>,
    stats: Arc<SaverStats>,
    write_index: bool,
    /// Seals this saver's blobs: with a write-only key, under a content key of its own
    /// that nothing stores (see [`crate::repo::crypto::Sealer`]).
    sealer: Sealer,
}

impl Shared {
    fn fail(&self, e: anyhow::Error) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            *self.error.lock().unwrap() = Some(e);
        }
    }
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    /// Claim a blob for storing: false if the repository or this run already has it.
    fn claim(&self, id: Id) -> bool {
        !self.index.has(&id) && self.known.lock().unwrap().insert(id)
    }
    /// Write an index file for the stored packs not yet in one, when `all` or when one is due.
    fn flush_index(&self, all: bool) -> Result<()> {
        let packs = {
            let mut w = self.written.lock().unwrap();
            let due = all
                || w.pending.len() >= PACKS_PER_INDEX
                || w.pending.iter().map(|p| p.blobs.len()).sum::<usize>() >= BLOBS_PER_INDEX
                || w.last_index.elapsed() >= INDEX_INTERVAL;
            if w.pending.is_empty() || !due {
                return Ok(());
            }
            w.last_index = Instant::now();
            std::mem::take(&mut w.pending)
        };
        // Not under the lock: the other uploaders go on recording their packs meanwhile.
        if self.write_index {
            // A backup whose lock may have been taken for stale writes no index file: a prune
            // elsewhere may have deleted these packs as unindexed, and an index file listing them
            // would let a later backup deduplicate against data that is gone.
            super::lock::ensure_held(&self.repo)?;
            self.repo.save_index(&IndexFile {
                packs: packs.clone(),
            })?;
        }
        self.written.lock().unwrap().all.extend(packs);
        Ok(())
    }
}

pub struct BlobSaver {
    shared: Arc<Shared>,
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<SaverStats>,
}

impl BlobSaver {
    /// Start the pipeline. `write_index` false leaves index writing to the caller (prune).
    pub fn new(
        repo: Arc<Repository>,
        index: Arc<MasterIndex>,
        write_index: bool,
    ) -> Result<BlobSaver> {
        let sealer = repo.keys.sealer()?;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let uploaders = repo.backend.concurrency();
        let stats = Arc::new(SaverStats::default());
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            index,
            known: Mutex::new(HashSet::new()),
            error: Mutex::new(None),
            failed: Default::default(),
            written: Mutex::new(Written {
                pending: Vec::new(),
                all: Vec::new(),
                last_index: Instant::now(),
            }),
            stats: stats.clone(),
            write_index,
            sealer,
        });
        let (tx, job_rx) = bounded::<Job>(workers * 2);
        let (sealed_tx, sealed_rx) = bounded::<Sealed>(workers * 4);
        // A pack kept in memory is handed over only when an uploader is free (each one
        // waiting would cost a pack of memory); a spooled one is just a file handle.
        let (pack_tx, pack_rx) =
            bounded::<FinishedPack>(if repo.backend.spools() { uploaders } else { 0 });
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (rx, out, sh) = (job_rx.clone(), sealed_tx.clone(), shared.clone());
            threads.push(std::thread::spawn(move || seal_worker(rx, out, sh)));
        }
        drop(sealed_tx);
        {
            let sh = shared.clone();
            threads.push(std::thread::spawn(move || packer(sealed_rx, pack_tx, sh)));
        }
        for _ in 0..uploaders {
            let (rx, sh) = (pack_rx.clone(), shared.clone());
            threads.push(std::thread::spawn(move || uploader(rx, sh)));
        }
        Ok(BlobSaver {
            shared,
            tx: Some(tx),
            threads,
            stats,
        })
    }

    /// The sealer of this saver's blobs, for blobs given to
    /// [`save_sealed`](Self::save_sealed).
    pub fn sealer(&self) -> &Sealer {
        &self.shared.sealer
    }

    /// The pipeline's first error, with its kind intact (taken once; later calls report
    /// a generic failure).
    fn check_error(&self) -> Result<()> {
        if self.shared.failed() {
            return Err(self
                .shared
                .error
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| anyhow!("the blob pipeline stopped after an earlier error")));
        }
        Ok(())
    }

    fn send(&self, job: Job) -> Result<()> {
        crate::cancel::check()?;
        let tx = self.tx.as_ref().expect("saver used after finish");
        if tx.send(job).is_err() {
            self.check_error()?;
            return Err(anyhow!("the blob pipeline stopped"));
        }
        Ok(())
    }

    /// True if the repository or this run already has the blob.
    pub fn contains(&self, id: &Id) -> bool {
        self.shared.index.has(id) || self.shared.known.lock().unwrap().contains(id)
    }

    /// Store a blob unless it is already there; returns its id and whether it was new.
    pub fn save(&mut self, tpe: BlobType, data: Vec<u8>) -> Result<(Id, bool)> {
        let id = self.shared.repo.keys.blob_id(&data);
        if !self.shared.claim(id) {
            return Ok((id, false));
        }
        self.send(Job::Raw { tpe, id, data })?;
        Ok((id, true))
    }

    /// Store a blob unless it is already there, hashing it in a worker; the id comes
    /// later, through [`BlobSaver::resolve`]. Takes `&self`: several threads may feed one
    /// saver at once (each stream of a parallel dump is chunked on its own thread).
    pub fn save_later(&self, tpe: BlobType, data: Framed) -> Result<PendingId> {
        let (reply, rx) = bounded(1);
        self.send(Job::Unhashed { tpe, data, reply })?;
        Ok(PendingId(rx))
    }

    /// Wait for the ids of blobs given to [`save_later`](Self::save_later), in order.
    pub fn resolve(&self, pending: Vec<PendingId>) -> Result<Vec<Id>> {
        pending
            .into_iter()
            .map(|p| match p.0.recv() {
                Ok(id) => Ok(id),
                Err(_) => {
                    self.check_error()?;
                    Err(anyhow!("the blob pipeline stopped"))
                }
            })
            .collect()
    }

    /// Store a blob that is already sealed with [`sealer`](Self::sealer) (prune and copy
    /// move blobs between packs this way).
    pub fn save_sealed(
        &mut self,
        tpe: BlobType,
        id: Id,
        raw_length: u32,
        sealed: Vec<u8>,
    ) -> Result<()> {
        if !self.shared.known.lock().unwrap().insert(id) {
            return Ok(());
        }
        self.send(Job::Sealed {
            tpe,
            id,
            raw_length,
            sealed,
        })
    }

    /// Flush everything; returns the packs written (all durable and, when the saver writes
    /// the index, indexed).
    pub fn finish(mut self) -> Result<Vec<IndexPack>> {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared.fail(anyhow!("a pipeline thread panicked"));
            }
        }
        self.check_error()?;
        self.shared.flush_index(true)?;
        Ok(std::mem::take(&mut self.shared.written.lock().unwrap().all))
    }
}

/// The id of a blob a worker is hashing.
pub struct PendingId(Receiver<Id>);

impl Drop for BlobSaver {
    fn drop(&mut self) {
        // An abandoned saver (error path): stop the threads, write no index.
        if self.tx.take().is_some() {
            self.shared.fail(anyhow!("backup abandoned"));
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn seal_worker(rx: Receiver<Job>, out: Sender<Sealed>, sh: Arc<Shared>) {
    let mut comp = Compressor::new(sh.repo.config.compression);
    for job in rx {
        if sh.failed() {
            return;
        }
        let s = match job {
            Job::Raw { tpe, id, data } => {
                let raw_length = data.len() as u32;
                let enc = comp.encode(&data);
                drop(data);
                Sealed {
                    tpe,
                    id,
                    raw_length,
                    sealed: sh.sealer.seal_encoded(enc),
                }
            }
            Job::Unhashed { tpe, data, reply } => {
                let id = sh.repo.keys.blob_id(data.data());
                // The caller may have given up (an error elsewhere): storing goes on.
                let _ = reply.send(id);
                if !sh.claim(id) {
                    continue;
                }
                let raw_length = data.len() as u32;
                Sealed {
                    tpe,
                    id,
                    raw_length,
                    sealed: sh.sealer.seal_encoded(comp.encode_framed(data)),
                }
            }
            Job::Sealed {
                tpe,
                id,
                raw_length,
                sealed,
            } => Sealed {
                tpe,
                id,
                raw_length,
                sealed,
            },
        };
        if out.send(s).is_err() {
            return;
        }
    }
}

fn packer(rx: Receiver<Sealed>, out: Sender<FinishedPack>, sh: Arc<Shared>) {
    if let Err(e) = pack_all(rx, out, &sh) {
        sh.fail(e);
    }
}

fn pack_all(rx: Receiver<Sealed>, out: Sender<FinishedPack>, sh: &Shared) -> Result<()> {
    let target = sh.repo.config.pack_size as usize;
    let backend = &sh.repo.backend;
    let mut data = PackWriter::default();
    let mut trees = PackWriter::default();
    for s in rx {
        sh.stats.blobs_added.fetch_add(1, Ordering::Relaxed);
        sh.stats
            .bytes_added
            .fetch_add(s.raw_length as u64, Ordering::Relaxed);
        sh.stats
            .bytes_stored
            .fetch_add(s.sealed.len() as u64, Ordering::Relaxed);
        let w = match s.tpe {
            BlobType::Data => &mut data,
            BlobType::Tree => &mut trees,
        };
        if w.is_empty() && backend.spools() {
            *w = PackWriter::new(Some(backend.spool(FileKind::Pack)?));
        }
        w.add(s.tpe, s.id, s.raw_length, s.sealed)?;
        if w.len() >= target {
            let full = std::mem::take(w);
            if out
                .send(full.finish(sh.repo.keys.meta(), sh.sealer.ephemeral())?)
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if sh.failed() {
        return Ok(());
    }
    for w in [data, trees] {
        if !w.is_empty()
            && out
                .send(w.finish(sh.repo.keys.meta(), sh.sealer.ephemeral())?)
                .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

fn uploader(rx: Receiver<FinishedPack>, sh: Arc<Shared>) {
    for mut pack in rx {
        if sh.failed() {
            return;
        }
        let id = pack.id();
        let size = pack.len as u64;
        let blobs = std::mem::take(&mut pack.entries);
        if let Err(e) = pack.store(sh.repo.backend.as_ref()) {
            sh.fail(e);
            return;
        }
        sh.stats.packs_written.fetch_add(1, Ordering::Relaxed);
        sh.written.lock().unwrap().pending.push(IndexPack {
            id,
            size,
            blobs,
            ephemeral: sh.sealer.ephemeral(),
        });
        if let Err(e) = sh.flush_index(false) {
            sh.fail(e);
            return;
        }
    }
}
