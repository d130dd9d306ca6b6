//! Byte streams: stdin today; pg_dump, Redis and command output build on this.

use super::{commit, CommonOptions, Finished, Session};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::chunker::Chunker;
use crate::repo::pack::BlobType;
use crate::repo::saver::BlobSaver;
use crate::repo::snapshot::{Snapshot, SourceInfo};
use crate::repo::tree::{Node, Tree};
use crate::repo::ChunkerParams;
use crate::repo::Repository;
use anyhow::Result;
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

/// Back up one stream as `/NAME`. `finish` runs after end-of-stream and before the
/// snapshot is written: it confirms the producer succeeded (exit status, expected length)
/// and returns the source metadata; an error there means no snapshot.
pub fn backup_stream(
    repo: Arc<Repository>,
    reader: impl Read,
    name: &str,
    kind: &str,
    opts: &CommonOptions,
    progress: &Progress,
    finish: impl FnOnce(u64) -> Result<serde_json::Value>,
) -> Result<Snapshot> {
    let name = name.trim_matches('/');
    if !crate::repo::tree::valid_name(name.as_bytes()) {
        return Err(Error::usage(format!(
            "the stream name {name:?} cannot be restored as a file: give a plain file name, e.g. db.dump"
        ))
        .into());
    }
    let mut session = Session::start(repo)?;
    let (content, size) = save_stream(&mut session, reader, progress)?;
    let metadata = finish(size)?;
    let mtime = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let tree = session.save_tree(Tree {
        nodes: vec![Node::stream(name, size, content, mtime)],
    })?;
    session.summary.files_new = 1;
    let path = format!("/{name}");
    commit(
        session,
        Finished {
            kind: kind.to_string(),
            paths: vec![path.clone()],
            tree,
            size,
            parent: None,
            excludes: vec![],
            sources: vec![SourceInfo {
                kind: kind.to_string(),
                name: name.to_string(),
                path,
                metadata,
            }],
            requires: Default::default(),
        },
        opts,
    )
}
