//! Directory trees from the local file system.
//!
//! The snapshot tree mirrors absolute paths (`/srv/app/uploads` is stored as
//! `srv/app/uploads`, with the metadata of each parent directory). A file whose size,
//! mtime, ctime and inode match the same path in the parent snapshot is not read again
//! (one that was modified less than [`RACY_WINDOW_NS`] before it was read is always read
//! again). A file that vanishes during the backup is skipped with a warning (it no longer exists,
//! so the snapshot is still a true picture); any other read error fails the backup and no
//! snapshot is written.

use super::{run, CommonOptions, Metadata, Saved, Session, Source};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::chunker::Chunker;
use crate::repo::id::Id;
use crate::repo::pack::BlobType;
use crate::repo::saver::PendingId;
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::{Node, NodeKind, OsBytes, Tree};
use crate::repo::Repository;
use anyhow::Result;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind as IoKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct FilesOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    /// Do not descend into other file systems below the paths: a mount point is stored as
    /// an empty directory.
    pub one_file_system: bool,
    pub common: CommonOptions,
}

/// `--exclude` patterns: with a `/` they match the whole absolute path, without one they
/// match a file or directory name anywhere.
struct Excluder {
    full: GlobSet,
    name: GlobSet,
}

impl Excluder {
    fn new(patterns: &[String]) -> Result<Excluder> {
        let mut full = GlobSetBuilder::new();
        let mut name = GlobSetBuilder::new();
        for p in patterns {
            let g = GlobBuilder::new(p.trim_end_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| Error::usage(format!("invalid --exclude pattern {p:?}: {e}")))?;
            if p.trim_end_matches('/').contains('/') {
                full.add(g);
            } else {
                name.add(g);
            }
        }
        Ok(Excluder {
            full: full.build()?,
            name: name.build()?,
        })
    }
    fn excluded(&self, path: &Path) -> bool {
        self.full.is_match(path)
            || path
                .file_name()
                .map(|n| self.name.is_match(n))
                .unwrap_or(false)
    }
}

#[derive(Default)]
struct Trie {
    children: BTreeMap<Vec<u8>, Trie>,
    leaf: bool,
}

/// Source-specific rules for a directory's entries (e.g. what PostgreSQL leaves out of a
/// base backup): remove entries to skip them, reorder them to change the reading order.
pub(crate) trait EntryRules {
    fn filter(&self, dir: &Path, entries: &mut Vec<(Vec<u8>, PathBuf)>);
}

pub(crate) struct Archiver<'a> {
    session: &'a mut Session,
    excluder: Excluder,
    progress: &'a Progress,
    size: u64,
    /// The chunker's read window, reused from file to file.
    window: Vec<u8>,
    rules: Option<&'a dyn EntryRules>,
    /// With `one_file_system`: the devices of the paths given; a directory on another one
    /// is stored empty.
    devices: Option<Vec<u64>>,
}

/// A file whose mtime or ctime is less than this before the moment coffer starts reading it is
/// "racy" (as git calls it): a write right after the read, within the same timestamp tick (one
/// second on some file systems, a clock tick or more on others), could leave size, timestamps
/// and inode as they were. Its node is stored with inode 0, so the next backup never takes it as
/// unchanged and reads it again (by then it is usually old enough to be reused later). The same
/// rule for every source that archives files (`backup PATH…`, physical base backups).
pub(crate) const RACY_WINDOW_NS: i64 = 1_000_000_000;

pub(crate) fn meta_node(name: &[u8], kind: NodeKind, m: &fs::Metadata) -> Node {
    Node {
        name: OsBytes(name.to_vec()),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: crate::repo::tree::epoch_ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: crate::repo::tree::epoch_ns(m.ctime(), m.ctime_nsec()),
        inode: m.ino(),
        device: m.dev(),
        size: 0,
        content: vec![],
        subtree: None,
        target: None,
    }
}

/// A node whose file content ids are still being hashed by the saver's workers.
struct PendingNode {
    node: Node,
    content: Vec<PendingId>,
}

