//! Writing snapshots back: `restore` to a directory and `dump` of one file to a writer.
//!
//! Every blob is authenticated (Poly1305), decompressed and re-hashed against its id
//! before a byte of it is written. Files are written under a temporary name next to their
//! destination and renamed into place only when every chunk arrived verified, so a
//! corrupted repository never leaves a silently wrong file under the real name. Work is
//! grouped by pack: each pack is read once, by one of several parallel workers.

use crate::backend::FileKind;
use crate::crypto::compress;
use crate::error::{Error, ErrorKind};
use crate::id::Id;
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Node, NodeKind, Tree};
use crate::repo::Repository;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

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
    dest: PathBuf,
    tmp: PathBuf,
    node: Node,
    /// The temporary file exists (and must be removed if the restore of it fails).
    created: AtomicBool,
    /// Held while the temporary file is created, so exactly one worker creates it.
    create_lock: Mutex<()>,
    written: AtomicU64,
    remaining: AtomicUsize,
    failed: AtomicBool,
    /// `delta`: the destination already holds exactly this content.
    unchanged: AtomicBool,
}

struct BlobUse {
    file: usize,
    offset: u64,
}

/// The blobs needed from one pack, each with the places it goes.
type PackWork = Vec<(crate::repo::index::BlobLoc, Vec<BlobUse>)>;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn mtime_of(n: &Node) -> filetime::FileTime {
    let (secs, nsec) = crate::repo::tree::split_epoch_ns(n.mtime_ns);
    filetime::FileTime::from_unix_time(secs, nsec)
}

fn set_meta(path: &Path, n: &Node, symlink: bool) -> std::io::Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(n.uid), Some(n.gid))?;
    }
    let mtime = mtime_of(n);
    if symlink {
        filetime::set_symlink_file_times(path, mtime, mtime)
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(n.mode & 0o7777))?;
        filetime::set_file_times(path, mtime, mtime)
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

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, Node)>,
    files: Vec<FileJob>,
    /// `delta`: remove what the snapshot does not hold, and entries of the wrong type.
    delta: bool,
    /// `delta`: prune only at and below these snapshot paths (the backed-up paths), not in
    /// the directories above them that a snapshot merely mirrors; none: everywhere.
    prune_below: Option<Vec<String>>,
    removed: u64,
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

fn remove_any(path: &Path, is_dir: bool) -> Result<()> {
    let r = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.with_context(|| format!("cannot remove {}", path.display()))
}

/// `delta`: remove the entries of `dest` that `t` does not name.
fn prune_extra(t: &Tree, dest: &Path, out: &mut Plan) -> Result<()> {
    let rd = match fs::read_dir(dest) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", dest.display())))
        }
    };
    let names: std::collections::HashSet<&[u8]> =
        t.nodes.iter().map(|n| n.name.0.as_slice()).collect();
    for e in rd {
        let e = e.with_context(|| format!("cannot read {}", dest.display()))?;
        if !names.contains(e.file_name().as_bytes()) {
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            remove_any(&e.path(), is_dir)?;
            out.removed += 1;
        }
    }
    Ok(())
}

/// `delta`: remove `d` when it exists with another type than the node's. Returns whether
/// a regular file of the node's size is there (a candidate for keeping).
fn clear_mismatch(d: &Path, n: &Node, out: &mut Plan) -> Result<bool> {
    let Ok(m) = fs::symlink_metadata(d) else {
        return Ok(false);
    };
    let ft = m.file_type();
    let same = match n.kind {
        NodeKind::Dir => ft.is_dir(),
        NodeKind::Symlink => ft.is_symlink(),
        NodeKind::File | NodeKind::Stream => ft.is_file(),
    };
    if !same {
        remove_any(d, ft.is_dir())?;
        out.removed += 1;
        return Ok(false);
    }
    Ok(ft.is_file() && m.len() == n.size)
}

