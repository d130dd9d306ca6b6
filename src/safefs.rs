//! File system operations below a directory that coffer writes into (a restore target, a
//! data directory, a `dump --out` directory) that never follow a symbolic link and never
//! write into, chmod or chown an inode that may also be reachable from outside it.
//!
//! The directory itself is opened by its path as the user gave it (that path is trusted:
//! it may be a symlink). Everything below it is reached through directory file
//! descriptors, one name at a time, with `O_NOFOLLOW|O_DIRECTORY`: a symlink planted on
//! an intermediate directory is refused (or replaced), never followed, and a race between
//! a check and an open is closed because there is no path to re-resolve. Files are created
//! under an unpredictable temporary name with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600,
//! written through their descriptor, and renamed into place: renaming replaces whatever
//! name was there (a symlink, a hard link to some outside file) without touching the inode
//! it pointed to. Metadata is set through descriptors of inodes coffer created, or of
//! existing regular files with a single link (a file with more links may be a hard link to
//! a file outside, so it is never opened for writing or metadata).

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A single path component: not empty, `.` or `..`, without `/` or NUL.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Open (creating it and its parents when missing) the directory at `path`, following the
/// path as given: it is the caller's to choose.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    std::fs::create_dir_all(path)?;
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)
}

/// Open the directory `name` in `parent`; a symlink there is an error (`ELOOP` or
/// `ENOTDIR`), never followed.
pub fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    check_name(name)?;
    rfs::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(err)
}

/// What `ensure_dir` may remove to make room for a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Only a symlink (which is never followed).
    Links,
    /// Any entry that is not a directory.
    Anything,
}

/// The directory `name` in `parent`, created (mode 0700) when missing. Returns it and
/// whether an entry of another type was removed to make room.
pub fn ensure_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    replace: Replace,
) -> io::Result<(OwnedFd, bool)> {
    check_name(name)?;
    let mut removed = false;
    // Each round either opens, or changes what is there; a few rounds only when someone
    // else changes the entry at the same time.
    for _ in 0..4 {
        match rfs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok((fd, removed)),
            Err(Errno::NOENT) => match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(err(e)),
            },
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let Some(st) = lstat_at(parent, name)? else {
                    continue;
                };
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft == FileType::Directory {
                    continue;
                }
                if ft != FileType::Symlink && replace == Replace::Links {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ));
                }
                match rfs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => removed = true,
                    Err(e) => return Err(err(e)),
                }
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(io::Error::other(
        "changed by someone else while being created",
    ))
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    check_name(name)?;
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// The names in a directory (without `.` and `..`).
pub fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in rfs::Dir::read_from(dir).map_err(err)? {
        let e = e.map_err(err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(out)
}

/// Remove `name` from `dir` whatever it is, a directory with everything in it; symlinks
/// are removed, never followed. Missing is not an error.
pub fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(err(e)),
    }
    let sub = match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    for e in entries(sub.as_fd())? {
        remove(sub.as_fd(), &e)?;
    }
    drop(sub);
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// A temporary name next to `name`: `.NAME.coffer-restore-<random>`, with NAME cut so the
/// whole stays within the 255 bytes a name may have.
fn temp_name(name: &OsStr) -> OsString {
    let b = name.as_bytes();
    let keep = &b[..b.len().min(200)];
    let mut t = Vec::with_capacity(keep.len() + 34);
    t.push(b'.');
    t.extend_from_slice(keep);
    t.extend_from_slice(format!(".coffer-restore-{:016x}", rand::random::<u64>()).as_bytes());
    OsString::from_vec(t)
}

/// Create a new temporary file for `name` in `dir`, exclusively (`O_CREAT|O_EXCL|
/// O_NOFOLLOW`), mode 0600. Returns its name, the file and its (device, inode).
pub fn create_temp(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OsString, File, (u64, u64))> {
    check_name(name)?;
    loop {
        let tmp = temp_name(name);
        match rfs::openat(
            dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                let st = rfs::fstat(&fd).map_err(err)?;
                return Ok((tmp, File::from(fd), (st.st_dev, st.st_ino)));
            }
            // Someone made that name already: draw another.
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// Open again, for writing, a temporary file made by `create_temp`, only if the name
/// still holds that very inode with no other link to it.
pub fn reopen_temp(dir: BorrowedFd<'_>, tmp: &OsStr, ident: (u64, u64)) -> io::Result<File> {
    check_name(tmp)?;
    let fd = rfs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let st = rfs::fstat(&fd).map_err(err)?;
    if file_type(&st) != FileType::RegularFile
        || (st.st_dev, st.st_ino) != ident
        || st.st_nlink != 1
    {
        return Err(io::Error::other(
            "the temporary file was replaced by someone else during the restore",
        ));
    }
    Ok(File::from(fd))
}

/// Open an existing file for reading (and for setting its metadata through the
/// descriptor) only when it is a regular file with a single link; `None` otherwise (also
/// when missing). A file with more links may be a hard link to one outside the target.
pub fn open_existing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<(File, Stat)>> {
    check_name(name)?;
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NXIO) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let st = rfs::fstat(&fd).map_err(err)?;
    if file_type(&st) != FileType::RegularFile || st.st_nlink != 1 {
        return Ok(None);
    }
    Ok(Some((File::from(fd), st)))
}

/// Owner, permission bits and modification (and access) time to give an inode.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Only applied when running as root.
    pub owner: Option<(u32, u32)>,
    pub mode: Option<u32>,
    /// Seconds and nanoseconds since the epoch.
    pub mtime: Option<(i64, u32)>,
}

