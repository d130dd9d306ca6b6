//! Writing snapshots back: `restore` to a directory and `dump` of one file to a writer.
//!
//! Every blob is authenticated (Poly1305), decompressed and re-hashed against its id
//! before a byte of it is written. Files are written under a temporary name next to their
//! destination and renamed into place only when every chunk arrived verified, so a
//! corrupted repository never leaves a silently wrong file under the real name. Work is
//! grouped by pack: each pack is read once, by one of several parallel workers.
//!
//! Nothing below the target is reached by path: every directory is opened from its parent's
//! descriptor without following symlinks, files are created exclusively under unpredictable
//! temporary names, and metadata is set through descriptors ([`crate::safefs`]), so links
//! planted in the target cannot redirect a write, chmod or chown outside it. With
//! [`RestoreOptions::sync`] (always for `restore --pgdata`), write-back of each file starts
//! when it is complete and the target's file system is synced once at the end (`syncfs`),
//! not file by file.

use super::crypto::compress;
use super::id::Id;
use crate::backend::FileKind;
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::repo::Repository;
use crate::safefs::{self, Meta, Replace};
use anyhow::{Context, Result};
use rustix::fs::FileType;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (everything when empty).
    pub includes: Vec<String>,
    /// Restore this tree of the snapshot (a directory inside it) instead of the root.
    pub tree: Option<Id>,
    /// Restore into a directory that already holds an older copy: a file whose content
    /// already matches (same size, and the same chunk ids when read and hashed here) is
    /// kept and only its metadata set; whatever the snapshot does not hold is removed
    /// (only when everything is restored, not with `includes`).
    pub delta: bool,
    /// Make everything written durable before returning: write-back of each file starts
    /// when it is complete, and the target's file system is synced once at the end. Without
    /// it (as with restic, tar or rsync) the kernel writes the files back in its own time.
    pub sync: bool,
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Files of `bytes` found already in place with the right content (`delta`).
    pub unchanged: u64,
    /// Bytes of those files.
    pub unchanged_bytes: u64,
    /// Entries removed from the target because the snapshot does not hold them (`delta`).
    pub removed: u64,
    pub errors: Vec<String>,
}

struct FileJob {
    /// The directory it goes into (an index into the plan's directories) and its name.
    dir: usize,
    name: OsString,
    /// Its path, for messages.
    dest: PathBuf,
    node: Node,
    /// Once created: the temporary file's name and (device, inode).
    tmp: OnceLock<(OsString, (u64, u64))>,
    /// Held while the temporary file is created or opened again, so exactly one worker
    /// creates it.
    create_lock: Mutex<()>,
    written: AtomicU64,
    remaining: AtomicUsize,
    failed: AtomicBool,
    /// `delta`: the destination already holds exactly this content.
    unchanged: AtomicBool,
    /// `delta`: the (device, inode) of the existing file that was checked.
    existing: OnceLock<(u64, u64)>,
}

impl FileJob {
    fn tmp_path(&self) -> PathBuf {
        let tmp = self.tmp.get().map(|t| t.0.clone()).unwrap_or_default();
        self.dest.with_file_name(tmp)
    }
}

struct BlobUse {
    file: usize,
    offset: u64,
}

/// The blobs needed from one pack, each with the places it goes.
type PackWork = Vec<(crate::repo::index::BlobLoc, Vec<BlobUse>)>;

/// The most bytes one read of a pack covers.
const SPAN: u64 = 8 << 20;

