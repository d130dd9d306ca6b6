//! A throwaway PostgreSQL cluster for restore drills, that coffer creates and always removes.
//!
//! - `initdb` of the wanted major version (the same as the dump's server, else the oldest
//!   newer one installed) in a private directory `coffer-drill-*` of the temp dir;
//! - no TCP listener: a Unix socket in that directory (mode 0700) and `trust` authentication
//!   for it alone, so only coffer (and root) can connect; a free port number names the socket;
//! - run as the `postgres` OS user when coffer runs as root (PostgreSQL refuses root);
//! - stopped (`pg_ctl stop -m immediate`) and removed when dropped, on success or failure.
//!
//! The directory holds a marker, `coffer-drill.pid`, with the pid of the coffer that made it.
//! [`clean_stale`] removes the clusters of a coffer that died (SIGKILL, a crash): it stops
//! their server and deletes their directory.

use super::tools::{self, Tool};
use crate::error::{Error, ErrorKind};
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The marker that names a scratch directory's owner.
const MARKER: &str = "coffer-drill.pid";
/// The prefix of scratch directories in the temp dir.
pub const PREFIX: &str = "coffer-drill-";

pub struct ScratchCluster {
    dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    pub version: String,
    pub major: u32,
    pg_ctl: Tool,
    /// (uid, gid) the server runs as, when coffer is root.
    owner: Option<(u32, u32)>,
    running: bool,
}

/// The `postgres` OS user's ids, to run the server as when coffer is root.
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the result is read at once, before any other getpw call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Error::new(
            ErrorKind::Source,
            "a scratch PostgreSQL cannot run as root and there is no `postgres` OS user to run \
             it as: create one (the Debian packages do), or run the drill as another user",
        )
        .into());
    }
    // SAFETY: pw is non-null and points to a passwd record.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// A private (0700) directory `coffer-drill-*` in the temp dir, marked as this process's:
/// removed when dropped, or by [`clean_stale`] once this process is gone.
pub fn scratch_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .context("creating a scratch directory for the drill")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(dir.path().join(MARKER), std::process::id().to_string())?;
    LIVE.lock().unwrap().push(dir.path().to_path_buf());
    Ok(dir)
}

/// The scratch directories of this process, for [`remove_all_now`].
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Stop the scratch servers of this process, remove its scratch directories and drop its
/// scratch databases ([`super::scratch_db`]), now: for a signal that stops the drill (the
/// drill then fails on its vanished server, directory or database, and releases its lock as
/// any failure does). Returns what was removed, for the message.
pub fn remove_all_now() -> Vec<String> {
    let dirs: Vec<PathBuf> = std::mem::take(&mut *LIVE.lock().unwrap());
    let mut removed = Vec::new();
    for dir in dirs {
        stop_server_in(&dir);
        if dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(format!("directory {}", dir.display()));
        }
    }
    removed.extend(super::scratch_db::drop_all_now());
    removed
}