fn plan(
    repo: &Repository,
    index: &MasterIndex,
    tree: &Id,
    snap_path: &str,
    dest: &Path,
    includes: &[String],
    out: &mut Plan,
) -> Result<()> {
    let t: Tree = repo.load_tree(index, tree)?;
    if includes.is_empty() && out.prunes(snap_path) {
        prune_extra(&t, dest, out)?;
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
        let d = dest.join(&name);
        let in_place = out.delta && take && clear_mismatch(&d, &n, out)?;
        match n.kind {
            NodeKind::Dir => {
                if let Some(sub) = n.subtree {
                    plan(repo, index, &sub, &p, &d, includes, out)?;
                }
                out.dirs.push((d, n));
            }
            _ if !take => {}
            NodeKind::Symlink => out.links.push((d, n)),
            NodeKind::File | NodeKind::Stream => {
                let mut tmpname = OsString::from(".");
                tmpname.push(&name);
                tmpname.push(format!(".coffer-restore-{}", std::process::id()));
                out.files.push(FileJob {
                    tmp: dest.join(tmpname),
                    dest: d,
                    remaining: AtomicUsize::new(n.content.len()),
                    node: n,
                    created: AtomicBool::new(false),
                    create_lock: Mutex::new(()),
                    written: AtomicU64::new(0),
                    failed: AtomicBool::new(false),
                    unchanged: AtomicBool::new(in_place),
                });
            }
        }
    }
    Ok(())
}

/// Create the temporary file (replacing a stale one) or, once created, open it again.
fn open_tmp(job: &FileJob) -> std::io::Result<fs::File> {
    let _guard = job.create_lock.lock().unwrap_or_else(|e| e.into_inner());
    if job.created.load(Ordering::SeqCst) {
        return OpenOptions::new().write(true).open(&job.tmp);
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&job.tmp)?;
    job.created.store(true, Ordering::SeqCst);
    Ok(f)
}

/// Check the size, set metadata (through `file` when the caller has it open) and rename
/// the temporary file into place.
fn finalize(job: &FileJob, file: Option<&fs::File>) -> std::io::Result<()> {
    let written = job.written.load(Ordering::SeqCst);
    if written != job.node.size {
        return Err(std::io::Error::other(format!(
            "wrote {written} bytes, the snapshot records {}",
            job.node.size
        )));
    }
    match file {
        Some(f) => {
            let n = &job.node;
            if is_root() {
                std::os::unix::fs::fchown(f, Some(n.uid), Some(n.gid))?;
            }
            f.set_permissions(fs::Permissions::from_mode(n.mode & 0o7777))?;
            let mtime = mtime_of(n);
            filetime::set_file_handle_times(f, Some(mtime), Some(mtime))?;
        }
        None => set_meta(&job.tmp, &job.node, false)?,
    }
    fs::rename(&job.tmp, &job.dest)
}

