//! Where a PostgreSQL server is and how to reach it: libpq-style connection strings
//! (URLs and `key=value` lists), the libpq environment variables, `~/.pgpass`, and how
//! the same target is handed to our own connection and to child processes.
//!
//! The password never goes on a child's command line: children get a connection string
//! without it and the password in `PGPASSWORD`.

use super::tls::{self, SslMode, TlsSettings};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use anyhow::Result;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A resolved connection target. Unset fields are filled from the environment and
/// libpq's defaults by [`PgTarget::resolve`].
#[derive(Clone, Default, PartialEq)]
pub struct PgTarget {
    /// A host name, an IP address, or a Unix socket directory (starts with `/`).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub dbname: Option<String>,
    /// Other libpq keywords (sslmode, application_name, options, connect_timeout…).
    pub params: Vec<(String, String)>,
    /// Where connecting reports its warnings (a TLS attempt that fell back to plaintext).
    pub events: Progress,
}

/// libpq keywords whose values are secrets: hidden from `Debug`.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword"];

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let params: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("PgTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &crate::redact::Redacted(&self.password))
            .field("dbname", &self.dbname)
            .field("params", &params)
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    Error::usage(msg).into()
}

fn percent_decode(s: &str) -> Result<String> {
    crate::sources::percent_decode(s).ok_or_else(|| {
        bad("bad percent-encoding in the connection URL: a % must be followed by two hex digits, and the result must be UTF-8")
    })
}

