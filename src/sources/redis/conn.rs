//! A Redis connection of our own: RESP2 over TCP, TLS (rustls) or a Unix socket.
//!
//! coffer speaks the protocol itself instead of running `redis-cli`, so that no password
//! ever goes on a command line. The password comes from the URL, then `REDISCLI_AUTH`,
//! then the config file's `[redis] password_file`; it is sent with `AUTH` and never shown
//! (`Debug` and [`Target::display`] leave it out).

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default server when neither a URL nor `REDIS_URL` names one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A reply in the RESP2 protocol. An `-ERR` reply is a value ([`Reply::Error`]), not a
/// Rust error: callers decide what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (status or bulk), for INFO and CONFIG answers.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A server to connect to, parsed from a URL: `redis://[user:password@]host:port[/db]`,
/// `rediss://…` for TLS, `unix:///path/redis.sock[?db=N]` or a plain socket path.
#[derive(Clone)]
pub struct Target {
    pub addr: Addr,
    pub tls: bool,
    db: Option<u32>,
    user: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("address", &self.display())
            .field("db", &self.db)
            .field("user", &self.user)
            .field("password", &crate::redact::Redacted(&self.password))
            .finish()
    }
}

fn bad_url(url: &str, why: &str) -> anyhow::Error {
    Error::usage(format!(
        "{} is not a Redis URL: {why} (expected redis://[user:password@]host[:port][/db], \
         rediss://… for TLS, or a Unix socket path)",
        crate::redact::url(url)
    ))
    .into()
}

fn percent_decode(s: &str, url: &str) -> Result<String> {
    crate::sources::percent_decode(s).ok_or_else(|| {
        bad_url(
            url,
            "a bad %-escape, or a user or password that is not UTF-8",
        )
    })
}

fn parse_db(s: &str, url: &str) -> Result<Option<u32>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<u32>()
        .map(Some)
        .map_err(|_| bad_url(url, &format!("database {s:?} is not a number")))
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let plain = |addr| Target {
            addr,
            tls: false,
            db: None,
            user: None,
            password: None,
        };
        if url.starts_with('/') {
            return Ok(plain(Addr::Unix(PathBuf::from(url))));
        }
        if let Some(rest) = url.strip_prefix("unix://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(bad_url(url, "no socket path"));
            }
            let mut t = plain(Addr::Unix(PathBuf::from(path)));
            for kv in query.split('&').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("db", v)) => t.db = parse_db(v, url)?,
                    _ => return Err(bad_url(url, &format!("unknown parameter {kv:?}"))),
                }
            }
            return Ok(t);
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis://") {
            (false, r)
        } else {
            return Err(bad_url(
                url,
                "it does not start with redis://, rediss:// or /",
            ));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = path.strip_prefix('/').unwrap_or(path);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (mut user, mut password) = (None, None);
        if let Some(u) = userinfo {
            match u.split_once(':') {
                Some((name, pw)) => {
                    if !name.is_empty() {
                        user = Some(percent_decode(name, url)?);
                    }
                    password = Some(percent_decode(pw, url)?);
                }
                // redis-cli reads `redis://secret@host` as a password.
                None if !u.is_empty() => password = Some(percent_decode(u, url)?),
                None => {}
            }
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| bad_url(url, "an unclosed [ in the host"))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host
        };
        let port = if port.is_empty() {
            6379
        } else {
            port.parse::<u16>()
                .map_err(|_| bad_url(url, &format!("port {port:?} is not a number")))?
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut db = parse_db(path.trim_end_matches('/'), url)?;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("db", v)) => db = parse_db(v, url)?,
                _ => return Err(bad_url(url, &format!("unknown parameter {kv:?}"))),
            }
        }
        Ok(Target {
            addr: Addr::Tcp { host, port },
            tls,
            db,
            user,
            password,
        })
    }

    /// The target of `url`, else of `REDIS_URL`, else 127.0.0.1:6379.
    pub fn resolve(url: Option<&str>) -> Result<Target> {
        match url {
            Some(u) => Target::parse(u),
            None => match std::env::var("REDIS_URL") {
                Ok(u) if !u.is_empty() => Target::parse(&u),
                _ => Target::parse(DEFAULT_URL),
            },
        }
    }

    /// The database the URL names.
    pub fn db(&self) -> Option<u32> {
        self.db
    }

    /// The ACL user the URL names.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Where the server is, for messages and metadata: no password.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        match &self.addr {
            Addr::Tcp { host, port } if host.contains(':') => {
                format!("{scheme}://{user}[{host}]:{port}")
            }
            Addr::Tcp { host, port } => format!("{scheme}://{user}{host}:{port}"),
            Addr::Unix(p) => format!("unix://{}", p.display()),
        }
    }
}