/// Work items for reading blobs pack by pack: runs of blobs from one pack, in offset
/// order, each spanning at most [`SPAN`] bytes and read with one request. Small items keep
/// memory low and all workers busy. Used by restore and by the verify pass.
pub(crate) fn pack_runs<T>(
    by_pack: HashMap<u32, Vec<(crate::repo::index::BlobLoc, T)>>,
) -> Vec<(u32, Vec<(crate::repo::index::BlobLoc, T)>)> {
    let mut work = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|b| b.0.entry.offset);
        let mut cur = Vec::new();
        let mut start = 0u64;
        for b in blobs {
            let off = b.0.entry.offset as u64;
            if !cur.is_empty() && off + b.0.entry.length as u64 - start > SPAN {
                work.push((pack, std::mem::take(&mut cur)));
            }
            if cur.is_empty() {
                start = off;
            }
            cur.push(b);
        }
        if !cur.is_empty() {
            work.push((pack, cur));
        }
    }
    work
}

fn meta_of(n: &Node, mode: bool) -> Meta {
    Meta {
        owner: Some((n.uid, n.gid)),
        mode: mode.then_some(n.mode),
        mtime: Some(crate::repo::tree::split_epoch_ns(n.mtime_ns)),
    }
}

/// Should `path` (inside the snapshot) be restored, and should we descend into it?
fn selected(path: &str, includes: &[String]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, true);
    }
    let mut descend = false;
    for inc in includes {
        if path == inc || path.starts_with(&format!("{inc}/")) {
            return (true, true);
        }
        if inc.starts_with(&format!("{path}/")) {
            descend = true;
        }
    }
    (descend, descend)
}

/// A directory of the target: the root (index 0) or one the snapshot holds.
struct DirSlot {
    /// Index of the parent (the root is its own).
    parent: usize,
    name: OsString,
    path: PathBuf,
    node: Option<Node>,
    /// `delta`: the names to keep in it; everything else is removed.
    keep: Option<HashSet<Vec<u8>>>,
}

struct Link {
    dir: usize,
    name: OsString,
    path: PathBuf,
    node: Node,
}

struct Plan {
    /// Parents before children: a directory's index is above its parent's.
    dirs: Vec<DirSlot>,
    links: Vec<Link>,
    files: Vec<FileJob>,
    /// `delta`: remove what the snapshot does not hold, and entries of the wrong type.
    delta: bool,
    /// `delta`: prune only at and below these snapshot paths (the backed-up paths), not in
    /// the directories above them that a snapshot merely mirrors; none: everywhere.
    prune_below: Option<Vec<String>>,
}

impl Plan {
    fn prunes(&self, snap_path: &str) -> bool {
        self.delta
            && self.prune_below.as_ref().is_none_or(|roots| {
                roots.iter().any(|r| {
                    let r = r.trim_end_matches('/');
                    r.is_empty() || snap_path == r || snap_path.starts_with(&format!("{r}/"))
                })
            })
    }
}

/// The target's directories, opened on demand from their parents (never following a
/// symlink), with a bounded number kept open.
struct Dirs {
    slots: Vec<DirSlot>,
    open: Mutex<HashMap<usize, Arc<OwnedFd>>>,
    cap: usize,
}

impl Dirs {
    fn new(slots: Vec<DirSlot>, root: OwnedFd) -> Dirs {
        // A share of the descriptor limit: workers also hold files open.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur
        } else {
            1024
        };
        let cap = (soft / 8).clamp(4, 256) as usize;
        Dirs {
            slots,
            open: Mutex::new(HashMap::from([(0, Arc::new(root))])),
            cap,
        }
    }

    fn root(&self) -> Arc<OwnedFd> {
        self.get(0).expect("the root is always open")
    }

    fn remember(&self, open: &mut HashMap<usize, Arc<OwnedFd>>, i: usize, fd: Arc<OwnedFd>) {
        while open.len() >= self.cap {
            let Some(k) = open.keys().copied().find(|k| *k != 0) else {
                break;
            };
            open.remove(&k);
        }
        open.insert(i, fd);
    }

    fn insert(&self, i: usize, fd: OwnedFd) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        self.remember(&mut open, i, Arc::new(fd));
    }

    /// Directory `i`, walked down from the nearest open ancestor.
    fn get(&self, i: usize) -> std::io::Result<Arc<OwnedFd>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = open.get(&i) {
            return Ok(fd.clone());
        }
        let mut chain = vec![i];
        let mut at = self.slots[i].parent;
        while !open.contains_key(&at) {
            chain.push(at);
            at = self.slots[at].parent;
        }
        let mut fd = open[&at].clone();
        for &k in chain.iter().rev() {
            fd = Arc::new(safefs::open_dir(fd.as_fd(), &self.slots[k].name)?);
            self.remember(&mut open, k, fd.clone());
        }
        Ok(fd)
    }
}

