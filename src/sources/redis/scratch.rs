//! A throwaway `redis-server` for restore drills: it loads an RDB from a private scratch
//! directory ([`crate::sources::postgres::scratch::scratch_dir`], removed with it), listens
//! on 127.0.0.1 on a free port with a random password (in its config file, mode 0600, never
//! on a command line), saves nothing and is shut down when dropped.

use super::conn::{Conn, ConnOptions, Reply, Target};
use crate::error::{Error, ErrorKind};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ScratchRedis {
    child: Child,
    url: String,
    log: PathBuf,
}

/// `redis-server` on the PATH (or `COFFER_REDIS_SERVER`).
fn program() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("COFFER_REDIS_SERVER").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Source,
                "redis-server was not found: a Redis drill loads the RDB into a scratch \
                 redis-server (Debian: apt-get install redis-server), or set COFFER_REDIS_SERVER",
            )
            .into()
        })
}

impl ScratchRedis {
    /// Start a server in `dir` that loads `dir/dump.rdb`, with `databases` databases, and
    /// wait (up to `timeout`) until it has loaded it.
    pub fn start(dir: &Path, databases: u32, timeout: Duration) -> Result<ScratchRedis> {
        use std::os::unix::fs::OpenOptionsExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let password = crate::repo::id::Id::random().to_hex();
        let conf = dir.join("redis.conf");
        let log = dir.join("redis.log");
        let text = format!(
            "bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\n\
             dir \"{d}\"\ndbfilename dump.rdb\nsave \"\"\nappendonly no\ndaemonize no\n\
             pidfile \"{d}/redis.pid\"\nlogfile \"{l}\"\ndatabases {databases}\n",
            d = dir.display(),
            l = log.display(),
        );
        {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&conf)?
                .write_all(text.as_bytes())?;
        }
        let child = Command::new(program()?)
            .arg(&conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the scratch redis-server")?;
        let mut s = ScratchRedis {
            child,
            url: format!("redis://:{password}@127.0.0.1:{port}"),
            log,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = s.child.try_wait()? {
                return Err(s.failed(&format!("exited ({status}) before it was ready")));
            }
            if let Ok(mut c) = s.connect(0) {
                match c.command(&[b"PING"])? {
                    Reply::Status(p) if p == "PONG" => return Ok(s),
                    _ => {} // LOADING: still reading the RDB
                }
            }
            if t0.elapsed() > timeout {
                return Err(s.failed("did not finish loading the RDB in time"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn failed(&self, what: &str) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        Error::new(
            ErrorKind::Source,
            format!(
                "the scratch redis-server {what}; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ),
        )
        .into()
    }

    /// A connection to database `db`.
    pub fn connect(&self, db: u32) -> Result<Conn> {
        let t = Target::parse(&format!("{}/{db}", self.url))?;
        Conn::connect(&t, &ConnOptions::default())
    }
}

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