/// `delta`: confirm, in parallel, which candidate files already hold their content. A
/// candidate is read in the lengths of its recorded chunks (from the index), and each piece
/// is hashed with the repository's id key and compared with the chunk's id: if the content
/// is the same, so are the chunk boundaries, and any difference changes a hash. Big files
/// are split into pieces of about 32 MiB so that both cores share them.
fn keep_unchanged(repo: &Repository, index: &MasterIndex, files: &[FileJob], progress: &Progress) {
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
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut buf = Vec::new();
                let mut open: Option<(usize, fs::File)> = None;
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
                        open = fs::File::open(&job.dest).ok().map(|f| (*i, f));
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
                            f.read_exact_at(&mut buf, at).is_ok() && repo.key.blob_id(&buf) == *id;
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
        dirs: vec![],
        links: vec![],
        files: vec![],
        delta: opts.delta,
        // A subtree (a data directory) is restored as a whole; a snapshot's root mirrors
        // the absolute paths above what was backed up, which are not ours to clean.
        prune_below: opts.tree.is_none().then(|| snap.paths.clone()),
        removed: 0,
    };
    let root = opts.tree.unwrap_or(snap.tree);
    plan(repo, index, &root, "", &opts.target, &includes, &mut p)?;
    if opts.delta {
        keep_unchanged(repo, index, &p.files, progress);
    }
    if !includes.is_empty() && p.files.is_empty() && p.links.is_empty() && p.dirs.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("nothing in the snapshot matches {:?}", opts.includes),
        )
        .into());
    }
    let mut report = RestoreReport::default();
    fs::create_dir_all(&opts.target)
        .with_context(|| format!("cannot create {}", opts.target.display()))?;
    // Directories (parents before children: they were pushed children first).
    for (d, _) in p.dirs.iter().rev() {
        fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    for (d, n) in &p.links {
        if let Some(parent) = d.parent() {
            fs::create_dir_all(parent)?;
        }
        let _ = fs::remove_file(d);
        let target = n.target.clone().unwrap_or_default().to_os();
        std::os::unix::fs::symlink(&target, d)
            .with_context(|| format!("cannot create symlink {}", d.display()))?;
        set_meta(d, n, true).with_context(|| format!("cannot set metadata of {}", d.display()))?;
        report.symlinks += 1;
    }

    // Files: map every chunk to its places. Nothing is created before the whole plan is
    // known to be complete; the workers create each temporary file on its first write.
    let mut by_pack: HashMap<u32, PackWork> = HashMap::new();
    let mut blob_slot: HashMap<Id, (u32, usize)> = HashMap::new();
    for (i, job) in p.files.iter().enumerate() {
        if job.unchanged.load(Ordering::SeqCst) {
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
    for job in &p.files {
        if job.unchanged.load(Ordering::SeqCst) {
            if let Err(e) = set_meta(&job.dest, &job.node, false) {
                fail(job, format!("cannot set metadata: {e}"));
            }
        }
    }
    // Empty files are complete once created.
    for job in &p.files {
        if job.node.content.is_empty() && !job.unchanged.load(Ordering::SeqCst) {
            if let Err(e) = open_tmp(job).and_then(|f| finalize(job, Some(&f))) {
                fail(job, format!("cannot create {}: {e}", job.tmp.display()));
            }
        }
    }
    // Work items: runs of blobs from one pack spanning at most SPAN bytes, read with one
    // request each. Small items keep memory low and all workers busy.
    const SPAN: u64 = 8 << 20;
    let mut work: Vec<(u32, PackWork)> = Vec::new();
    for (pack, mut blobs) in by_pack {
        blobs.sort_by_key(|b| b.0.entry.offset);
        let mut cur: PackWork = Vec::new();
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
                let mut handles: HashMap<usize, std::fs::File> = HashMap::new();
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
                    let read = repo.backend.read_range_into(
                        FileKind::Pack,
                        &pack_id.to_hex(),
                        start,
                        span,
                    );
                    for (loc, uses) in blobs {
                        let data = match &read {
                            Ok(()) => {
                                let s = (loc.entry.offset as u64 - start) as usize;
                                let sealed = &mut span[s..s + loc.entry.length as usize];
                                repo.open_blob_in_place(
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
                                    open_tmp(job).map(|f| v.insert(f))
                                }
                            };
                            let res = f.and_then(|f| f.write_all_at(d, u.offset)).map_err(|e| {
                                io_failed.store(true, Ordering::SeqCst);
                                format!("cannot write {}: {e}", job.tmp.display())
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
                                if let Err(e) = finalize(job, f.as_ref()) {
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
            if job.created.load(Ordering::SeqCst) {
                let _ = fs::remove_file(&job.tmp);
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
    report.removed = p.removed;
    // Directory metadata last, deepest first, so writing files does not disturb mtimes.
    for (d, n) in &p.dirs {
        set_meta(d, n, false).with_context(|| format!("cannot set metadata of {}", d.display()))?;
        report.dirs += 1;
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
            match out.write_all(&data) {
                Ok(()) => written += data.len() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(written),
                Err(e) => return Err(e.into()),
            }
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