fn timestamps(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

pub fn is_root() -> bool {
    euid() == 0
}

/// Set `m` on an open file or directory (owner first: a chown clears set-id bits).
pub fn set_meta(fd: BorrowedFd<'_>, m: &Meta) -> io::Result<()> {
    if let Some((uid, gid)) = m.owner.filter(|_| is_root()) {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
        )
        .map_err(err)?;
    }
    if let Some(mode) = m.mode {
        rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(err)?;
    }
    if let Some((s, ns)) = m.mtime {
        rfs::futimens(fd, &timestamps(s, ns)).map_err(err)?;
    }
    Ok(())
}

/// Make `name` in `dir` a symlink to `target` (replacing a file or symlink there) and set
/// its owner and times through a descriptor of the link itself, after checking it is the
/// link this call made (a symlink owned by us with one link), so a link swapped for a hard
/// link to an outside file in between is never touched.
pub fn symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &OsStr, m: &Meta) -> io::Result<()> {
    check_name(name)?;
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(err(e)),
    }
    rfs::symlinkat(target, dir, name).map_err(err)?;
    if m.mtime.is_none() && (m.owner.is_none() || !is_root()) {
        return Ok(());
    }
    let fd = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let st = rfs::fstat(&fd).map_err(err)?;
    if file_type(&st) != FileType::Symlink || st.st_nlink != 1 || st.st_uid != euid() {
        return Err(io::Error::other(
            "the symlink was replaced by someone else while it was created",
        ));
    }
    if let Some((uid, gid)) = m.owner.filter(|_| is_root()) {
        rfs::chownat(
            &fd,
            "",
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(err)?;
    }
    if let Some((s, ns)) = m.mtime {
        rfs::utimensat(&fd, "", &timestamps(s, ns), AtFlags::EMPTY_PATH).map_err(err)?;
    }
    Ok(())
}

/// Rename `from` to `to` in `dir`, replacing what `to` names (a file or symlink; the
/// inode it named is not touched).
pub fn rename(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    check_name(from)?;
    check_name(to)?;
    rfs::renameat(dir, from, dir, to).map_err(err)
}

/// Rename `from` to `to` in `dir`, failing with `AlreadyExists` if `to` exists.
pub fn rename_new(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    check_name(from)?;
    check_name(to)?;
    match rfs::renameat_with(dir, from, dir, to, rfs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: a hard link fails the same way.
        Err(Errno::INVAL) | Err(Errno::NOSYS) => {
            rfs::linkat(dir, from, dir, to, AtFlags::empty()).map_err(err)?;
            rfs::unlinkat(dir, from, AtFlags::empty()).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Remove a file (not a directory) by name; missing is not an error.
pub fn unlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Make a directory's entries (and its own inode) durable.
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::fsync(fd).map_err(err)
}

/// Write back everything cached for the file system holding `fd` and wait for it: one
/// call makes every file, directory and rename a restore made there durable.
pub fn sync_fs(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::syncfs(fd).map_err(err)
}

/// Start writing a finished file's dirty pages back, without waiting, so the `sync_fs` at
/// the end has less left to do. A hint: failures are ignored (`sync_fs` reports them).
pub fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Open the file `name` in `dir` for reading, only when it is a regular file (a symlink is
/// not followed); `None` when missing.
pub fn read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    check_name(name)?;
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => {
            return Err(io::Error::other(
                "is a symlink, which coffer does not follow here",
            ))
        }
        Err(e) => return Err(err(e)),
    };
    let st = rfs::fstat(&fd).map_err(err)?;
    if file_type(&st) != FileType::RegularFile {
        return Err(io::Error::other("is not a regular file"));
    }
    let mut out = Vec::new();
    io::Read::read_to_end(&mut File::from(fd), &mut out)?;
    Ok(Some(out))
}

/// A file being written under a temporary name in a directory, renamed to its name by
/// `commit` (after an `fsync`) and removed if dropped before.
pub struct NewFile<'a> {
    dir: BorrowedFd<'a>,
    tmp: OsString,
    name: OsString,
    file: File,
    done: bool,
}