impl From<Node> for PendingNode {
    fn from(node: Node) -> Self {
        PendingNode {
            node,
            content: Vec::new(),
        }
    }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!(
            "cannot read {}: {e}; no snapshot was written",
            path.display()
        ),
    )
    .into()
}

impl<'a> Archiver<'a> {
    /// An archiver for a source other than `backup PATH…`.
    pub(crate) fn new(
        session: &'a mut Session,
        progress: &'a Progress,
        rules: Option<&'a dyn EntryRules>,
    ) -> Result<Archiver<'a>> {
        Ok(Archiver {
            session,
            excluder: Excluder::new(&[])?,
            progress,
            size: 0,
            window: Vec::new(),
            rules,
            devices: None,
        })
    }

    pub(crate) fn session(&mut self) -> &mut Session {
        self.session
    }

    /// The bytes of all files archived.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn parent_tree(&self, node: Option<&Node>) -> Option<Tree> {
        let sub = node.filter(|n| n.kind == NodeKind::Dir)?.subtree?;
        self.load_parent(&sub)
    }

    /// A tree of the parent snapshot. One that cannot be read is a warning, not an error:
    /// the backup stays correct (everything below it is read again) and still protects the
    /// data, but a damaged repository must not go unnoticed.
    pub(crate) fn load_parent(&self, tree: &crate::Id) -> Option<Tree> {
        match self.session.load_tree(tree) {
            Ok(t) => t,
            Err(e) => {
                self.progress.log(&format!(
                    "warning: tree {} of the previous snapshot cannot be read ({e:#}); the files below it are read again. Run `coffer check`.",
                    tree.short()
                ));
                None
            }
        }
    }

    /// The nodes of a trie level: leaves are archived whole, inner nodes only carry the
    /// directory's own metadata.
    fn trie_nodes(&mut self, trie: &Trie, path: &Path, parent: Option<&Tree>) -> Result<Vec<Node>> {
        if trie.leaf {
            return self.dir_nodes(path, parent);
        }
        let mut nodes = Vec::new();
        for (name, child) in &trie.children {
            let p = path.join(std::ffi::OsStr::from_bytes(name));
            let pnode = parent.and_then(|t| t.find(name));
            if child.leaf {
                if let Some(n) = self.archive(&p, name, pnode)? {
                    nodes.push(n);
                }
            } else {
                let m = fs::symlink_metadata(&p).map_err(|e| read_err(&p, e))?;
                let sub_parent = self.parent_tree(pnode);
                let mut n = meta_node(name, NodeKind::Dir, &m);
                let sub = self.trie_nodes(child, &p, sub_parent.as_ref())?;
                n.subtree = Some(self.session.save_tree(Tree { nodes: sub })?);
                nodes.push(n.into());
            }
        }
        self.resolve(nodes)
    }

    /// Wait for the files' content ids.
    fn resolve(&mut self, pending: Vec<PendingNode>) -> Result<Vec<Node>> {
        let mut nodes = Vec::with_capacity(pending.len());
        for p in pending {
            let mut n = p.node;
            if !p.content.is_empty() {
                n.content = self.session.saver.resolve(p.content)?;
            }
            nodes.push(n);
        }
        Ok(nodes)
    }

    fn save_dir(&mut self, path: &Path, parent: Option<&Tree>) -> Result<Id> {
        let nodes = self.dir_nodes(path, parent)?;
        self.session.save_tree(Tree { nodes })
    }

    /// The nodes of a directory's entries (none when it vanished).
    fn dir_nodes(&mut self, path: &Path, parent: Option<&Tree>) -> Result<Vec<Node>> {
        let mut entries: Vec<(Vec<u8>, PathBuf)> = Vec::new();
        let rd = match fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == IoKind::NotFound => {
                self.progress.log(&format!(
                    "warning: {} vanished during the backup; stored empty",
                    path.display()
                ));
                return Ok(Vec::new());
            }
            Err(e) => return Err(read_err(path, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| read_err(path, e))?;
            entries.push((ent.file_name().as_bytes().to_vec(), ent.path()));
        }
        entries.sort();
        if let Some(r) = self.rules {
            r.filter(path, &mut entries);
        }
        let mut nodes = Vec::with_capacity(entries.len());
        for (name, p) in entries {
            let pnode = parent.and_then(|t| t.find(&name));
            if let Some(n) = self.archive(&p, &name, pnode)? {
                nodes.push(n);
            }
        }
        self.session.summary.dirs += 1;
        self.resolve(nodes)
    }

    /// Archive one entry and wait for its content ids (recursively for a directory);
    /// `None` when it is skipped.
    pub(crate) fn archive_node(
        &mut self,
        path: &Path,
        name: &[u8],
        parent: Option<&Node>,
    ) -> Result<Option<Node>> {
        let Some(p) = self.archive(path, name, parent)? else {
            return Ok(None);
        };
        let mut n = p.node;
        if !p.content.is_empty() {
            n.content = self.session.saver.resolve(p.content)?;
        }
        Ok(Some(n))
    }

    fn archive(
        &mut self,
        path: &Path,
        name: &[u8],
        parent: Option<&Node>,
    ) -> Result<Option<PendingNode>> {
        if self.excluder.excluded(path) {
            return Ok(None);
        }
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == IoKind::NotFound => {
                self.progress.log(&format!(
                    "warning: {} vanished during the backup; skipped",
                    path.display()
                ));
                return Ok(None);
            }
            Err(e) => return Err(read_err(path, e)),
        };
        let ft = m.file_type();
        if ft.is_dir() {
            let mut n = meta_node(name, NodeKind::Dir, &m);
            if self.devices.as_ref().is_some_and(|d| !d.contains(&m.dev())) {
                self.progress.log(&format!(
                    "{} is another file system (one_file_system): stored as an empty directory",
                    path.display()
                ));
                n.subtree = Some(self.session.save_tree(Tree { nodes: Vec::new() })?);
                return Ok(Some(n.into()));
            }
            let sub_parent = self.parent_tree(parent);
            n.subtree = Some(self.save_dir(path, sub_parent.as_ref())?);
            Ok(Some(n.into()))
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| read_err(path, e))?;
            let mut n = meta_node(name, NodeKind::Symlink, &m);
            n.target = Some(OsBytes::from_os(target.as_os_str()));
            Ok(Some(n.into()))
        } else if ft.is_file() {
            let mut n = meta_node(name, NodeKind::File, &m);
            if let Some(p) = parent {
                let unchanged = p.kind == NodeKind::File
                    && p.size == m.len()
                    && p.mtime_ns == n.mtime_ns
                    && p.ctime_ns == n.ctime_ns
                    && p.inode == n.inode
                    && p.content.iter().all(|c| self.session.saver.contains(c));
                if unchanged {
                    n.size = p.size;
                    n.content = p.content.clone();
                    self.size += n.size;
                    self.session.summary.files_unchanged += 1;
                    self.progress.inc(n.size);
                    return Ok(Some(n.into()));
                }
            }
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
            if n.mtime_ns.max(n.ctime_ns) > i128::from(now) - i128::from(RACY_WINDOW_NS) {
                n.inode = 0;
            }
            let f = match fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == IoKind::NotFound => {
                    self.progress.log(&format!(
                        "warning: {} vanished during the backup; skipped",
                        path.display()
                    ));
                    return Ok(None);
                }
                Err(e) => return Err(read_err(path, e)),
            };
            let params = self.session.repo.config.chunker;
            let mut size = 0u64;
            let mut content = Vec::new();
            let mut chunker = Chunker::with_buffer(&params, f, std::mem::take(&mut self.window));
            for chunk in &mut chunker {
                let chunk = chunk.map_err(|e| read_err(path, e))?;
                size += chunk.len() as u64;
                self.progress.inc(chunk.len() as u64);
                content.push(self.session.saver.save_later(BlobType::Data, chunk)?);
            }
            self.window = chunker.into_buffer();
            n.size = size;
            self.size += size;
            if parent.is_some() {
                self.session.summary.files_changed += 1;
            } else {
                self.session.summary.files_new += 1;
            }
            Ok(Some(PendingNode { node: n, content }))
        } else {
            self.progress.log(&format!(
                "warning: {} is not a regular file, directory or symlink; skipped",
                path.display()
            ));
            Ok(None)
        }
    }
}