/// How to connect, beyond the URL: the password and TLS files from the config file or
/// the command line.
#[derive(Clone)]
pub struct ConnOptions {
    /// Used when neither the URL nor `REDISCLI_AUTH` has one.
    pub password: Option<String>,
    /// CA certificates (PEM) that sign the server's certificate; without one, the
    /// system's CA bundle.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with `tls_key`, for servers that ask for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// For connecting and for each read.
    pub timeout: Duration,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            password: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for ConnOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnOptions")
            .field("password", &crate::redact::Redacted(&self.password))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConnOptions {
    /// The options from the config file's `[redis]` table: the password file read now.
    pub fn from_settings(s: &crate::config::RedisSettings) -> Result<ConnOptions> {
        let password = match &s.password_file {
            Some(p) => Some(read_password_file(p)?),
            None => None,
        };
        Ok(ConnOptions {
            password,
            tls_ca: s.tls_ca.clone(),
            tls_cert: s.tls_cert.clone(),
            tls_key: s.tls_key.clone(),
            ..ConnOptions::default()
        })
    }
}

fn read_password_file(p: &Path) -> Result<String> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        Error::usage(format!(
            "cannot read the Redis password file {}: {e}",
            p.display()
        ))
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // A server that closes without close_notify ends the stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

/// One connection, authenticated and on the URL's database.
pub struct Conn {
    io: BufReader<Stream>,
    out: Vec<u8>,
    target: String,
}

/// A connection-level failure (not a `-ERR` reply): the server is unreachable, closed the
/// connection, sent something that is not RESP, or did not answer in time.
fn conn_error(target: &str, what: impl std::fmt::Display) -> anyhow::Error {
    Error::new(ErrorKind::Source, format!("Redis at {target}: {what}")).into()
}

fn tls_config(o: &ConnOptions) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let usage = |m: String| -> anyhow::Error { Error::usage(m).into() };
    let mut roots = rustls::RootCertStore::empty();
    let ca = match &o.tls_ca {
        Some(p) => p.clone(),
        None => openssl_probe::probe().cert_file.ok_or_else(|| {
            usage("no CA bundle found on this system for rediss://: give tls_ca (a PEM file of the CA that signs the server's certificate)".into())
        })?,
    };
    let pem = std::fs::read(&ca).map_err(|e| usage(format!("tls_ca {}: {e}", ca.display())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| usage(format!("tls_ca {}: {e}", ca.display())))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(usage(format!(
            "tls_ca {}: no usable CA certificate in it (PEM expected)",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| usage(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    Ok(match (&o.tls_cert, &o.tls_key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert)
                .map_err(|e| usage(format!("tls_cert {}: {e}", cert.display())))?;
            let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| usage(format!("tls_cert {}: {e}", cert.display())))?;
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| usage(format!("tls_key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| usage(format!("tls_cert {}: {e}", cert.display())))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(usage(
                "tls_cert and tls_key go together: give both or neither".into(),
            ))
        }
    })
}

fn connect_tcp(host: &str, port: u16, timeout: Duration, target: &str) -> Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| conn_error(target, format!("cannot resolve {host}: {e}")))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_nodelay(true).ok();
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(conn_error(
        target,
        format!(
            "cannot connect: {}",
            last.map_or("no address".to_string(), |e| e.to_string())
        ),
    ))
}

