//! A repository in a local directory.
//!
//! Implemented on `std::fs` rather than through OpenDAL's `fs` service because the crash
//! stories need two things that service does not give: every object is written to a
//! temporary name, `fsync`ed, renamed into place and its directory `fsync`ed (so a crash
//! leaves either the whole object or none), and files are created 0600 in 0700 folders.

use super::{not_found, Backend, FileKind, Listed, Spool};
use crate::error::{Error, ErrorKind};
use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    fn full(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(kind.path(name))
    }

    fn tmp_name(dir: &Path) -> PathBuf {
        dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            crate::Id::random().short()
        ))
    }

    /// fsync a written temporary file, rename it into place, fsync the folder.
    fn commit_tmp(&self, f: &File, tmp: &Path, kind: FileKind, name: &str) -> Result<()> {
        let path = self.full(kind, name);
        let dir = path.parent().expect("object paths have a parent");
        if !dir.exists() {
            mkdir_private(dir)?;
        }
        if let Err(e) = self
            .give_to_archive_owner(f, kind, dir)
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::rename(tmp, &path))
        {
            let _ = fs::remove_file(tmp);
            return Err(io_err(e, "write", &path));
        }
        sync_dir(dir)
    }

    /// The WAL archive is written and read by the database server's OS user (`wal-push`,
    /// `wal-fetch`, which refreshes WAL holds) and also by root (`forget` records the
    /// retention horizon, `restore --pgdata` takes WAL holds). So an object root writes
    /// under `wal/`, and a folder it creates there, gets the owner of `wal/`: otherwise the
    /// server's user could not read it (objects are 0600). Only `wal/`: the rest of a
    /// repository may hold root's backups, which the server's user must not read.
    fn give_to_archive_owner(&self, f: &File, kind: FileKind, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        if !matches!(kind, FileKind::Wal | FileKind::WalHold) || unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let wal = self.root.join(FileKind::Wal.dir());
        let owner = fs::metadata(&wal)?;
        if owner.uid() == 0 {
            return Ok(());
        }
        let (uid, gid) = (Some(owner.uid()), Some(owner.gid()));
        let mut d = dir;
        while d != wal && d.starts_with(&wal) {
            if fs::metadata(d)?.uid() != owner.uid() {
                std::os::unix::fs::chown(d, uid, gid)?;
            }
            d = d.parent().unwrap_or(&wal);
        }
        std::os::unix::fs::fchown(f, uid, gid)
    }

    /// Write to a temporary name, then [`commit_tmp`](Self::commit_tmp) it.
    fn write_slices(&self, kind: FileKind, name: &str, data: &[&[u8]]) -> Result<()> {
        let path = self.full(kind, name);
        let dir = path.parent().expect("object paths have a parent");
        if !dir.exists() {
            mkdir_private(dir)?;
        }
        let tmp = Self::tmp_name(dir);
        let written = (|| -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            for d in data {
                f.write_all(d)?;
            }
            Ok(f)
        })();
        match written {
            Ok(f) => self.commit_tmp(&f, &tmp, kind, name),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(io_err(e, "write", &path))
            }
        }
    }
}

/// A pack being written to `.tmp-…` in its kind's folder (`data/`), renamed into
/// `data/xx/` when committed.
struct LocalSpool {
    backend: LocalBackend,
    tmp: PathBuf,
    file: Option<File>,
}

impl Spool for LocalSpool {
    fn append(&mut self, data: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("spool used after commit");
        f.write_all(data).map_err(|e| io_err(e, "write", &self.tmp))
    }

    fn commit(mut self: Box<Self>, kind: FileKind, name: &str) -> Result<()> {
        let f = self.file.take().expect("spool committed twice");
        self.backend.commit_tmp(&f, &self.tmp, kind, name)
    }
}

impl Drop for LocalSpool {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Create a folder (and missing parents) 0700, without syncing; returns the folders to
/// sync for the new ones to be durable.
fn mkdir_private_unsynced(p: &Path) -> Result<Vec<PathBuf>> {
    crate::fsutil::create_dirs(p, 0o700)
        .with_context(|| format!("cannot create directory {}", p.display()))
}

/// Create a folder (and missing parents) 0700, durably (their parents synced).
fn mkdir_private(p: &Path) -> Result<()> {
    for d in mkdir_private_unsynced(p)? {
        sync_dir(&d)?;
    }
    Ok(())
}

fn io_err(e: std::io::Error, what: &str, path: &Path) -> anyhow::Error {
    let kind = match e.kind() {
        IoKind::PermissionDenied => ErrorKind::Storage,
        IoKind::NotFound => ErrorKind::NotFound,
        _ => ErrorKind::Other,
    };
    let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
        " (the disk is full; nothing was committed, free space and run again)"
    } else {
        ""
    };
    Error::new(kind, format!("cannot {what} {}: {e}{hint}", path.display())).into()
}

fn sync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(e, "sync directory", p))
}

impl Backend for LocalBackend {
    fn is_local(&self) -> bool {
        true
    }
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    /// The folders, durable before the first object is written: each folder whose
    /// entries changed is synced once, after all are made.
    fn create(&self) -> Result<()> {
        let mut changed = std::collections::BTreeSet::new();
        changed.extend(mkdir_private_unsynced(&self.root)?);
        for k in FileKind::ALL_DIRS {
            changed.extend(mkdir_private_unsynced(&self.root.join(k.dir()))?);
        }
        for i in 0..256 {
            changed.extend(mkdir_private_unsynced(
                &self.root.join("data").join(format!("{i:02x}")),
            )?);
        }
        changed.insert(self.root.clone());
        // Deepest first: a folder's own entry is synced after what it holds.
        for d in changed.iter().rev() {
            sync_dir(d)?;
        }
        Ok(())
    }

