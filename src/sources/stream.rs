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