impl Conn {
    /// Connect, authenticate (the URL's password, else `REDISCLI_AUTH`, else
    /// `opts.password`) and select the URL's database.
    pub fn connect(t: &Target, opts: &ConnOptions) -> Result<Conn> {
        let name = t.display();
        let stream = match &t.addr {
            Addr::Unix(p) => Stream::Unix(
                UnixStream::connect(p)
                    .map_err(|e| conn_error(&name, format!("cannot connect to the socket: {e}")))?,
            ),
            Addr::Tcp { host, port } => {
                let sock = connect_tcp(host, *port, opts.timeout, &name)?;
                if t.tls {
                    let config = tls_config(opts)?;
                    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| Error::usage(format!("TLS server name {host:?}: {e}")))?;
                    let c = rustls::ClientConnection::new(Arc::new(config), server_name)
                        .map_err(|e| conn_error(&name, format!("TLS: {e}")))?;
                    Stream::Tls(Box::new(rustls::StreamOwned::new(c, sock)))
                } else {
                    Stream::Tcp(sock)
                }
            }
        };
        stream.set_read_timeout(Some(opts.timeout)).ok();
        let mut conn = Conn {
            io: BufReader::with_capacity(1 << 20, stream),
            out: Vec::new(),
            target: name,
        };
        let env_pw = std::env::var("REDISCLI_AUTH")
            .ok()
            .filter(|s| !s.is_empty());
        let password = t.password.clone().or(env_pw).or(opts.password.clone());
        if let Some(pw) = password {
            let reply = match t.user() {
                Some(u) => conn.command(&[b"AUTH", u.as_bytes(), pw.as_bytes()])?,
                None => conn.command(&[b"AUTH", pw.as_bytes()])?,
            };
            if let Reply::Error(e) = reply {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "Redis at {} refused the password{}: {e}",
                        conn.target,
                        t.user()
                            .map(|u| format!(" of user {u:?}"))
                            .unwrap_or_default()
                    ),
                )
                .into());
            }
        } else if t.user().is_some() {
            return Err(Error::usage(format!(
                "{}: a user but no password (give user:password in the URL, REDISCLI_AUTH, or [redis] password_file)",
                conn.target
            ))
            .into());
        }
        if let Some(db) = t.db() {
            conn.expect_ok(&[b"SELECT", db.to_string().as_bytes()], "SELECT")?;
        }
        Ok(conn)
    }

    /// The server, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Queue a command (sent by [`Conn::flush`]).
    pub fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        let out = &mut self.out;
        write!(out, "*{}\r\n", args.len())?;
        for a in args {
            write!(out, "${}\r\n", a.len())?;
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        let s = self.io.get_mut();
        s.write_all(&self.out)
            .and_then(|()| s.flush())
            .map_err(|e| conn_error(&self.target, format!("sending failed: {e}")))?;
        self.out.clear();
        Ok(())
    }

    /// Send one command and read its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.send(args)?;
        self.flush()?;
        self.read_reply()
    }

    /// [`Conn::command`] that must answer `+OK` (or any status).
    pub fn expect_ok(&mut self, args: &[&[u8]], what: &str) -> Result<()> {
        match self.command(args)? {
            Reply::Status(_) => Ok(()),
            Reply::Error(e) => Err(Error::new(
                ErrorKind::Source,
                format!("Redis at {} refused {what}: {e}", self.target),
            )
            .into()),
            other => Err(conn_error(
                &self.target,
                format!("unexpected answer to {what}: {other:?}"),
            )),
        }
    }

    /// One protocol line without its CRLF.
    pub fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let n = self
            .io
            .read_until(b'\n', &mut line)
            .map_err(|e| self.read_error(e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(conn_error(&self.target, "the server closed the connection"));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }

    fn read_error(&self, e: io::Error) -> anyhow::Error {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            conn_error(&self.target, "no answer in time (timed out)")
        } else {
            conn_error(&self.target, format!("reading failed: {e}"))
        }
    }

    pub fn read_reply(&mut self) -> Result<Reply> {
        let line = self.read_line()?;
        let (&tag, rest) = line
            .split_first()
            .ok_or_else(|| conn_error(&self.target, "an empty protocol line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let int = |s: &[u8]| -> Result<i64> {
            std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| conn_error(&self.target, "a malformed number in a reply"))
        };
        Ok(match tag {
            b'+' => Reply::Status(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Int(int(rest)?),
            b'$' => {
                let n = int(rest)?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.io
                        .read_exact(&mut buf)
                        .map_err(|e| self.read_error(e))?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            b'*' => {
                let n = int(rest)?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n.min(1024) as usize);
                    for _ in 0..n {
                        v.push(self.read_reply()?);
                    }
                    Reply::Array(Some(v))
                }
            }
            _ => {
                return Err(conn_error(
                    &self.target,
                    format!(
                        "not a Redis protocol reply: {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(40)])
                    ),
                ))
            }
        })
    }

    /// `INFO section` as key → value.
    pub fn info(&mut self, section: &str) -> Result<BTreeMap<String, String>> {
        match self.command(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(b)) => Ok(parse_info(&String::from_utf8_lossy(&b))),
            Reply::Error(e) => Err(Error::new(
                ErrorKind::Source,
                format!("Redis at {} refused INFO {section}: {e}", self.target),
            )
            .into()),
            other => Err(conn_error(
                &self.target,
                format!("unexpected answer to INFO: {other:?}"),
            )),
        }
    }

    /// `CONFIG GET name`, or None when the server refuses it (managed services).
    pub fn config_get(&mut self, name: &str) -> Result<Option<String>> {
        Ok(match self.command(&[b"CONFIG", b"GET", name.as_bytes()])? {
            Reply::Array(Some(v)) if v.len() >= 2 => v[1].text(),
            _ => None,
        })
    }

    /// Raw bytes of the connection, after the protocol (an RDB transfer).
    pub fn raw(&mut self) -> &mut BufReader<impl Read + Write> {
        &mut self.io
    }
}

