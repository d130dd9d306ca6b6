//! Redis (and Valkey): the server's RDB, streamed into a snapshot of kind `redis` as
//! `/redis/dump.rdb`.
//!
//! coffer takes the RDB as a replica does ([`capture::start_sync`]: `REPLCONF capa eof`,
//! `SYNC`, disk-based `$<len>` or diskless `$EOF:<mark>` transfers), or, where SYNC is
//! refused, with `BGSAVE` and the file the server wrote ([`capture::bgsave`]). The bytes go
//! straight into the repository, checked on the way ([`capture::RdbCheck`]); a transfer
//! that is not one whole RDB leaves no snapshot. The snapshot's [`RedisInfo`] says what
//! server it came from and how many keys each database held.

pub mod capture;
pub mod conn;
pub mod rdb;
pub mod restore;
pub mod scratch;

use super::stream::{read_ahead, save_stream};
use super::{run, CommonOptions, Metadata, Saved, Session, Source};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::features::{self, Features};
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::{Node, Tree};
use crate::repo::Repository;
use anyhow::Result;
use conn::{Conn, ConnOptions, Target};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The directory of the snapshot's root that holds the RDB.
pub const DIR: &str = "redis";
/// The RDB's name in [`DIR`].
pub const FILE: &str = "dump.rdb";
/// Its path in the snapshot.
pub const PATH: &str = "/redis/dump.rdb";

/// How to take the RDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Over the replication protocol, from anywhere the server can be reached.
    #[default]
    Sync,
    /// `BGSAVE`, then the file the server wrote: on the server's host only.
    Bgsave,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "sync" => Ok(Method::Sync),
            "bgsave" => Ok(Method::Bgsave),
            _ => Err(Error::usage(format!(
                "--redis-method {s:?}: give sync (the replication protocol) or bgsave (BGSAVE and the server's file)"
            ))
            .into()),
        }
    }
}

/// A Redis backup.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// The server's URL; without one, `REDIS_URL`, then 127.0.0.1:6379.
    pub url: Option<String>,
    pub method: Method,
    pub conn: ConnOptions,
    pub common: CommonOptions,
}

/// Keys in one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbCount {
    pub db: u32,
    pub keys: u64,
    /// Keys with an expiry.
    pub expires: u64,
}

/// The metadata of a Redis source: the server, the RDB, and the keys per database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisInfo {
    /// "redis" or "valkey".
    pub server: String,
    pub version: String,
    /// The RDB format version of the file (`REDIS0011` → 11).
    pub rdb_version: u32,
    /// Whether the server wrote a CRC64 into the file (it does unless `rdbchecksum no`);
    /// it was checked at backup when it did.
    pub checksum: bool,
    /// Per database (the non-empty ones), the keys and the keys with an expiry.
    pub databases: Vec<DbCount>,
    /// Where the counts come from: "info" (`INFO keyspace` just before the capture).
    pub counts_from: String,
    pub used_memory: u64,
    /// "master" or "slave" (a replica).
    pub role: String,
    /// `appendonly yes`: such a server loads its AOF, not dump.rdb, at start-up.
    pub appendonly: bool,
    /// The server's `rdbcompression` (None when CONFIG GET is refused): with it on, values
    /// are LZF-compressed in the RDB, which deduplicates less well.
    #[serde(default)]
    pub rdbcompression: Option<bool>,
    /// How it was taken: "disk" or "diskless" (a SYNC), or "bgsave".
    pub transfer: String,
    pub rdb_size: u64,
    /// The server, without credentials.
    pub address: String,
}

impl Metadata for RedisInfo {
    const KIND: Kind = Kind::Redis;
}

impl RedisInfo {
    /// The keys of all databases.
    pub fn keys(&self) -> u64 {
        self.databases.iter().map(|d| d.keys).sum()
    }
}

/// The per-database counts of an `INFO keyspace` answer (`db0:keys=3,expires=1,…`).
pub fn keyspace(info: &BTreeMap<String, String>) -> Vec<DbCount> {
    let mut v: Vec<DbCount> = info
        .iter()
        .filter_map(|(k, val)| {
            let db = k.strip_prefix("db")?.parse().ok()?;
            let mut c = DbCount {
                db,
                keys: 0,
                expires: 0,
            };
            for kv in val.split(',') {
                match kv.split_once('=') {
                    Some(("keys", n)) => c.keys = n.parse().ok()?,
                    Some(("expires", n)) => c.expires = n.parse().ok()?,
                    _ => {}
                }
            }
            Some(c)
        })
        .collect();
    v.sort_by_key(|c| c.db);
    v
}

/// What the server says of itself before the capture.
struct ServerFacts {
    server: String,
    version: String,
    used_memory: u64,
    role: String,
    appendonly: bool,
    rdbcompression: Option<bool>,
}