impl PgTarget {
    /// Parse a connection string: `postgresql://user:pw@host:port/db?k=v`, a libpq
    /// `key=value` list, or a bare database name.
    pub fn parse(s: &str) -> Result<PgTarget> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            Self::parse_url(rest)
        } else if s.contains('=') {
            Self::parse_kv(s)
        } else if s.is_empty() {
            Ok(PgTarget::default())
        } else {
            Ok(PgTarget {
                dbname: Some(s.to_string()),
                ..Default::default()
            })
        }
    }

    fn parse_url(rest: &str) -> Result<PgTarget> {
        let mut t = PgTarget::default();
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (before_query, None),
        };
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                match userinfo.split_once(':') {
                    Some((u, p)) => {
                        t.user = Some(percent_decode(u)?).filter(|u| !u.is_empty());
                        t.password = Some(percent_decode(p)?);
                    }
                    None => t.user = Some(percent_decode(userinfo)?).filter(|u| !u.is_empty()),
                }
                hp
            }
            None => authority,
        };
        if hostport.contains(',') {
            return Err(bad(
                "connection URLs with several hosts are not supported; name one server",
            ));
        }
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| bad("unterminated [IPv6] host in connection URL"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, Some(p)),
                None => (percent_decode(hostport)?, None),
            }
        };
        if !host.is_empty() {
            t.host = Some(host);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            t.port = Some(
                p.parse()
                    .map_err(|_| bad(format!("bad port {p:?} in connection URL")))?,
            );
        }
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            t.dbname = Some(percent_decode(p)?);
        }
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("bad parameter {kv:?} in connection URL")))?;
            t.set(&percent_decode(k)?, percent_decode(v)?)?;
        }
        Ok(t)
    }

    fn parse_kv(s: &str) -> Result<PgTarget> {
        let mut t = PgTarget::default();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(bad(format!(
                    "bad connection string: expected '=' after {key:?}"
                )));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut val = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => val.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => val.push(c),
                        None => return Err(bad("bad connection string: unterminated quote")),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    if c == '\\' {
                        chars.next();
                        val.extend(chars.next());
                    } else {
                        val.push(c);
                        chars.next();
                    }
                }
            }
            t.set(&key, val)?;
        }
        Ok(t)
    }

    fn set(&mut self, key: &str, val: String) -> Result<()> {
        match key {
            "host" => self.host = Some(val),
            "port" => {
                self.port = Some(
                    val.parse()
                        .map_err(|_| bad(format!("bad port {val:?} in connection string")))?,
                )
            }
            "user" => self.user = Some(val),
            "password" => self.password = Some(val),
            "dbname" => self.dbname = Some(val),
            _ => {
                self.params.retain(|(k, _)| k != key);
                self.params.push((key.to_string(), val));
            }
        }
        Ok(())
    }

    /// The target from a connection string or, without one, `DATABASE_URL` and then the
    /// libpq variables; fields still unset come from PGHOST/PGPORT/PGUSER/PGPASSWORD/
    /// PGDATABASE/PGSSLMODE, `~/.pgpass`, and libpq's defaults. When `default_db` is
    /// false the database stays unset if nothing names it (the caller picks one).
    /// Connecting reports its warnings to `events`.
    pub fn resolve(conn: Option<&str>, default_db: bool, events: &Progress) -> Result<PgTarget> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut t = match conn.filter(|s| !s.trim().is_empty()) {
            Some(s) => Self::parse(s)?,
            None => match env("DATABASE_URL") {
                Some(u) => Self::parse(&u)?,
                None => PgTarget::default(),
            },
        };
        t.events = events.clone();
        if t.host.is_none() {
            t.host = env("PGHOST");
        }
        if t.param("hostaddr").is_none() {
            if let Some(a) = env("PGHOSTADDR") {
                t.params.push(("hostaddr".into(), a));
            }
        }
        if let Some(a) = t.param("hostaddr").map(str::to_string) {
            // libpq: hostaddr is where to connect; host, if given, is the name that
            // certificates (verify-full) and ~/.pgpass are matched against.
            a.parse::<std::net::IpAddr>()
                .map_err(|_| bad(format!("hostaddr={a:?} is not an IP address")))?;
            if t.host.is_none() {
                t.host = Some(a);
            }
        }
        if t.port.is_none() {
            if let Some(p) = env("PGPORT") {
                t.port = Some(
                    p.parse()
                        .map_err(|_| bad(format!("PGPORT={p:?} is not a port number")))?,
                );
            }
        }
        if t.user.is_none() {
            t.user = env("PGUSER");
        }
        if t.dbname.is_none() {
            t.dbname = env("PGDATABASE");
        }
        if t.password.is_none() {
            t.password = std::env::var("PGPASSWORD").ok();
        }
        for (key, var) in tls::PARAMS {
            if !t.params.iter().any(|(k, _)| k == key) {
                if let Some(v) = env(var) {
                    t.params.push((key.to_string(), v));
                }
            }
        }
        let port = *t.port.get_or_insert(5432);
        if t.host.is_none() {
            // libpq's compiled-in default is a socket directory; Debian uses
            // /var/run/postgresql, most other builds /tmp.
            let dir = ["/var/run/postgresql", "/tmp"]
                .into_iter()
                .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
                .unwrap_or("localhost");
            t.host = Some(dir.to_string());
        }
        if t.user.is_none() {
            t.user = Some(crate::repo::username());
        }
        if t.dbname.is_none() && default_db {
            t.dbname = t.user.clone();
        }
        if t.password.is_none() {
            t.password = pgpass_lookup(&t);
        }
        let tcp = t.is_tcp();
        tls::resolve_params(&mut t.params, tcp)?;
        Ok(t)
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the target is reached over TCP (not a Unix socket), and so may use TLS.
    pub fn is_tcp(&self) -> bool {
        self.param("hostaddr").is_some()
            || !self.host.as_deref().unwrap_or("localhost").starts_with('/')
    }

    /// The same server, another database.
    pub fn with_db(&self, db: &str) -> PgTarget {
        PgTarget {
            dbname: Some(db.to_string()),
            ..self.clone()
        }
    }

    pub fn db(&self) -> &str {
        self.dbname.as_deref().unwrap_or("")
    }

    /// `host:port` for messages.
    pub fn server(&self) -> String {
        let h = self.host.as_deref().unwrap_or("localhost");
        if h.starts_with('/') {
            format!("socket {h}/.s.PGSQL.{}", self.port.unwrap_or(5432))
        } else {
            format!("{h}:{}", self.port.unwrap_or(5432))
        }
    }

    /// A libpq `key=value` connection string for child processes: everything but the
    /// password and the TLS settings, which go in the environment (see
    /// [`PgTarget::configure`]).
    pub fn conninfo(&self) -> String {
        fn q(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host={}", q(h)));
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={}", q(u)));
        }
        if let Some(d) = &self.dbname {
            parts.push(format!("dbname={}", q(d)));
        }
        for (k, v) in &self.params {
            if !tls::PARAMS.iter().any(|(p, _)| p == k) {
                parts.push(format!("{k}={}", q(v)));
            }
        }
        parts.join(" ")
    }

    /// Prepare a child process (pg_dump, pg_restore, psql): the connection string goes
    /// in as `--dbname`, the password through `PGPASSWORD`, the TLS settings (resolved as
    /// for our own connection) through `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`
    /// and `PGSSLCRL`, and prompting is off.
    pub fn configure(&self, cmd: &mut Command) {
        cmd.arg(format!("--dbname={}", self.conninfo()));
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        for (key, var) in tls::PARAMS {
            match self.params.iter().find(|(k, _)| k == key) {
                Some((_, v)) => cmd.env(var, v),
                None => cmd.env_remove(var),
            };
        }
        // Our own values win over whatever the environment says.
        for k in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"] {
            cmd.env_remove(k);
        }
    }

    /// Open our own connection (metadata queries, row counts, exported snapshots).
    pub fn connect(&self) -> Result<postgres::Client> {
        let mut c = postgres::Config::new();
        if let Some(h) = &self.host {
            c.host(h);
        }
        c.port(self.port.unwrap_or(5432));
        if let Some(u) = &self.user {
            c.user(u);
        }
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(d) = &self.dbname {
            c.dbname(d);
        }
        c.application_name("coffer");
        c.connect_timeout(Duration::from_secs(15));
        for (k, v) in &self.params {
            match k.as_str() {
                "connect_timeout" => {
                    if let Ok(s) = v.parse::<u64>() {
                        c.connect_timeout(Duration::from_secs(s.max(1)));
                    }
                }
                "options" => {
                    c.options(v);
                }
                "application_name" => {
                    c.application_name(v);
                }
                "hostaddr" => {
                    let ip = v
                        .parse()
                        .map_err(|_| bad(format!("hostaddr={v:?} is not an IP address")))?;
                    c.hostaddr(ip);
                }
                _ => {}
            }
        }
        let settings = TlsSettings::from_params(&self.params, self.is_tcp())?;
        let mode = if self.is_tcp() {
            settings.mode
        } else {
            if settings.mode != SslMode::Disable {
                tracing::debug!(
                    "{}: no TLS over a Unix socket (sslmode applies to TCP only)",
                    self.server()
                );
            }
            SslMode::Disable
        };
        let config = match mode {
            SslMode::Disable => None,
            _ => Some(settings.client_config()?),
        };
        self.connect_as(&mut c, mode, config, &settings)
            .map_err(|(e, outcome)| {
                let tls_hint = if outcome != tls::Outcome::NotTried {
                    tls::handshake_hint(&e, &settings, self.tls_host())
                } else {
                    None
                };
                let refused_tls = mode != SslMode::Prefer
                    && outcome == tls::Outcome::NotTried
                    && describe(&e).contains("server does not support TLS");
                let hint = match tls_hint {
                    Some(h) => format!(" — {h}"),
                    None if refused_tls => format!(
                        " — the server does not offer TLS (ssl = off?), and sslmode={} needs it",
                        mode.as_str()
                    ),
                    None if e.as_db_error().is_none() => {
                        " — is the server running and accepting connections there?".to_string()
                    }
                    None => String::new(),
                };
                Error::new(
                    ErrorKind::Source,
                    format!(
                        "cannot connect to PostgreSQL at {} (database {:?}, user {:?}): {}{hint}",
                        self.server(),
                        self.db(),
                        self.user.as_deref().unwrap_or(""),
                        describe(&e)
                    ),
                )
                .into()
            })
    }

    /// The name a server certificate is checked against.
    fn tls_host(&self) -> &str {
        self.host.as_deref().unwrap_or("localhost")
    }

    /// Connect with or without TLS as `mode` says, by libpq's rules (see [`tls`]), and say
    /// at info level which it was. A failure says whether TLS was tried.
    fn connect_as(
        &self,
        c: &mut postgres::Config,
        mode: SslMode,
        config: Option<rustls::ClientConfig>,
        s: &TlsSettings,
    ) -> std::result::Result<postgres::Client, (postgres::Error, tls::Outcome)> {
        use postgres::config::SslMode as Wire;
        use tls::Outcome;
        let server = self.server();
        let plain = |c: &mut postgres::Config| {
            let r = c.ssl_mode(Wire::Disable).connect(postgres::NoTls);
            if r.is_ok() {
                tracing::info!(
                    "{server}: connected without TLS (sslmode={})",
                    mode.as_str()
                );
            }
            r.map_err(|e| (e, Outcome::NotTried))
        };
        let Some(config) = config else {
            return plain(c);
        };
        let checked = match s.check() {
            tls::Check::Full => "certificate checked: CA and host name",
            tls::Check::Chain => "certificate checked: CA, not the host name",
            tls::Check::None => "certificate not checked",
        };
        let attempt = |c: &mut postgres::Config, wire: Wire| {
            let conn = tls::Connector::new(config.clone());
            let r = c.ssl_mode(wire).connect(conn.clone());
            let outcome = conn.outcome();
            match &r {
                Ok(_) if outcome == Outcome::Done => {
                    tracing::info!("{server}: connected with TLS ({checked})")
                }
                Ok(_) => tracing::info!(
                    "{server}: connected without TLS: the server does not offer it (sslmode={})",
                    mode.as_str()
                ),
                Err(_) => {}
            }
            r.map_err(|e| (e, outcome))
        };
        match mode {
            SslMode::Disable => plain(c),
            // Plaintext first; TLS if the server refuses that.
            SslMode::Allow => match plain(c) {
                Err((e, _)) if e.as_db_error().is_some() => {
                    tracing::info!(
                        "{server}: refused without TLS ({}); trying TLS (sslmode=allow)",
                        describe(&e)
                    );
                    attempt(c, Wire::Require)
                }
                r => r,
            },
            // TLS if the server offers it; plaintext again when the handshake fails or the
            // server refuses us over TLS, as libpq does.
            SslMode::Prefer => match attempt(c, Wire::Prefer) {
                Err((e, o))
                    if o == Outcome::Failed
                        || (o == Outcome::Done && e.as_db_error().is_some()) =>
                {
                    self.events.warn(&format!(
                        "{server}: TLS connection failed ({}); trying without TLS \
                         (sslmode=prefer; use sslmode=require or verify-full to insist on TLS)",
                        describe(&e)
                    ));
                    plain(c)
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => attempt(c, Wire::Require),
        }
    }
}

/// A PostgreSQL error as one line a user can act on.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

/// Quote an SQL identifier the way `quote_ident` does.
pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain && !is_reserved(s) {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// `schema.name`, quoted as pg_dump writes it.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn is_reserved(s: &str) -> bool {
    // The fully reserved keywords of PostgreSQL 15 (quote_ident quotes these).
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "authorization",
        "binary",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "collation",
        "column",
        "concurrently",
        "constraint",
        "create",
        "cross",
        "current_catalog",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "freeze",
        "from",
        "full",
        "grant",
        "group",
        "having",
        "ilike",
        "in",
        "initially",
        "inner",
        "intersect",
        "into",
        "is",
        "isnull",
        "join",
        "lateral",
        "leading",
        "left",
        "like",
        "limit",
        "localtime",
        "localtimestamp",
        "natural",
        "not",
        "notnull",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "outer",
        "overlaps",
        "placing",
        "primary",
        "references",
        "returning",
        "right",
        "select",
        "session_user",
        "similar",
        "some",
        "symmetric",
        "table",
        "tablesample",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "verbose",
        "when",
        "where",
        "window",
        "with",
    ];
    RESERVED.contains(&s)
}

