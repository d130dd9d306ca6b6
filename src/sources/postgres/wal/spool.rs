//! The WAL spool of the `wal = "async"` repositories: `wal-push` keeps each WAL file it
//! archives in `<wal_spool>/<repository>/<file name>` (a local directory) instead of
//! pushing it there, and `wal-copy` pushes the spooled files into the repository later,
//! removing each once the repository has it durably.
//!
//! A file is written to `.<name>.tmp-<pid>-<random>` (mode 0600, in a directory of mode
//! 0700), flushed, renamed to its name without replacing anything, and the directory is
//! flushed: a spooled name is always whole. A temporary file left by a process that died
//! is removed by the next call that looks at the spool.

use super::archive::classify;
use crate::error::{Error, ErrorKind};
use crate::fsutil::{create_dirs, sync_dir};
use anyhow::{Context as _, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What [`store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spooled {
    Stored,
    /// The spool had this file with the same content already.
    AlreadySpooled,
}

/// One spooled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    pub path: PathBuf,
    /// When it was spooled (its mtime).
    pub modified: SystemTime,
}

fn io(e: std::io::Error, what: &str, p: &Path) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!("cannot {what} {} (the WAL spool): {e}", p.display()),
    )
    .into()
}

/// The prefix of a temporary spool file: `.<name>.tmp-`.
fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Keep `data` as the WAL file `name` in the spool folder `dir`, durably. The same content
/// under a spooled name succeeds without writing; different content is refused (exit 3).
pub fn store(dir: &Path, name: &str, data: &[u8]) -> Result<Spooled> {
    if classify(name).is_none() {
        return Err(Error::usage(format!("{name:?} is not a WAL file name")).into());
    }
    for d in create_dirs(dir, 0o700).map_err(|e| io(e, "create", dir))? {
        sync_dir(&d).map_err(|e| io(e, "flush", &d))?;
    }
    let path = dir.join(name);
    if let Some(s) = same_as_spooled(&path, name, data)? {
        return Ok(s);
    }
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        crate::Id::random().short()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        rename_new(&tmp, &path)
    })();
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Spooled meanwhile by another call (push-ahead in another wal-push).
            let _ = fs::remove_file(&tmp);
            return same_as_spooled(&path, name, data)?.ok_or_else(|| io(e, "write", &path));
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(io(e, "write", &path));
        }
    }
    sync_dir(dir).map_err(|e| io(e, "flush", dir))?;
    Ok(Spooled::Stored)
}

/// `Some` when `path` is spooled already with `data`; an error when with other content.
fn same_as_spooled(path: &Path, name: &str, data: &[u8]) -> Result<Option<Spooled>> {
    match fs::read(path) {
        Ok(there) if there == data => Ok(Some(Spooled::AlreadySpooled)),
        Ok(_) => Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{name} is already in the WAL spool {} with different content; refusing to \
                 overwrite it (is another cluster archiving with this config, or was the data \
                 directory restored without a new timeline?)",
                path.parent().unwrap_or(path).display()
            ),
        )
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e, "read", path)),
    }
}

/// Rename `from` to `to`, failing with `AlreadyExists` when `to` exists.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE: a hard link fails the same way.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// The spooled files of `dir`, oldest name first (none when it does not exist). Temporary
/// files of processes that are gone are removed on the way.
pub fn pending(dir: &Path) -> Result<Vec<Pending>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e, "list", dir)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| io(e, "list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_temp(&name) {
            if abandoned(&name, &e.path()) {
                let _ = fs::remove_file(e.path());
            }
            continue;
        }
        if classify(&name).is_none() {
            continue;
        }
        let modified = e
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|err| io(err, "stat", &e.path()))?;
        out.push(Pending {
            name,
            path: e.path(),
            modified,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Remove the temporary files of writers that are gone from `dir` (`wal-push` does, once
/// per call); the spooled files are not looked at.
pub fn remove_abandoned(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_temp(&name) && abandoned(&name, &e.path()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A temporary file whose writer (the pid in its name) is gone, or that is over an hour
/// old (a pid reused since).
fn abandoned(name: &str, path: &Path) -> bool {
    let pid = name
        .rsplit_once(".tmp-")
        .and_then(|(_, rest)| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok());
    let gone = match pid {
        // SAFETY: signal 0 only checks whether the process exists.
        Some(pid) => {
            let r = unsafe { libc::kill(pid, 0) };
            r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        }
        None => true,
    };
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600);
    gone || old
}

/// Remove a spooled file once its repository has it durably, and flush the directory.
pub fn remove(p: &Pending) -> Result<()> {
    match fs::remove_file(&p.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e, "remove", &p.path)),
    }
    let dir = p.path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).with_context(|| format!("flushing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000001";

    #[test]
    fn a_spooled_file_is_whole_private_and_never_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("spool/offsite");
        assert!(pending(&dir).unwrap().is_empty(), "no spool yet");
        assert_eq!(store(&dir, SEG, b"one").unwrap(), Spooled::Stored);
        assert_eq!(store(&dir, SEG, b"one").unwrap(), Spooled::AlreadySpooled);
        let e = store(&dir, SEG, b"two").unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Integrity, "{e:#}");
        assert_eq!(fs::read(dir.join(SEG)).unwrap(), b"one");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(SEG)), 0o600);
        assert!(store(&dir, "notwal", b"x").is_err());

        // Oldest name first; a leftover temporary file of a dead writer goes, one of a
        // live writer (this process) stays and is never listed.
        store(&dir, "00000002.history", b"h").unwrap();
        store(&dir, "000000010000000000000000", b"zero").unwrap();
        let dead = dir.join(format!(".{SEG}.tmp-{}-abcd", i32::MAX));
        let live = dir.join(format!(".{SEG}.tmp-{}-abcd", std::process::id()));
        fs::write(&dead, b"torn").unwrap();
        fs::write(&live, b"half").unwrap();
        remove_abandoned(&dir);
        assert!(!dead.exists());
        fs::write(&dead, b"torn").unwrap();
        let names: Vec<String> = pending(&dir).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["000000010000000000000000", SEG, "00000002.history"]);
        assert!(!dead.exists());
        assert!(live.exists());
        for p in pending(&dir).unwrap() {
            remove(&p).unwrap();
        }
        assert!(pending(&dir).unwrap().is_empty());
    }
}