/// `delta`: remove the entries of a directory that are not in `keep`.
fn prune_extra(
    dir: std::os::fd::BorrowedFd<'_>,
    keep: &HashSet<Vec<u8>>,
    path: &std::path::Path,
) -> Result<u64> {
    let mut removed = 0;
    for name in safefs::entries(dir).with_context(|| format!("cannot read {}", path.display()))? {
        if !keep.contains(name.as_bytes()) {
            safefs::remove(dir, &name)
                .with_context(|| format!("cannot remove {}", path.join(&name).display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Walk the snapshot's trees (nothing on disk is touched here).
fn plan(
    repo: &Repository,
    index: &MasterIndex,
    tree: &Id,
    snap_path: &str,
    dir: usize,
    includes: &[String],
    out: &mut Plan,
) -> Result<()> {
    let t: Tree = repo.load_tree(index, tree)?;
    if includes.is_empty() && out.prunes(snap_path) {
        out.dirs[dir].keep = Some(t.nodes.iter().map(|n| n.name.0.clone()).collect());
    }
    for n in t.nodes {
        let name = n.name.to_os();
        if !crate::repo::tree::valid_name(&n.name.0) {
            return Err(Error::integrity(format!(
                "snapshot contains an invalid name {:?}",
                n.name.display()
            ))
            .into());
        }
        let p = format!("{snap_path}/{}", n.name.display());
        let (take, descend) = selected(&p, includes);
        if !take && !descend {
            continue;
        }
        let path = out.dirs[dir].path.join(&name);
        match n.kind {
            NodeKind::Dir => {
                let sub = n.subtree;
                out.dirs.push(DirSlot {
                    parent: dir,
                    name,
                    path,
                    node: Some(n),
                    keep: None,
                });
                if let Some(sub) = sub {
                    let i = out.dirs.len() - 1;
                    plan(repo, index, &sub, &p, i, includes, out)?;
                }
            }
            _ if !take => {}
            NodeKind::Symlink => out.links.push(Link {
                dir,
                name,
                path,
                node: n,
            }),
            NodeKind::File | NodeKind::Stream => out.files.push(FileJob {
                dir,
                name,
                dest: path,
                remaining: AtomicUsize::new(n.content.len()),
                node: n,
                tmp: OnceLock::new(),
                create_lock: Mutex::new(()),
                written: AtomicU64::new(0),
                failed: AtomicBool::new(false),
                unchanged: AtomicBool::new(false),
                existing: OnceLock::new(),
            }),
        }
    }
    Ok(())
}

/// `delta`: remove what stands where a file or symlink goes when its type differs.
/// Returns whether a regular file of the node's size is there (a candidate for keeping).
fn clear_mismatch(
    dirs: &Dirs,
    dir: usize,
    name: &std::ffi::OsStr,
    n: &Node,
) -> Result<(bool, u64)> {
    let d = dirs.get(dir)?;
    let path = || dirs.slots[dir].path.join(name);
    let Some(st) = safefs::lstat_at(d.as_fd(), name)
        .with_context(|| format!("cannot read {}", path().display()))?
    else {
        return Ok((false, 0));
    };
    let ft = safefs::file_type(&st);
    let want = if n.kind == NodeKind::Symlink {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    if ft != want {
        safefs::remove(d.as_fd(), name)
            .with_context(|| format!("cannot remove {}", path().display()))?;
        return Ok((false, 1));
    }
    Ok((
        ft == FileType::RegularFile && st.st_size as u64 == n.size,
        0,
    ))
}

/// Create the temporary file (exclusively, under a new random name) or, once created,
/// open it again (only if it is still the file created).
fn open_tmp(job: &FileJob, dirs: &Dirs) -> std::io::Result<File> {
    let _guard = job.create_lock.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dirs.get(job.dir)?;
    if let Some((tmp, ident)) = job.tmp.get() {
        return safefs::reopen_temp(dir.as_fd(), tmp, *ident);
    }
    let (tmp, f, ident) = safefs::create_temp(dir.as_fd(), &job.name)?;
    let _ = job.tmp.set((tmp, ident));
    Ok(f)
}

/// Check the size, set metadata (through the caller's open handle, or one opened again)
/// and rename the temporary file into place.
fn finalize(job: &FileJob, file: Option<File>, dirs: &Dirs, sync: bool) -> std::io::Result<()> {
    let written = job.written.load(Ordering::SeqCst);
    if written != job.node.size {
        return Err(std::io::Error::other(format!(
            "wrote {written} bytes, the snapshot records {}",
            job.node.size
        )));
    }
    let Some((tmp, ident)) = job.tmp.get() else {
        return Err(std::io::Error::other("no temporary file was created"));
    };
    let dir = dirs.get(job.dir)?;
    let f = match file {
        Some(f) => f,
        None => safefs::reopen_temp(dir.as_fd(), tmp, *ident)?,
    };
    safefs::set_meta(f.as_fd(), &meta_of(&job.node, true))?;
    if sync {
        safefs::start_writeback(&f);
    }
    drop(f);
    safefs::rename(dir.as_fd(), tmp, &job.name)
}

/// `delta`: confirm, in parallel, which candidate files already hold their content. A
/// candidate is read in the lengths of its recorded chunks (from the index), and each piece
/// is hashed with the repository's id key and compared with the chunk's id: if the content
/// is the same, so are the chunk boundaries, and any difference changes a hash. Big files
/// are split into pieces of about 32 MiB so that both cores share them. Only a regular file
/// with a single link is read (one with more may be a hard link to a file outside the
/// target, whose metadata must not be set); anything else is rewritten.
fn keep_unchanged(
    repo: &Repository,
    index: &MasterIndex,
    files: &[FileJob],
    dirs: &Dirs,
    progress: &Progress,
) {
    const PIECE: u64 = 32 << 20;
    // Per piece: the file, the piece's offset in it, its chunks with their lengths.
    type Piece = (usize, u64, Vec<(Id, u32)>);
    let mut pieces: Vec<Piece> = Vec::new();
    for (i, job) in files.iter().enumerate() {
        if !job.unchanged.load(Ordering::Relaxed) {
            continue;
        }
        let mut off = 0u64;
        let mut cur: Vec<(Id, u32)> = Vec::new();
        let mut cur_off = 0u64;
        let mut cur_len = 0u64;
        for c in &job.node.content {
            let Some(loc) = index.get(c) else {
                // The plan reports the damage; here it only means "not known to match".
                job.unchanged.store(false, Ordering::Relaxed);
                break;
            };
            let len = loc.entry.raw_length;
            if cur_len > 0 && cur_len + len as u64 > PIECE {
                pieces.push((i, cur_off, std::mem::take(&mut cur)));
                cur_off = off;
                cur_len = 0;
            }
            cur.push((*c, len));
            cur_len += len as u64;
            off += len as u64;
        }
        if !cur.is_empty() {
            pieces.push((i, cur_off, cur));
        }
        if off != job.node.size {
            job.unchanged.store(false, Ordering::Relaxed);
        }
    }
    // Opens the existing file, records (or compares) which inode was checked.
    let open_existing = |job: &FileJob| -> Option<File> {
        let dir = dirs.get(job.dir).ok()?;
        let (f, st) = safefs::open_existing(dir.as_fd(), &job.name).ok()??;
        let ident = (st.st_dev, st.st_ino);
        (st.st_size as u64 == job.node.size && *job.existing.get_or_init(|| ident) == ident)
            .then_some(f)
    };
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut buf = Vec::new();
                let mut open: Option<(usize, File)> = None;
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, offset, chunks)) = pieces.get(k) else {
                        break;
                    };
                    let job = &files[*i];
                    if !job.unchanged.load(Ordering::Relaxed) {
                        continue;
                    }
                    if open.as_ref().is_none_or(|(f, _)| f != i) {
                        open = open_existing(job).map(|f| (*i, f));
                    }
                    let Some((_, f)) = &open else {
                        job.unchanged.store(false, Ordering::Relaxed);
                        continue;
                    };
                    let mut at = *offset;
                    let mut bytes = 0u64;
                    for (id, len) in chunks {
                        buf.resize(*len as usize, 0);
                        let same =
                            f.read_exact_at(&mut buf, at).is_ok() && repo.keys.blob_id(&buf) == *id;
                        if !same {
                            job.unchanged.store(false, Ordering::Relaxed);
                            break;
                        }
                        at += *len as u64;
                        bytes += *len as u64;
                    }
                    progress.inc(bytes);
                }
            });
        }
    });
    // Empty files have no pieces: check them here.
    for job in files {
        if job.unchanged.load(Ordering::Relaxed)
            && job.node.content.is_empty()
            && open_existing(job).is_none()
        {
            job.unchanged.store(false, Ordering::Relaxed);
        }
    }
}