fn server_facts(conn: &mut Conn) -> Result<ServerFacts> {
    let info = conn.info("default")?;
    let get = |k: &str| info.get(k).cloned().unwrap_or_default();
    let server = match info.get("server_name") {
        Some(n) if !n.is_empty() => n.clone(),
        _ => "redis".to_string(),
    };
    let version = info
        .get(&format!("{server}_version"))
        .cloned()
        .unwrap_or_else(|| get("redis_version"));
    let rdbcompression = conn
        .config_get("rdbcompression")
        .unwrap_or(None)
        .map(|v| v == "yes");
    Ok(ServerFacts {
        server,
        version,
        used_memory: get("used_memory").parse().unwrap_or(0),
        role: get("role"),
        appendonly: get("aof_enabled") == "1",
        rdbcompression,
    })
}

/// A Redis server's RDB, ready to be stored: connected, with what the server said of
/// itself.
pub struct Redis {
    conn: Conn,
    target: Target,
    method: Method,
    facts: ServerFacts,
}

impl Redis {
    /// Connect and authenticate: everything that can fail before data is stored.
    pub fn new(opts: &RedisOptions) -> Result<Redis> {
        let target = Target::resolve(opts.url.as_deref())?;
        let mut conn = Conn::connect(&target, &opts.conn)?;
        let facts = server_facts(&mut conn)?;
        Ok(Redis {
            conn,
            target,
            method: opts.method,
            facts,
        })
    }
}

impl Source for Redis {
    fn kind(&self) -> Kind {
        Kind::Redis
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let address = self.target.display();
        self.capture(session, progress).map_err(|e| {
            e.context(format!(
                "backing up Redis at {address} failed; no snapshot was written"
            ))
        })
    }
}

impl Redis {
    fn capture(mut self, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let counts = keyspace(&self.conn.info("keyspace")?);
        let address = self.target.display();
        let (content, size, summary, transfer) = match self.method {
            Method::Sync => {
                let stream = capture::start_sync(&mut self.conn)?;
                let transfer = if let Some(n) = stream.announced() {
                    progress.set_total(n);
                    "disk"
                } else {
                    "diskless"
                };
                progress.set_message(format!("RDB from {address}"));
                // The server's fork waits whenever we stop reading: read ahead of the
                // chunker, up to 64 MiB.
                let (saved, stream) = read_ahead(stream, 64, |r| save_stream(session, r, progress));
                let (content, size) = saved?;
                (content, size, stream.summary(), transfer)
            }
            Method::Bgsave => {
                let mut file = capture::bgsave(&mut self.conn, progress)?;
                progress.set_message(format!("RDB of {address}"));
                let (content, size) = save_stream(session, &mut file, progress)?;
                (content, size, file.summary(), "bgsave")
            }
        };
        let summary = summary.ok_or_else(|| {
            Error::new(
                ErrorKind::Source,
                format!("the RDB from {address} was not read to its end"),
            )
        })?;
        let info = RedisInfo {
            server: self.facts.server,
            version: self.facts.version,
            rdb_version: summary.version,
            checksum: summary.checksum,
            databases: counts,
            counts_from: "info".into(),
            used_memory: self.facts.used_memory,
            role: self.facts.role,
            appendonly: self.facts.appendonly,
            rdbcompression: self.facts.rdbcompression,
            transfer: transfer.into(),
            rdb_size: size,
            address: address.clone(),
        };
        session.summary.files_new = 1;
        let mtime = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let sub = session.save_tree(Tree {
            nodes: vec![Node::stream(FILE, size, content, mtime)],
        })?;
        Ok(Saved {
            nodes: vec![Node::dir(DIR, sub, mtime)],
            paths: vec![PATH.to_string()],
            size,
            parent: None,
            excludes: vec![],
            sources: vec![info.entry(&address, PATH)?],
            requires: Features::default().with(features::REDIS_RDB),
        })
    }
}

/// Back up a Redis server's RDB. A transfer that fails or is not one whole RDB leaves no
/// snapshot (exit 8).
pub fn backup_redis(
    repo: Arc<Repository>,
    opts: &RedisOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let source = Redis::new(opts).map_err(|e| {
        let what = opts
            .url
            .as_deref()
            .map_or_else(|| "Redis".to_string(), crate::redact::url);
        e.context(format!("backing up {what} failed; no snapshot was written"))
    })?;
    run(repo, source, &opts.common, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_counts() {
        let info = conn::parse_info(
            "# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=5\r\ndb12:keys=1,expires=0,avg_ttl=0,subexpiry=0\r\n",
        );
        assert_eq!(
            keyspace(&info),
            vec![
                DbCount {
                    db: 0,
                    keys: 10,
                    expires: 2
                },
                DbCount {
                    db: 12,
                    keys: 1,
                    expires: 0
                }
            ]
        );
    }
}
