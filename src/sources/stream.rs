//! Byte streams: the stdin source, and the chunking of a stream that pg_dump (and later
//! Redis and command output) build on.

use super::{run, CommonOptions, Metadata, Saved, Session, Source};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::chunker::Chunker;
use crate::repo::pack::BlobType;
use crate::repo::saver::BlobSaver;
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::Node;
use crate::repo::ChunkerParams;
use crate::repo::Repository;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;

/// Chunk and store a stream; returns its chunk ids and length. A read error fails.
pub fn save_stream(
    session: &mut Session,
    reader: impl Read,
    progress: &Progress,
) -> Result<(Vec<crate::Id>, u64)> {
    save_stream_to(
        &session.saver,
        &session.repo.config.chunker,
        reader,
        progress,
    )
}

/// [`save_stream`] into a shared saver: several streams can be chunked at once, each on
/// its own thread, all feeding the one saver (and so one session and one snapshot).
pub fn save_stream_to(
    saver: &BlobSaver,
    params: &ChunkerParams,
    reader: impl Read,
    progress: &Progress,
) -> Result<(Vec<crate::Id>, u64)> {
    let mut pending = Vec::new();
    let mut size = 0u64;
    for chunk in Chunker::new(params, reader) {
        let chunk = chunk.map_err(|e| {
            Error::new(ErrorKind::Source, format!("reading the stream failed: {e}"))
        })?;
        size += chunk.len() as u64;
        progress.inc(chunk.len() as u64);
        pending.push(saver.save_later(BlobType::Data, chunk)?);
    }
    Ok((saver.resolve(pending)?, size))
}

/// The metadata of a stream's source: none (stored as no `metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo;

impl Metadata for StreamInfo {
    const KIND: Kind = Kind::Stream;
}

/// One byte stream, stored as `/NAME`.
pub struct Stream<R> {
    reader: R,
    name: String,
}

impl<R: Read> Stream<R> {
    /// A stream to store as `/NAME`; the name must be one a file can have.
    pub fn new(reader: R, name: &str) -> Result<Stream<R>> {
        let name = name.trim_matches('/');
        if !crate::repo::tree::valid_name(name.as_bytes()) {
            return Err(Error::usage(format!(
                "the stream name {name:?} cannot be restored as a file: give a plain file name, e.g. db.dump"
            ))
            .into());
        }
        Ok(Stream {
            reader,
            name: name.to_string(),
        })
    }
}

impl<R: Read> Source for Stream<R> {
    fn kind(&self) -> Kind {
        Kind::Stream
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let (content, size) = save_stream(session, self.reader, progress)?;
        let mtime = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        session.summary.files_new = 1;
        let path = format!("/{}", self.name);
        Ok(Saved {
            nodes: vec![Node::stream(&self.name, size, content, mtime)],
            paths: vec![path.clone()],
            size,
            parent: None,
            excludes: vec![],
            sources: vec![StreamInfo.entry(&self.name, &path)?],
            requires: Default::default(),
        })
    }
}

/// Back up one stream (stdin) as `/NAME`. A read error fails, and no snapshot is written.
pub fn backup_stream(
    repo: Arc<Repository>,
    reader: impl Read,
    name: &str,
    opts: &CommonOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    run(repo, Stream::new(reader, name)?, opts, progress)
}

/// Size of the buffers [`read_ahead`] reads.
const READ_AHEAD_BUF: usize = 1 << 20;

/// Run `consume` on `reader`, read on a thread of its own up to `depth` buffers of 1 MiB
/// ahead of the consumer: a producer that must not wait (a Redis server streaming its RDB
/// from a fork) is drained while the consumer chunks and stores, and memory stays bounded
/// (`depth` MiB). A read error reaches the consumer where it happened in the stream. Returns
/// what `consume` returned and the reader (for what it learnt on the way).
pub fn read_ahead<R: Read + Send, T>(
    mut reader: R,
    depth: usize,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, R) {
    use crossbeam_channel::bounded;
    // Buffers keep their full length (zeroed once, when made) and travel with the length
    // they hold.
    let (full_tx, full_rx) = bounded::<std::io::Result<(Vec<u8>, usize)>>(depth);
    let (empty_tx, empty_rx) = bounded::<Vec<u8>>(depth + 2);
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            loop {
                let mut buf = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| vec![0; READ_AHEAD_BUF]);
                let msg = loop {
                    match reader.read(&mut buf) {
                        Ok(n) => break Ok((buf, n)),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => break Err(e),
                    }
                };
                let last = !matches!(&msg, Ok((_, n)) if *n > 0);
                if full_tx.send(msg).is_err() || last {
                    break;
                }
            }
            reader
        });
        let mut r = ChannelReader {
            rx: full_rx,
            recycle: empty_tx,
            cur: Vec::new(),
            len: 0,
            pos: 0,
            done: false,
        };
        let out = consume(&mut r);
        // A consumer that stopped early lets the producer go: its next send fails.
        drop(r);
        (
            out,
            producer.join().expect("the read-ahead thread panicked"),
        )
    })
}

/// The consumer's side of [`read_ahead`].
struct ChannelReader {
    rx: crossbeam_channel::Receiver<std::io::Result<(Vec<u8>, usize)>>,
    recycle: crossbeam_channel::Sender<Vec<u8>>,
    /// The buffer being read: its first `len` bytes hold data.
    cur: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok((buf, len))) => {
                    let old = std::mem::replace(&mut self.cur, buf);
                    if !old.is_empty() {
                        self.recycle.try_send(old).ok();
                    }
                    (self.pos, self.len) = (0, len);
                    if len == 0 {
                        self.done = true;
                    }
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(std::io::Error::other("the stream's reader stopped"));
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::read_ahead;
    use std::io::Read;

    /// A reader that gives `data` in uneven pieces, then fails if told to.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        fail: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.data.len() {
                return if self.fail {
                    Err(std::io::Error::other("cut"))
                } else {
                    Ok(0)
                };
            }
            let n = out
                .len()
                .min(self.data.len() - self.at)
                .min(1 + self.at % 7777);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn passes_every_byte_in_order_and_the_error_at_its_place() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for fail in [false, true] {
            let src = Pieces {
                data: data.clone(),
                at: 0,
                fail,
            };
            let ((got, err), src) = read_ahead(src, 3, |r| {
                let mut got = Vec::new();
                let err = r.read_to_end(&mut got).err();
                (got, err)
            });
            assert_eq!(got, data);
            assert_eq!(err.is_some(), fail);
            assert_eq!(src.at, data.len());
        }
        // A consumer that stops early does not hang the producer.
        let src = Pieces {
            data: data.clone(),
            at: 0,
            fail: false,
        };
        let (n, _) = read_ahead(src, 1, |r| r.read(&mut [0u8; 10]).unwrap());
        assert!(n > 0);
    }
}