/// Look the target up in the password file, as libpq does: `PGPASSFILE` or
/// `~/.pgpass`, ignored when group or others can read it.
fn pgpass_lookup(t: &PgTarget) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match t.host.as_deref() {
        Some(h) if h.starts_with('/') => "localhost",
        Some(h) => h,
        None => "localhost",
    };
    let port = t.port.unwrap_or(5432).to_string();
    let want = [
        host,
        port.as_str(),
        t.dbname.as_deref().unwrap_or(""),
        t.user.as_deref().unwrap_or(""),
    ];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = PgTarget::parse(
            "postgresql://al%40x:p%3Aw@db.example:6543/my%20db?sslmode=disable&application_name=x",
        )
        .unwrap();
        assert_eq!(t.user.as_deref(), Some("al@x"));
        assert_eq!(t.password.as_deref(), Some("p:w"));
        assert_eq!(t.host.as_deref(), Some("db.example"));
        assert_eq!(t.port, Some(6543));
        assert_eq!(t.dbname.as_deref(), Some("my db"));
        assert_eq!(t.params[0], ("sslmode".to_string(), "disable".to_string()));
        let t = PgTarget::parse("postgres://[::1]:5433/app").unwrap();
        assert_eq!(t.host.as_deref(), Some("::1"));
        assert_eq!(t.port, Some(5433));
        let t = PgTarget::parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app").unwrap();
        assert_eq!(t.host.as_deref(), Some("/var/run/postgresql"));
        let t = PgTarget::parse("postgresql:///app?host=/tmp&port=5999").unwrap();
        assert_eq!(t.host.as_deref(), Some("/tmp"));
        assert_eq!(t.port, Some(5999));
        assert!(PgTarget::parse("postgresql://a,b/x").is_err());
        assert!(PgTarget::parse("postgresql://h:notaport/x").is_err());
    }

    #[test]
    fn keyword_lists() {
        let t = PgTarget::parse("host=h port=1 dbname='a b\\'c' password = secret").unwrap();
        assert_eq!(t.host.as_deref(), Some("h"));
        assert_eq!(t.port, Some(1));
        assert_eq!(t.dbname.as_deref(), Some("a b'c"));
        assert_eq!(t.password.as_deref(), Some("secret"));
        assert_eq!(
            PgTarget::parse("app").unwrap().dbname.as_deref(),
            Some("app")
        );
        // hostaddr is where to connect, host the name to check: both stay.
        let t = PgTarget::parse("host=db.example hostaddr=10.0.0.5").unwrap();
        assert_eq!(t.host.as_deref(), Some("db.example"));
        assert_eq!(t.param("hostaddr"), Some("10.0.0.5"));
        assert!(t.conninfo().contains("hostaddr='10.0.0.5'"));
        assert!(t.is_tcp());
    }

    #[test]
    fn conninfo_round_trips_without_password() {
        let t = PgTarget {
            host: Some("h".into()),
            port: Some(5),
            user: Some("o'neil".into()),
            password: Some("secret".into()),
            dbname: Some("d b".into()),
            params: vec![("application_name".into(), "x y".into())],
            events: Progress::hidden(),
        };
        let c = t.conninfo();
        assert!(!c.contains("secret"));
        let back = PgTarget::parse(&c).unwrap();
        assert_eq!(
            back,
            PgTarget {
                password: None,
                ..t
            }
        );
    }

    #[test]
    fn tls_settings_go_to_children_in_the_environment() {
        let t = PgTarget {
            host: Some("db".into()),
            params: vec![
                ("sslmode".into(), "verify-full".into()),
                ("sslrootcert".into(), "/etc/ca.crt".into()),
                ("application_name".into(), "x".into()),
            ],
            ..Default::default()
        };
        assert_eq!(t.conninfo(), "host='db' application_name='x'");
        let mut cmd = Command::new("true");
        cmd.env("PGSSLCERT", "/inherited.crt");
        t.configure(&mut cmd);
        let envs: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.and_then(|v| v.to_str())))
            .collect();
        assert!(envs.contains(&("PGSSLMODE", Some("verify-full"))));
        assert!(envs.contains(&("PGSSLROOTCERT", Some("/etc/ca.crt"))));
        // What the target does not say is not inherited either.
        assert!(envs.contains(&("PGSSLCERT", None)));
    }

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("public", "t1"), "public.t1");
    }

    #[test]
    fn pgpass_fields() {
        assert_eq!(
            split_pgpass(r"h:5432:*:u:pa\:ss:w"),
            vec!["h", "5432", "*", "u", "pa:ss:w"]
        );
    }

    #[test]
    fn a_bad_escape_in_a_password_is_not_shown() {
        let e = PgTarget::parse("postgresql://app:hunter%zz2secret@db/app")
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent-encoding"), "{e}");
        assert!(!e.contains("secret") && !e.contains("hunter"), "{e}");
    }

    #[test]
    fn debug_hides_passwords() {
        let t = PgTarget::parse(
            "postgresql://app:hunter2-url@h/db?sslpassword=hunter2-key&application_name=x",
        )
        .unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("application_name"), "{shown}");
    }
}
