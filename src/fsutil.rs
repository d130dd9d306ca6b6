//! Durable file-system changes: a new directory or file survives a power loss only once
//! its parent directory's entry for it is on disk too, which takes an `fsync` of the
//! parent (of every directory created, for a path created several levels deep).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `fsync` a directory, making the entries created or renamed in it durable.
pub fn sync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// The parent to `fsync` after creating `p` (`.` for a relative name without one).
fn parent_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Create `p` and its missing parents with `mode`, without syncing; returns the
/// directories whose entries changed (the parent of each directory created), which must
/// be synced for the new directories to be durable.
pub fn create_dirs(p: &Path, mode: u32) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for a in p.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        match fs::metadata(a) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", a.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(a.to_path_buf()),
            Err(e) => return Err(e),
        }
    }
    let mut changed = Vec::new();
    for d in missing.iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            // Made meanwhile by another process, which may not have synced it yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        changed.push(parent_of(d).to_path_buf());
    }
    Ok(changed)
}

/// Create `p` and its missing parents with `mode`, durably: the parent of every
/// directory created is synced.
pub fn create_dir_all(p: &Path, mode: u32) -> io::Result<()> {
    for d in create_dirs(p, mode)? {
        sync_dir(&d)?;
    }
    Ok(())
}

/// Create the file `path` with `data` and `mode`, durably and all at once: written to a
/// temporary name, synced, linked to `path` (which fails if `path` exists: nothing is
/// replaced), then the directory is synced. A crash leaves `path` complete or absent.
pub fn create_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.unwrap_or_default(),
        std::process::id(),
        crate::Id::random().short()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    res?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_missing_levels_and_reports_their_parents() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a/b/c");
        let changed = create_dirs(&p, 0o700).unwrap();
        assert_eq!(
            changed,
            vec![
                t.path().to_path_buf(),
                t.path().join("a"),
                t.path().join("a/b")
            ]
        );
        assert!(p.is_dir());
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(create_dirs(&p, 0o700).unwrap().is_empty());
        fs::write(t.path().join("f"), b"").unwrap();
        assert!(create_dirs(&t.path().join("f/x"), 0o700).is_err());
    }

    #[test]
    fn a_new_file_never_replaces_one() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("key");
        create_file(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = create_file(&p, b"two", 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