/// Set the metadata of a file kept in place, through a descriptor, if it is still the
/// inode that was checked.
fn set_kept_meta(job: &FileJob, dirs: &Dirs) -> std::io::Result<bool> {
    let dir = dirs.get(job.dir)?;
    let Some((f, st)) = safefs::open_existing(dir.as_fd(), &job.name)? else {
        return Ok(false);
    };
    if job.existing.get() != Some(&(st.st_dev, st.st_ino)) || st.st_size as u64 != job.node.size {
        return Ok(false);
    }
    safefs::set_meta(f.as_fd(), &meta_of(&job.node, true))?;
    Ok(true)
}

pub fn restore(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    let includes: Vec<String> = opts
        .includes
        .iter()
        .map(|i| format!("/{}", i.trim_matches('/')))
        .collect();
    let mut p = Plan {
        dirs: vec![DirSlot {
            parent: 0,
            name: OsString::new(),
            path: opts.target.clone(),
            node: None,
            keep: None,
        }],
        links: vec![],
        files: vec![],
        delta: opts.delta,
        // A subtree (a data directory) is restored as a whole; a snapshot's root mirrors
        // the absolute paths above what was backed up, which are not ours to clean.
        prune_below: opts.tree.is_none().then(|| snap.paths.clone()),
    };
    let root = opts.tree.unwrap_or(snap.tree);
    plan(repo, index, &root, "", 0, &includes, &mut p)?;
    if !includes.is_empty() && p.files.is_empty() && p.links.is_empty() && p.dirs.len() == 1 {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("nothing in the snapshot matches {:?}", opts.includes),
        )
        .into());
    }
    let mut report = RestoreReport::default();
    let root_fd = safefs::open_root(&opts.target)
        .with_context(|| format!("cannot create {}", opts.target.display()))?;
    let dirs = Dirs::new(std::mem::take(&mut p.dirs), root_fd);
    // Directories, parents first. Where the target has a symlink (with --delta: anything
    // but a directory), it is replaced by a directory; with --delta, entries the snapshot
    // does not hold are removed before anything is written.
    let replace = if opts.delta {
        Replace::Anything
    } else {
        Replace::Links
    };
    if let Some(keep) = &dirs.slots[0].keep {
        report.removed += prune_extra(dirs.root().as_fd(), keep, &opts.target)?;
    }
    for (i, s) in dirs.slots.iter().enumerate().skip(1) {
        let parent = dirs.get(s.parent)?;
        let (fd, removed) = safefs::ensure_dir(parent.as_fd(), &s.name, replace)
            .with_context(|| format!("cannot create {}", s.path.display()))?;
        if removed && opts.delta {
            report.removed += 1;
        }
        if let Some(keep) = &s.keep {
            report.removed += prune_extra(fd.as_fd(), keep, &s.path)?;
        }
        dirs.insert(i, fd);
    }
    if opts.delta {
        for l in &p.links {
            report.removed += clear_mismatch(&dirs, l.dir, &l.name, &l.node)?.1;
        }
        for job in &p.files {
            let (candidate, removed) = clear_mismatch(&dirs, job.dir, &job.name, &job.node)?;
            report.removed += removed;
            job.unchanged.store(candidate, Ordering::SeqCst);
        }
        keep_unchanged(repo, index, &p.files, &dirs, progress);
    }
    for l in &p.links {
        let d = dirs.get(l.dir)?;
        let target = l.node.target.clone().unwrap_or_default().to_os();
        safefs::symlink(d.as_fd(), &l.name, &target, &meta_of(&l.node, false))
            .with_context(|| format!("cannot create symlink {}", l.path.display()))?;
        report.symlinks += 1;
    }

    let errors = Mutex::new(Vec::<String>::new());
    let io_failed = AtomicBool::new(false);
    let damaged = AtomicBool::new(false);
    let fail = |job: &FileJob, msg: String| {
        if !job.failed.swap(true, Ordering::SeqCst) {
            errors
                .lock()
                .unwrap()
                .push(format!("{}: {msg}", job.dest.display()));
        }
    };
    // Files kept in place get their metadata; one that changed since it was checked is
    // written like any other.
    for job in &p.files {
        if job.unchanged.load(Ordering::SeqCst) {
            match set_kept_meta(job, &dirs) {
                Ok(true) => {}
                Ok(false) => job.unchanged.store(false, Ordering::SeqCst),
                Err(e) => fail(job, format!("cannot set metadata: {e}")),
            }
        }
    }

    // Files: map every chunk to its places. Nothing is created before the whole plan is
    // known to be complete; the workers create each temporary file on its first write.
    let mut by_pack: HashMap<u32, PackWork> = HashMap::new();
    let mut blob_slot: HashMap<Id, (u32, usize)> = HashMap::new();
    for (i, job) in p.files.iter().enumerate() {
        if job.unchanged.load(Ordering::SeqCst) || job.failed.load(Ordering::SeqCst) {
            continue;
        }
        let mut off = 0u64;
        for c in &job.node.content {
            let loc = index.get(c).ok_or_else(|| {
                Error::integrity(format!(
                    "chunk {} of {} is not in the index (repository damaged)",
                    c.short(),
                    job.dest.display()
                ))
            })?;
            let use_ = BlobUse {
                file: i,
                offset: off,
            };
            off += loc.entry.raw_length as u64;
            match blob_slot.get(c) {
                Some(&(pack, k)) => by_pack.get_mut(&pack).unwrap()[k].1.push(use_),
                None => {
                    let v = by_pack.entry(loc.pack).or_default();
                    blob_slot.insert(*c, (loc.pack, v.len()));
                    v.push((loc, vec![use_]));
                }
            }
        }
        if off != job.node.size {
            return Err(Error::integrity(format!(
                "{}: chunk sizes do not add up to the file size",
                job.dest.display()
            ))
            .into());
        }
    }
    // Empty files are complete once created.
    for job in &p.files {
        if job.node.content.is_empty()
            && !job.unchanged.load(Ordering::SeqCst)
            && !job.failed.load(Ordering::SeqCst)
        {
            if let Err(e) =
                open_tmp(job, &dirs).and_then(|f| finalize(job, Some(f), &dirs, opts.sync))
            {
                fail(
                    job,
                    format!("cannot create {}: {e}", job.tmp_path().display()),
                );
            }
        }
    }
    let work = pack_runs(by_pack);
    let next = AtomicUsize::new(0);
    // Twice the cores: a worker waiting on storage or the page cache leaves a core idle.
    let threads = repo.backend.concurrency().max(
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    );
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut handles: HashMap<usize, File> = HashMap::new();
                let mut buf: Vec<u8> = Vec::new();
                let mut decoder = compress::Decoder::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((pack, blobs)) = work.get(i) else {
                        break;
                    };
                    let pack_id = index.packs[*pack as usize].id;
                    let start = blobs
                        .iter()
                        .map(|b| b.0.entry.offset as u64)
                        .min()
                        .unwrap_or(0);
                    let end = blobs
                        .iter()
                        .map(|b| b.0.entry.offset as u64 + b.0.entry.length as u64)
                        .max()
                        .unwrap_or(0);
                    let len = (end - start) as usize;
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    let span = &mut buf[..len];
                    let read = repo
                        .content_key(index.packs[*pack as usize].ephemeral.as_ref())
                        .and_then(|key| {
                            repo.backend
                                .read_range_into(FileKind::Pack, &pack_id.to_hex(), start, span)
                                .map(|()| key)
                        });
                    for (loc, uses) in blobs {
                        let data = match &read {
                            Ok(key) => {
                                let s = (loc.entry.offset as u64 - start) as usize;
                                let sealed = &mut span[s..s + loc.entry.length as usize];
                                repo.open_blob_in_place(
                                    key,
                                    sealed,
                                    &loc.entry.id,
                                    loc.entry.raw_length,
                                    &mut decoder,
                                )
                                .map_err(|e| {
                                    damaged.store(true, Ordering::SeqCst);
                                    format!("{e:#} (pack {pack_id})")
                                })
                            }
                            Err(e) => {
                                if coffer_kind(e) == ErrorKind::Integrity {
                                    damaged.store(true, Ordering::SeqCst);
                                } else {
                                    io_failed.store(true, Ordering::SeqCst);
                                }
                                Err(format!("{e:#}"))
                            }
                        };
                        for u in uses {
                            let job = &p.files[u.file];
                            if job.failed.load(Ordering::Relaxed) {
                                continue;
                            }
                            let d = match &data {
                                Ok(d) => *d,
                                Err(m) => {
                                    fail(job, m.clone());
                                    continue;
                                }
                            };
                            // A few handles per worker, so many small files do not exhaust
                            // file descriptors and big files are not reopened.
                            if !handles.contains_key(&u.file) && handles.len() >= 16 {
                                handles.clear();
                            }
                            let f = match handles.entry(u.file) {
                                std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                                std::collections::hash_map::Entry::Vacant(v) => {
                                    open_tmp(job, &dirs).map(|f| v.insert(f))
                                }
                            };
                            let res = f.and_then(|f| f.write_all_at(d, u.offset)).map_err(|e| {
                                io_failed.store(true, Ordering::SeqCst);
                                format!("cannot write {}: {e}", job.tmp_path().display())
                            });
                            if let Err(m) = res {
                                fail(job, m);
                                continue;
                            }
                            job.written.fetch_add(d.len() as u64, Ordering::SeqCst);
                            progress.inc(d.len() as u64);
                            if job.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                                // The last chunk: this worker has the file open.
                                let f = handles.remove(&u.file);
                                if let Err(e) = finalize(job, f, &dirs, opts.sync) {
                                    fail(job, e.to_string());
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    for job in &p.files {
        if job.failed.load(Ordering::SeqCst) {
            if let Some((tmp, _)) = job.tmp.get() {
                if let Ok(d) = dirs.get(job.dir) {
                    let _ = safefs::unlink(d.as_fd(), tmp);
                }
            }
        } else {
            report.files += 1;
            report.bytes += job.node.size;
            if job.unchanged.load(Ordering::SeqCst) {
                report.unchanged += 1;
                report.unchanged_bytes += job.node.size;
            }
        }
    }
    // Directory metadata last, deepest first (children have higher indexes than their
    // parents), so writing files does not disturb mtimes.
    for (i, s) in dirs.slots.iter().enumerate().skip(1).rev() {
        let Some(n) = &s.node else { continue };
        dirs.get(i)
            .and_then(|fd| safefs::set_meta(fd.as_fd(), &meta_of(n, true)))
            .with_context(|| format!("cannot set metadata of {}", s.path.display()))?;
        report.dirs += 1;
    }
    // With `sync`, everything written, renamed and removed reaches the disk before restore
    // reports success (and before `restore --pgdata` writes recovery.signal).
    if opts.sync {
        safefs::sync_fs(dirs.root().as_fd()).with_context(|| {
            format!(
                "cannot flush the restored files in {} to disk",
                opts.target.display()
            )
        })?;
    }
    report.errors = errors.into_inner().unwrap();
    if !report.errors.is_empty() {
        let (kind, why) = if damaged.load(Ordering::SeqCst) {
            (ErrorKind::Integrity, "repository data is damaged")
        } else if io_failed.load(Ordering::SeqCst) {
            (
                ErrorKind::Other,
                "reading the repository or writing the target failed",
            )
        } else {
            (ErrorKind::Other, "of the errors below")
        };
        return Err(Error::new(
            kind,
            format!(
                "{} file(s) could not be restored because {why}; they were not written:\n  {}",
                report.errors.len(),
                report.errors.join("\n  ")
            ),
        )
        .into());
    }
    Ok(report)
}

fn coffer_kind(e: &anyhow::Error) -> ErrorKind {
    crate::error::kind_of(e)
}

/// Find the node at `path` (e.g. `/srv/app/config.toml`) in a snapshot.
pub fn find_node(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: &str,
) -> Result<Node> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        return Err(Error::usage("give the path of a file inside the snapshot").into());
    }
    let mut tree = snap.tree;
    for (i, part) in parts.iter().enumerate() {
        let t = repo.load_tree(index, &tree)?;
        let n = t.find(part.as_bytes()).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{path} is not in snapshot {}", snap.id.short()),
            )
        })?;
        if i + 1 == parts.len() {
            return Ok(n);
        }
        tree = n.subtree.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("{path} is not in snapshot {}", snap.id.short()),
            )
        })?;
    }
    unreachable!()
}

