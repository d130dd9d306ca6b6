//! `dump`: one file or stream of a snapshot to a writer, or every stream of a (split)
//! PostgreSQL dump into a directory with the pg_restore commands that load it.

use crate::error::Error;
use crate::repo::index::MasterIndex;
use crate::repo::restore;
use crate::repo::snapshot::Kind;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::safefs::{self, Meta, NewFile, Replace};
use crate::sources::postgres::tools::shell_quote;
use crate::sources::postgres::DumpInfo;
use crate::sources::Metadata;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Where the data goes.
pub enum Output<'a> {
    /// One file or stream, written out as it is read.
    Stream(&'a mut dyn Write),
    /// Every stream of the file or dump into this directory.
    Dir(&'a Path),
}

/// What `dump` wrote.
#[derive(Serialize)]
pub struct DumpReport {
    /// The path inside the snapshot.
    pub path: String,
    /// With [`Output::Dir`]: the files written, in order.
    pub files: Vec<PathBuf>,
    /// With [`Output::Dir`]: for a PostgreSQL dump, a comment and the pg_restore commands
    /// that load it, in order; otherwise the file written.
    pub commands: Vec<String>,
}

/// Dump `path` of snapshot `spec` (when left out: the one stream of a snapshot that holds
/// a single one).
pub fn dump(
    repo: &Repository,
    spec: &str,
    path: Option<&str>,
    out: Output<'_>,
) -> Result<DumpReport> {
    repo.require_full("dump")?;
    let snap = repo.find_snapshot(spec)?;
    let index = repo.load_index()?;
    let path = match path {
        Some(p) => p.to_string(),
        None => match snap.sources.as_slice() {
            [one] if *snap.known_kind()? != Kind::Files => one.path.clone(),
            _ => {
                return Err(Error::usage(format!(
                "snapshot {} holds several files or streams; name one (coffer ls {0} lists them)",
                snap.id.short()
            ))
                .into())
            }
        },
    };
    // The PostgreSQL dump whose main stream this is, if it is one.
    let pg = snap
        .sources
        .iter()
        .find(|s| s.kind == DumpInfo::KIND && s.path == path)
        .map(|s| DumpInfo::of(&snap, s))
        .transpose()?;
    let out = match out {
        Output::Dir(dir) => return dump_to_dir(repo, &index, &snap, path, pg.as_ref(), dir),
        Output::Stream(w) => w,
    };
    if let Some(info) = pg.as_ref().filter(|i| !i.data_streams.is_empty()) {
        return Err(Error::usage(format!(
            "the dump of {:?} in snapshot {} is split into {} streams (the largest tables' data \
             is dumped beside the main archive), which one output cannot hold: use \
             `coffer dump {} --out DIR` to write them all into DIR with the pg_restore commands \
             to run, or name one stream ({})",
            info.database,
            snap.id.short(),
            info.data_streams.len() + 1,
            spec,
            std::iter::once(path.as_str())
                .chain(info.data_streams.iter().map(|d| d.path.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    restore::dump(repo, &index, &snap, &path, out)?;
    Ok(DumpReport {
        path,
        files: Vec::new(),
        commands: Vec::new(),
    })
}

/// Every stream of the file or dump into `dir` (mode 0600). Each file is written under a
/// temporary name, fsynced and renamed to its name (which must not exist yet), then its
/// directory is fsynced; nothing below `dir` is reached through a symlink.
fn dump_to_dir(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: String,
    pg: Option<&DumpInfo>,
    dir: &Path,
) -> Result<DumpReport> {
    let base = path.rsplit_once('/').map_or("", |(b, _)| b);
    let mut paths = vec![path.clone()];
    if let Some(info) = pg {
        paths.extend(info.data_streams.iter().map(|d| d.path.clone()));
    }
    let root =
        safefs::open_root(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for p in &paths {
        let rel = p.strip_prefix(base).unwrap_or(p).trim_start_matches('/');
        let file = dir.join(rel);
        let mut parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let name = parts
            .pop()
            .ok_or_else(|| Error::usage(format!("{p:?} names no file")))?;
        let mut at = None;
        let mut here = dir.to_path_buf();
        for part in parts {
            here.push(part);
            let parent = at.as_ref().unwrap_or(&root);
            let (fd, _) = safefs::ensure_dir(parent.as_fd(), OsStr::new(part), Replace::Links)
                .with_context(|| format!("cannot create {}", here.display()))?;
            at = Some(fd);
        }
        let fd = at.as_ref().unwrap_or(&root).as_fd();
        let out = NewFile::create(fd, OsStr::new(name))
            .with_context(|| format!("cannot create {}", file.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        restore::dump(repo, index, snap, p, &mut w)?;
        drop(w);
        let private = Meta {
            owner: None,
            mode: Some(0o600),
            mtime: None,
        };
        out.commit(&private, false)
            .with_context(|| format!("cannot create {}", file.display()))?;
        safefs::fsync(fd).with_context(|| format!("cannot write {}", file.display()))?;
        written.push(file);
    }
    let commands = restore_commands(pg, &written);
    Ok(DumpReport {
        path,
        files: written,
        commands,
    })
}

/// How to load the files written: for a split dump, pre-data, data, each table's data
/// stream and post-data into an empty database; for a whole dump, one pg_restore; for
/// anything else, the file's name.
fn restore_commands(pg: Option<&DumpInfo>, written: &[PathBuf]) -> Vec<String> {
    let q = |p: &Path| shell_quote(&p.display().to_string());
    match pg {
        Some(info) if !info.data_streams.is_empty() => {
            let db = shell_quote(&info.database);
            let main = q(&written[0]);
            let mut c = vec![
                format!(
                    "# The dump of {:?} in {} streams. Into an empty database {db}, run in order \
                     (the data steps may run at the same time):",
                    info.database,
                    written.len()
                ),
                format!("pg_restore --section=pre-data -d {db} {main}"),
                format!("pg_restore --section=data -d {db} {main}"),
            ];
            for f in &written[1..] {
                c.push(format!("pg_restore --data-only -d {db} {}", q(f)));
            }
            c.push(format!("pg_restore --section=post-data -d {db} {main}"));
            c
        }
        Some(info) => vec![format!(
            "pg_restore -d {} {}",
            shell_quote(&info.database),
            q(&written[0])
        )],
        None => vec![written[0].display().to_string()],
    }
}