/// The newest snapshot of the same host and paths, used to skip unchanged files (a write-only
/// key reads its trees from the local tree cache, [`crate::repo::tree_cache`]).
fn find_parent(repo: &Repository, host: &str, paths: &[String]) -> Result<Option<Snapshot>> {
    Ok(repo
        .load_snapshots()?
        .into_iter()
        .rfind(|s| s.kind == Kind::Files && s.hostname == host && s.paths == paths))
}

/// The metadata of a directory tree's source: none (stored as no `metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FilesInfo;

impl Metadata for FilesInfo {
    const KIND: Kind = Kind::Files;
}

/// Directory trees, each stored under its absolute path.
pub struct Files {
    root: Trie,
    paths: Vec<String>,
    excluder: Excluder,
    excludes: Vec<String>,
    parent: Option<Snapshot>,
    devices: Option<Vec<u64>>,
}

impl Files {
    /// Check the paths and patterns, and find the parent snapshot.
    pub fn new(repo: &Repository, opts: &FilesOptions) -> Result<Files> {
        if opts.paths.is_empty() {
            return Err(Error::usage("nothing to back up: give at least one path").into());
        }
        let mut abs: Vec<PathBuf> = Vec::new();
        let mut devices = Vec::new();
        for p in &opts.paths {
            let a = std::path::absolute(p).map_err(|e| read_err(p, e))?;
            devices.push(fs::symlink_metadata(&a).map_err(|e| read_err(&a, e))?.dev());
            abs.push(a);
        }
        abs.sort();
        abs.dedup();
        let mut root = Trie::default();
        for a in &abs {
            let mut t = &mut root;
            for c in a.components() {
                if let std::path::Component::Normal(n) = c {
                    t = t.children.entry(n.as_bytes().to_vec()).or_default();
                }
            }
            t.leaf = true;
        }
        let paths: Vec<String> = abs.iter().map(|p| p.display().to_string()).collect();
        let host = opts
            .common
            .hostname
            .clone()
            .unwrap_or_else(crate::repo::hostname);
        let parent = find_parent(repo, &host, &paths)?;
        Ok(Files {
            root,
            paths,
            excluder: Excluder::new(&opts.excludes)?,
            excludes: opts.excludes.clone(),
            parent,
            devices: opts.one_file_system.then_some(devices),
        })
    }
}

impl Source for Files {
    fn kind(&self) -> Kind {
        Kind::Files
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let Files {
            root,
            paths,
            excluder,
            excludes,
            parent,
            devices,
        } = *self;
        session.cache_trees();
        let mut a = Archiver {
            session,
            excluder,
            progress,
            size: 0,
            window: Vec::new(),
            rules: None,
            devices,
        };
        let parent_tree = parent.as_ref().and_then(|p| a.load_parent(&p.tree));
        let nodes = a.trie_nodes(&root, Path::new("/"), parent_tree.as_ref())?;
        Ok(Saved {
            nodes,
            sources: paths
                .iter()
                .map(|p| FilesInfo.entry(p, p))
                .collect::<Result<_>>()?,
            paths,
            size: a.size,
            // Only a parent whose trees were read: a write-only key without a cache of it
            // read every file.
            parent: parent.filter(|_| parent_tree.is_some()).map(|p| p.id),
            excludes,
            requires: Default::default(),
        })
    }
}

pub fn backup_files(
    repo: Arc<Repository>,
    opts: &FilesOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let files = Files::new(&repo, opts)?;
    run(repo, files, &opts.common, progress)
}