    fn write(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.write_slices(kind, name, &[data])
    }

    fn write_parts(&self, kind: FileKind, name: &str, parts: Vec<Vec<u8>>) -> Result<()> {
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        self.write_slices(kind, name, &slices)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let path = self.full(kind, name);
        fs::read(&path).map_err(|e| {
            if e.kind() == IoKind::NotFound {
                not_found(kind, name)
            } else {
                io_err(e, "read", &path)
            }
        })
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.full(kind, name);
        let res = (|| -> std::io::Result<Vec<u8>> {
            let mut f = File::open(&path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        })();
        res.map_err(|e| match e.kind() {
            IoKind::NotFound => not_found(kind, name),
            IoKind::UnexpectedEof => Error::integrity(format!(
                "{} is shorter than the index says (truncated pack)",
                path.display()
            ))
            .into(),
            _ => io_err(e, "read", &path),
        })
    }

    fn read_range_into(
        &self,
        kind: FileKind,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let path = self.full(kind, name);
        File::open(&path)
            .and_then(|f| f.read_exact_at(out, offset))
            .map_err(|e| match e.kind() {
                IoKind::NotFound => not_found(kind, name),
                IoKind::UnexpectedEof => Error::integrity(format!(
                    "{} is shorter than the index says (truncated pack)",
                    path.display()
                ))
                .into(),
                _ => io_err(e, "read", &path),
            })
    }

    fn stat(&self, kind: FileKind, name: &str) -> Result<Option<u64>> {
        let path = self.full(kind, name);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e, "stat", &path)),
        }
    }

    fn list(&self, kind: FileKind) -> Result<Vec<Listed>> {
        let dir = self.root.join(kind.dir());
        let mut out = Vec::new();
        let mut dirs = vec![dir];
        while let Some(d) = dirs.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) => return Err(io_err(e, "list", &d)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| io_err(e, "list", &d))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                let ft = ent.file_type().map_err(|e| io_err(e, "list", &d))?;
                if ft.is_dir() {
                    if kind == FileKind::Pack || kind == FileKind::Wal {
                        dirs.push(ent.path());
                    }
                    continue;
                }
                if name.starts_with(".tmp-") || kind == FileKind::Config {
                    continue;
                }
                let (size, modified) = match ent.metadata() {
                    Ok(m) => (m.len(), m.modified().ok().map(chrono::DateTime::from)),
                    Err(e) if e.kind() == IoKind::NotFound => continue,
                    Err(e) => return Err(io_err(e, "stat", &ent.path())),
                };
                out.push(Listed {
                    name,
                    size,
                    modified,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn spools(&self) -> bool {
        true
    }

    fn spool(&self, kind: FileKind) -> Result<Box<dyn Spool>> {
        let dir = self.root.join(kind.dir());
        let tmp = Self::tmp_name(&dir);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err(e, "create", &tmp))?;
        Ok(Box::new(LocalSpool {
            backend: LocalBackend::new(self.root.clone()),
            tmp,
            file: Some(file),
        }))
    }

    /// One writer: a local disk gains nothing from parallel fsyncs, and each pack in
    /// flight costs memory.
    fn concurrency(&self) -> usize {
        1
    }

    fn remove_partial(&self) -> Result<usize> {
        let mut n = 0;
        let mut dirs: Vec<PathBuf> = [FileKind::Pack, FileKind::Index, FileKind::Snapshot]
            .iter()
            .map(|k| self.root.join(k.dir()))
            .collect();
        while let Some(d) = dirs.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for ent in rd.flatten() {
                let p = ent.path();
                if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs.push(p);
                } else if ent.file_name().to_string_lossy().starts_with(".tmp-") {
                    fs::remove_file(&p).map_err(|e| io_err(e, "remove", &p))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = self.full(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io_err(e, "remove", &path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_read_list_remove_private() {
        let t = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(t.path().join("repo"));
        b.create().unwrap();
        let name = "ab".to_string() + &"0".repeat(62);
        b.write(FileKind::Pack, &name, b"hello").unwrap();
        assert_eq!(b.read(FileKind::Pack, &name).unwrap(), b"hello");
        assert_eq!(b.read_range(FileKind::Pack, &name, 1, 3).unwrap(), b"ell");
        assert!(b.read_range(FileKind::Pack, &name, 3, 10).is_err());
        let l = b.list(FileKind::Pack).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].size, 5);
        let mode = fs::metadata(b.full(FileKind::Pack, &name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(t.path().join("repo"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        b.remove(FileKind::Pack, &name).unwrap();
        assert!(super::super::is_not_found(
            &b.read(FileKind::Pack, &name).unwrap_err()
        ));
        assert_eq!(b.stat(FileKind::Pack, &name).unwrap(), None);
    }

    #[test]
    fn spooled_object_appears_only_when_committed() {
        let t = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(t.path().join("repo"));
        b.create().unwrap();
        let name = "cd".to_string() + &"1".repeat(62);
        let mut s = b.spool(FileKind::Pack).unwrap();
        s.append(b"hel").unwrap();
        s.append(b"lo").unwrap();
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
        s.commit(FileKind::Pack, &name).unwrap();
        assert_eq!(b.read(FileKind::Pack, &name).unwrap(), b"hello");
        let mode = fs::metadata(b.full(FileKind::Pack, &name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // An abandoned spool leaves no file behind.
        let mut s = b.spool(FileKind::Pack).unwrap();
        s.append(b"partial").unwrap();
        drop(s);
        let leftovers: Vec<_> = fs::read_dir(t.path().join("repo/data"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .collect();
        assert!(leftovers.is_empty());
        assert_eq!(b.list(FileKind::Pack).unwrap().len(), 1);
    }
}