/// Stop the server of scratch directory `dir`, if one runs (a postmaster: SIGQUIT, immediate
/// shutdown; a redis-server: SIGKILL, it saves nothing), and wait up to 5 s for it to go.
fn stop_server_in(dir: &Path) {
    for (pid_file, program, signal) in [
        ("data/postmaster.pid", "postgres", libc::SIGQUIT),
        ("redis.pid", "redis", libc::SIGKILL),
    ] {
        let Some(server) = std::fs::read_to_string(dir.join(pid_file))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        else {
            continue;
        };
        // Only that server (the pid may have been reused since).
        let cmdline = std::fs::read(format!("/proc/{server}/cmdline")).unwrap_or_default();
        if !alive(server) || !String::from_utf8_lossy(&cmdline).contains(program) {
            continue;
        }
        // SAFETY: signalling the server of our own marked scratch directory.
        unsafe { libc::kill(server, signal) };
        for _ in 0..100 {
            if !alive(server) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ScratchCluster {
    /// Create and start a cluster of major version `major` (or the oldest newer one).
    pub fn start(major: u32) -> Result<ScratchCluster> {
        let initdb = tools::find("initdb", major)?;
        let c = ScratchCluster::prepare(initdb.major)?;
        let mut init = c.as_owner(initdb.command());
        init.arg("-D").arg(&c.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]);
        c.run(init, "initdb")?;
        c.append_conf(
            "postgresql.conf",
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_wal_size = '1GB'\n",
        )?;
        c.launch(120)
    }

    /// A scratch directory with an empty data directory `data` (both the server user's,
    /// mode 0700), for a server of major version `major` (or the oldest newer one), not
    /// started: fill `data` (a restored base backup), then [`ScratchCluster::launch`].
    pub fn prepare(major: u32) -> Result<ScratchCluster> {
        let pg_ctl = tools::find("pg_ctl", major)?;
        let owner = server_user()?;
        let dir = scratch_dir()?.keep();
        let data = dir.join("data");
        std::fs::create_dir(&data)?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            for p in [&dir, &data] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
        }
        Ok(ScratchCluster {
            dir,
            data,
            port: free_port()?,
            version: pg_ctl.version.clone(),
            major: pg_ctl.major,
            pg_ctl,
            owner,
            running: false,
        })
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Append `text` to a file of the data directory (made, owned by the server user, when
    /// missing).
    pub fn append_conf(&self, name: &str, text: &str) -> Result<()> {
        use std::io::Write;
        let path = self.data.join(name);
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?
            .write_all(format!("\n{text}").as_bytes())?;
        if let (false, Some((uid, gid))) = (existed, self.owner) {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    /// Start the server on the data directory: only the socket in the private directory
    /// (nothing on the network), `trust` for it alone, no archiving, no SSL; wait up to
    /// `timeout_secs` for it to accept connections.
    pub fn launch(mut self, timeout_secs: u32) -> Result<ScratchCluster> {
        let dir = self.dir.display().to_string().replace('\'', "''");
        std::fs::write(self.dir.join("drill_hba.conf"), "local all all trust\n")?;
        std::fs::write(self.dir.join("drill_ident.conf"), "")?;
        if let Some((uid, gid)) = self.owner {
            for f in ["drill_hba.conf", "drill_ident.conf"] {
                std::os::unix::fs::chown(self.dir.join(f), Some(uid), Some(gid))?;
            }
        }
        // postgresql.auto.conf is read last: these win over the restored configuration.
        self.append_conf(
            "postgresql.auto.conf",
            &format!(
                "# coffer drill: a scratch server, reachable only through its private socket\n\
                 listen_addresses = ''\nport = {}\nunix_socket_directories = '{dir}'\n\
                 hba_file = '{dir}/drill_hba.conf'\nident_file = '{dir}/drill_ident.conf'\n\
                 archive_mode = off\narchive_command = ''\nssl = off\nlogging_collector = off\n\
                 hot_standby = on\n",
                self.port
            ),
        )?;
        if !self.data.join("postgresql.conf").exists() {
            // A data directory whose configuration lived elsewhere (Debian's /etc/postgresql).
            self.append_conf("postgresql.conf", "")?;
        }
        let mut start = self.as_owner(self.pg_ctl.command());
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", &timeout_secs.to_string(), "start"]);
        self.running = true;
        self.run(start, "pg_ctl start")?;
        Ok(self)
    }

    fn as_owner(&self, mut c: Command) -> Command {
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.dir);
        c
    }

    fn run(&self, mut c: Command, what: &str) -> Result<()> {
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {what} for the scratch cluster"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "{what} of the scratch PostgreSQL {} failed ({}): {}{}",
                    self.version,
                    tools::status_text(out.status),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "\nserver log:\n{}",
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    }
                ),
            )
            .into());
        }
        Ok(())
    }

    /// A libpq connection string to database `db` as the superuser.
    pub fn conn(&self, db: &str) -> String {
        format!(
            "host='{}' port={} user=postgres dbname='{}' sslmode=disable",
            self.dir.display(),
            self.port,
            db.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }

    /// The scratch directory (its server's log is `server.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop the server and remove the directory.
    pub fn remove(mut self) -> Result<()> {
        self.stop_and_remove()
    }

    fn stop_and_remove(&mut self) -> Result<()> {
        if self.running {
            self.running = false;
            let mut stop = self.as_owner(self.pg_ctl.command());
            stop.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        LIVE.lock().unwrap().retain(|d| d != &self.dir);
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let _ = self.stop_and_remove();
    }
}

/// Whether process `pid` is alive.
pub(crate) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Remove the scratch clusters (and directories) of coffer processes that are gone: stop
/// their server (its pid is in `data/postmaster.pid`) and delete the directory. Returns the
/// directories removed.
pub fn clean_stale() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return removed;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(dir.join(MARKER))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match owner {
            Some(pid) if alive(pid) => continue,
            // No marker yet: a drill that is being set up right now, or not ours.
            None => continue,
            Some(_) => {}
        }
        stop_server_in(&dir);
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}