/// `INFO` text as key → value (sections and comments left out).
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("redis://backup:s%40cret@db.example:6380/3").unwrap();
        assert_eq!(
            t.addr,
            Addr::Tcp {
                host: "db.example".into(),
                port: 6380
            }
        );
        assert_eq!(t.db(), Some(3));
        assert_eq!(t.user(), Some("backup"));
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert!(!format!("{t:?}").contains("s@cret"));
        assert_eq!(t.display(), "redis://backup@db.example:6380");

        let t = Target::parse("rediss://:pw@[::1]").unwrap();
        assert!(t.tls);
        assert_eq!(t.user(), None);
        assert_eq!(t.password.as_deref(), Some("pw"));
        assert_eq!(t.display(), "rediss://[::1]:6379");

        let t = Target::parse("/run/redis/redis.sock").unwrap();
        assert_eq!(t.addr, Addr::Unix("/run/redis/redis.sock".into()));
        let t = Target::parse("unix:///tmp/r.sock?db=2").unwrap();
        assert_eq!(t.db(), Some(2));
        assert_eq!(Target::parse("redis://h?db=4").unwrap().db(), Some(4));

        for bad in [
            "http://h",
            "redis://h:port",
            "redis://h/x",
            "redis://h?x=1",
            "unix://",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a Redis URL"), "{bad}: {e}");
        }
        let e = Target::parse("redis://u:secret@h:x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn info_text() {
        let m = parse_info("# Server\r\nredis_version:7.0.15\r\nrole:master\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\n");
        assert_eq!(m["redis_version"], "7.0.15");
        assert_eq!(m["db0"], "keys=3,expires=1,avg_ttl=0");
    }
}