/// Write one file or stream of a snapshot to `out`, verifying every chunk.
pub fn dump(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    let n = find_node(repo, index, snap, path)?;
    if !matches!(n.kind, NodeKind::File | NodeKind::Stream) {
        return Err(Error::usage(format!("{path} is not a file or stream")).into());
    }
    // Read ahead on a helper thread so storage latency overlaps writing.
    let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<u8>>>(4);
    let content = &n.content;
    let written = std::thread::scope(|sc| -> Result<u64> {
        let mut written = 0u64;
        sc.spawn(move || {
            for c in content {
                if tx.send(repo.read_blob(index, c)).is_err() {
                    return;
                }
            }
        });
        let rx = rx;
        for data in rx.iter() {
            let data = data?;
            // A reader that went away (EPIPE) is an error too: the caller knows whether
            // that ends its work or fails it.
            out.write_all(&data)?;
            written += data.len() as u64;
        }
        Ok(written)
    })?;
    out.flush()?;
    if written != n.size {
        return Err(Error::integrity(format!(
            "{path}: wrote {written} bytes, the snapshot records {}",
            n.size
        ))
        .into());
    }
    Ok(written)
}

/// Name bytes as a display string for `ls`.
pub fn display_name(n: &Node) -> String {
    String::from_utf8_lossy(n.name.0.as_slice()).into_owned()
}

pub fn os_name(n: &Node) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(&n.name.0)
}
