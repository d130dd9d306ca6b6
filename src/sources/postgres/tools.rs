//! Finding the PostgreSQL client programs (pg_dump, pg_dumpall, pg_restore, psql) whose
//! major version suits the server.
//!
//! pg_dump refuses to dump a server newer than itself, and an older pg_restore may not read
//! a newer archive. When several versions are installed (Debian keeps each in
//! `/usr/lib/postgresql/N/bin`), the one matching the server's major version wins, then
//! the oldest newer one. `COFFER_PG_BINDIR` names a directory to use instead.

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A client program and its version.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    /// As the program prints it, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    pub major: u32,
}

impl Tool {
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.path);
        c.stdin(std::process::Stdio::null());
        c
    }

    /// Start `cmd` (made by [`Tool::command`]) with its output in a 1 MiB pipe and its
    /// standard error collected.
    pub fn spawn_reader(
        &self,
        mut cmd: Command,
    ) -> Result<(std::process::Child, std::process::ChildStdout, Stderr)> {
        use std::process::Stdio;
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            Error::new(
                ErrorKind::Source,
                format!("cannot run {}: {e}", self.path.display()),
            )
        })?;
        let stderr = Stderr::collect(child.stderr.take().unwrap());
        let stdout = child.stdout.take().unwrap();
        widen_pipe(&stdout);
        Ok((child, stdout, stderr))
    }
}

/// Grow a pipe from its 64 KiB default to 1 MiB: far fewer wake-ups between the child and
/// the chunker. Best effort (the limit is /proc/sys/fs/pipe-max-size).
fn widen_pipe(p: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; failure only leaves the default size.
    unsafe {
        libc::fcntl(p.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

fn version_of(path: &Path) -> Option<(String, u32)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    // "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let v = s.trim().split_once(") ")?.1.trim().to_string();
    let major = v
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((v, major))
}

fn candidates(name: &str) -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("COFFER_PG_BINDIR").filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir).join(name)];
    }
    let mut out = Vec::new();
    for pattern_dir in [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
    ] {
        if let Ok(rd) = std::fs::read_dir(pattern_dir) {
            for e in rd.flatten() {
                out.push(e.path().join("bin").join(name));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("pgsql-") {
                out.push(e.path().join("bin").join(name));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            out.push(d.join(name));
        }
    }
    out.retain(|p| p.is_file());
    out.dedup();
    out
}

/// The installed `name` best suited to a server (or archive) of major version `need`:
/// the same major, else the oldest newer one.
pub fn find(name: &str, need: u32) -> Result<Tool> {
    let found: Vec<Tool> = candidates(name)
        .into_iter()
        .filter_map(|p| {
            version_of(&p).map(|(version, major)| Tool {
                path: p,
                version,
                major,
            })
        })
        .collect();
    if found.is_empty() {
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "{name} was not found. Install the PostgreSQL {need} client programs \
                 (Debian/Ubuntu: apt-get install postgresql-client-{need}; Fedora/RHEL: dnf install \
                 postgresql; macOS: brew install libpq), or set COFFER_PG_BINDIR to the directory \
                 that holds {name}"
            ),
        )
        .into());
    }
    let best = found
        .iter()
        .filter(|t| t.major == need)
        .chain({
            let mut newer: Vec<&Tool> = found.iter().filter(|t| t.major > need).collect();
            newer.sort_by_key(|t| t.major);
            newer
        })
        .next();
    match best {
        Some(t) => Ok(t.clone()),
        None => {
            let newest = found.iter().max_by_key(|t| t.major).unwrap();
            Err(Error::new(
                ErrorKind::Source,
                format!(
                    "the server runs PostgreSQL {need} but the newest {name} installed is {} ({}); \
                     {name} must be at least the server's major version. Install \
                     postgresql-client-{need} (Debian/Ubuntu) or set COFFER_PG_BINDIR",
                    newest.version,
                    newest.path.display()
                ),
            )
            .into())
        }
    }
}

/// What a child wrote on stderr, kept to its last 64 KiB, read on a thread so the child
/// never blocks on a full pipe.
pub struct Stderr(std::thread::JoinHandle<Vec<u8>>);

impl Stderr {
    pub fn collect(pipe: impl std::io::Read + Send + 'static) -> Stderr {
        Stderr(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut keep = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 128 << 10 {
                    keep.drain(..keep.len() - (64 << 10));
                }
            }
            keep
        }))
    }

    pub fn text(self) -> String {
        let v = self.0.join().unwrap_or_default();
        String::from_utf8_lossy(&v).trim().to_string()
    }
}

/// Describe how a child ended, for an error message.
pub fn status_text(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// A word for a POSIX shell (the pg_restore commands coffer prints, PostgreSQL's
/// `restore_command`): as it is when plain, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