impl<'a> NewFile<'a> {
    /// A temporary file for `name` in `dir`, mode 0600, created exclusively.
    pub fn create(dir: BorrowedFd<'a>, name: &OsStr) -> io::Result<NewFile<'a>> {
        let (tmp, file, _) = create_temp(dir, name)?;
        Ok(NewFile {
            dir,
            tmp,
            name: name.to_os_string(),
            file,
            done: false,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Set `m`, fsync, and rename into place: over what is there when `replace`, else
    /// failing with `AlreadyExists`. The directory still needs an `fsync` for the rename
    /// to be durable.
    pub fn commit(mut self, m: &Meta, replace: bool) -> io::Result<()> {
        set_meta(self.file.as_fd(), m)?;
        self.file.sync_all()?;
        if replace {
            rename(self.dir, &self.tmp, &self.name)?;
        } else {
            rename_new(self.dir, &self.tmp, &self.name)?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = unlink(self.dir, &self.tmp);
        }
    }
}

/// Write `data` to `name` in `dir` as a new file (temporary name, fsync, rename over what
/// was there); the caller fsyncs `dir`.
pub fn write_file(dir: BorrowedFd<'_>, name: &OsStr, data: &[u8], m: &Meta) -> io::Result<()> {
    let f = NewFile::create(dir, name)?;
    io::Write::write_all(&mut f.file(), data)?;
    f.commit(m, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn nothing_is_followed_below_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root_path = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"keep").unwrap();
        let root = open_root(&root_path).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("a")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), root_path.join("f")).unwrap();
        assert!(open_dir(root.as_fd(), OsStr::new("a")).is_err());
        assert!(read(root.as_fd(), OsStr::new("f")).is_err());
        assert!(open_existing(root.as_fd(), OsStr::new("f"))
            .unwrap()
            .is_none());
        // A hard link to an outside file is not a candidate for in-place use.
        std::fs::hard_link(outside.join("victim"), root_path.join("h")).unwrap();
        assert!(open_existing(root.as_fd(), OsStr::new("h"))
            .unwrap()
            .is_none());
        // The link on the directory's name is replaced by a directory.
        let (a, removed) = ensure_dir(root.as_fd(), OsStr::new("a"), Replace::Links).unwrap();
        assert!(removed);
        write_file(
            a.as_fd(),
            OsStr::new("victim"),
            b"new",
            &Meta {
                owner: None,
                mode: Some(0o640),
                mtime: Some((1_000_000, 5)),
            },
        )
        .unwrap();
        // Over the link and the hard link: the names change, the outside file does not.
        write_file(
            root.as_fd(),
            OsStr::new("f"),
            b"new",
            &Meta {
                owner: None,
                mode: None,
                mtime: None,
            },
        )
        .unwrap();
        write_file(
            root.as_fd(),
            OsStr::new("h"),
            b"new",
            &Meta {
                owner: None,
                mode: None,
                mtime: None,
            },
        )
        .unwrap();
        symlink(
            root.as_fd(),
            OsStr::new("l"),
            OsStr::new("../outside/victim"),
            &Meta {
                owner: Some((1, 1)),
                mode: None,
                mtime: Some((2_000_000, 7)),
            },
        )
        .unwrap();
        let lm = std::fs::symlink_metadata(root_path.join("l")).unwrap();
        assert_eq!(lm.mtime(), 2_000_000);
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(root_path.join("a/victim")).unwrap(), b"new");
        assert_eq!(std::fs::read(root_path.join("h")).unwrap(), b"new");
        let vm = std::fs::metadata(outside.join("victim")).unwrap();
        assert_ne!(vm.mtime(), 2_000_000);
        assert_eq!(vm.nlink(), 1);
        // Removal does not follow either.
        std::os::unix::fs::symlink(&outside, root_path.join("a/down")).unwrap();
        remove(root.as_fd(), OsStr::new("a")).unwrap();
        assert!(outside.join("victim").exists());
        assert!(!root_path.join("a").exists());
    }

    #[test]
    fn temp_names_fit_and_differ() {
        let long = OsString::from("x".repeat(255));
        let a = temp_name(&long);
        assert!(a.len() <= 255, "{}", a.len());
        assert_ne!(temp_name(&long), a);
    }
}
